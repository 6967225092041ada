//! The group-commit writer: the one task (run on a thread of its own, see `Writer::spawn`) that inserts
//! notifications and commands and applies command updates (on SQLite through `sqlite_batch.rs`). It gathers whatever requests are waiting (up to `batch_max_rows`) into one transaction,
//! stamps them all with one server timestamp that is strictly later than the previous commit's and
//! never later than the clock (when the next millisecond has not begun it waits for it), commits,
//! hands the committed rows to `on_commit` (the bus) in commit order, and only then answers each caller.
//! On PostgreSQL the commit tail (`tail.rs`) delivers instead, and a batch's callers are answered, in
//! commit order, once the tail has delivered it — by a task beside the writer, which meanwhile goes
//! on with the next batch.
//!
//! Why one writer assigns timestamps: clients resume polls from the timestamp of the last message they
//! received (exclusive). If every commit gets a strictly later millisecond than the one before, and a
//! commit's rows become visible together, a client that has seen any row stamped T has seen every row
//! stamped T — so no cursor can skip a message, however many writers race.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::command::{self, CommandUpdate, NewCommand};
use super::notification::{self, NewNotification};
use super::sqlite_batch::SqliteBatch;
use super::tail::Cursor;
use super::{json_text, Backend, Sql, Store, Tx};
use crate::error::{ApiError, Result};
use crate::model::{Command, Notification};
use crate::time::now_ms;

pub enum WriteOp {
    Notification(NewNotification),
    Command(NewCommand),
    CommandUpdate(CommandUpdate),
}

/// A committed row.
#[derive(Debug, Clone)]
pub enum Written {
    Notification(Arc<Notification>),
    Command(Arc<Command>),
    CommandUpdated(Arc<Command>),
}

struct Job {
    op: WriteOp,
    /// The row's JSON columns, printed by the caller's task on SQLite (see [`JsonColumns`]).
    json: Option<JsonColumns>,
    reply: oneshot::Sender<Result<Written>>,
}

/// A row's JSON columns as the text SQLite stores. The callers' tasks print them when they queue a row
/// (on many threads), so the writer's one thread — the ingest limit on SQLite — does not: printing
/// the parameters was about a tenth of its time (mqtt-fleet profile).
pub(crate) struct JsonColumns {
    pub parameters: Option<String>,
    pub result: Option<String>,
}

impl JsonColumns {
    fn of(op: &WriteOp) -> JsonColumns {
        match op {
            WriteOp::Notification(n) => JsonColumns { parameters: json_text(&n.parameters), result: None },
            WriteOp::Command(c) => JsonColumns { parameters: json_text(&c.parameters), result: json_text(&c.result) },
            WriteOp::CommandUpdate(u) => JsonColumns { parameters: None, result: json_text(&u.result) },
        }
    }
}

/// Handle to the writer task. Cloning is cheap; the task ends (after flushing) when every handle is gone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    /// Rows committed by this writer since the hub started (`cacheStats`, the console's rate).
    written: Arc<AtomicU64>,
    /// Whether callers print their rows' JSON columns (SQLite: see [`JsonColumns`]).
    print_json: bool,
}

pub type OnCommit = Box<dyn Fn(&[Written]) + Send + Sync>;

impl Writer {
    /// Starts the writer. It stops when `stop` turns true, after committing every request already
    /// queued — the caller signals it once no request handler can submit more.
    ///
    /// With a commit tail (`delivered`, PostgreSQL), `on_commit` is not called: the tail delivers, and
    /// the writer answers a batch's callers once the tail has delivered it.
    pub fn spawn(
        store: Store,
        max_batch: usize,
        on_commit: OnCommit,
        delivered: Option<watch::Receiver<Cursor>>,
        stop: watch::Receiver<bool>,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 8);
        let written = Arc::new(AtomicU64::new(0));
        let print_json = store.backend() == Backend::Sqlite;
        // The writer gets a thread of its own instead of a task: as a task, each of a batch's database
        // round trips (begin, inserts, commit) waited its turn behind every ready connection task, so
        // under load a commit of 45 rows took 4.8 ms and the writer was committing 97 % of the time
        // (mqtt-fleet bench). On its own thread it is woken straight by the database's answer.
        let runtime = tokio::runtime::Handle::current();
        let run = run(store, rx, max_batch.max(1), on_commit, delivered, stop, written.clone());
        let task = tokio::task::spawn_blocking(move || runtime.block_on(run));
        (Writer { tx, written, print_json }, task)
    }

    /// Whether the writer task still takes rows (readiness).
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }

    /// Notifications, commands and command updates committed since the hub started.
    pub fn messages_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Writes waiting for the writer (metrics).
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stores one row and returns it once committed.
    pub async fn write(&self, op: WriteOp) -> Result<Written> {
        self.enqueue(op).await?.await
    }

    /// Queues one row and returns at once (once there is room in the queue) with what resolves when
    /// it is committed. Rows queued one after the other are committed in that order, so a caller
    /// may queue several before waiting for the first (an MQTT connection's publishes).
    pub async fn enqueue(&self, op: WriteOp) -> Result<Committed> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { json: self.print_json.then(|| JsonColumns::of(&op)), op, reply })
            .await
            .map_err(|_| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "The hub is shutting down"))?;
        Ok(Committed(answer))
    }
}

/// A queued row: resolves to the committed row (or why it was not stored).
pub struct Committed(oneshot::Receiver<Result<Written>>);

impl std::future::Future for Committed {
    type Output = Result<Written>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|r| r.unwrap_or_else(|_| Err(ApiError::internal())))
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    on_commit: OnCommit,
    delivered: Option<watch::Receiver<Cursor>>,
    stop: watch::Receiver<bool>,
    written: Arc<AtomicU64>,
) {
    // With a commit tail, answering waits for delivery in a task of its own, so that the writer
    // starts its next batch while the tail reads this one (pipelining): waiting in the writer itself
    // cost a NOTIFY + tail read round trip (~3 ms) per batch on PostgreSQL, a third of the ingest rate.
    let (queue, answerer) = match delivered {
        Some(delivered) => {
            let (queue, pending) = mpsc::channel(PIPELINE_DEPTH);
            (Some(queue), Some(tokio::spawn(answer_when_delivered(pending, delivered))))
        }
        None => (None, None),
    };
    let direct = match SqliteBatch::open(&store).await {
        None => None,
        Some(Ok(direct)) => Some(direct),
        Some(Err(e)) => {
            // Slower (a thread hand-off per statement) but the same rows and answers.
            tracing::error!(error = %e.message, "the writer's own SQLite connection did not open; writing through the pool");
            None
        }
    };
    write_batches(&store, direct, &mut rx, max_batch, &on_commit, queue.as_ref(), stop, &written).await;
    // Nothing is lost on shutdown: the answerer ends once it has answered every queued batch.
    drop(queue);
    if let Some(answerer) = answerer {
        let _ = answerer.await;
    }
}

/// The writer loop proper: gathers, stamps and commits batches until the channel closes or `stop`
/// turns true and the queue is flushed. Callers are answered here (no tail) or through `queue`.
#[allow(clippy::too_many_arguments)]
async fn write_batches(
    store: &Store,
    mut direct: Option<SqliteBatch>,
    rx: &mut mpsc::Receiver<Job>,
    max_batch: usize,
    on_commit: &OnCommit,
    queue: Option<&mpsc::Sender<Pending>>,
    mut stop: watch::Receiver<bool>,
    written: &AtomicU64,
) {
    let mut last_ts = 0i64;
    // When the writer has rested after its last commit (see `MAX_REST`).
    let mut rested = std::time::Instant::now();
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    let mut stopping = false;
    loop {
        if stopping {
            // Flush what is still queued, then end.
            while jobs.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if jobs.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut jobs, max_batch) => if n == 0 { return },
                _ = stop.wait_for(|s| *s) => { stopping = true; continue; }
            }
        }
        let proposed = next_stamp(last_ts, rested, rx, &mut jobs, max_batch);
        let commit_started = std::time::Instant::now();
        let rows = jobs.len();
        let (answers, ts): (Vec<Answer>, i64) = match direct.as_mut() {
            Some(direct) => {
                // The rows move into the committed messages instead of being copied.
                let (ops, replies): (Vec<_>, Vec<_>) = jobs
                    .drain(..)
                    .map(|j| {
                        let json = j.json.unwrap_or_else(|| JsonColumns::of(&j.op));
                        ((j.op, json), j.reply)
                    })
                    .unzip();
                let results = direct.commit(ops, proposed);
                (replies.into_iter().zip(results).collect(), proposed)
            }
            None => {
                let (results, ts) = commit_batch(store, &jobs, proposed).await;
                (jobs.drain(..).map(|j| j.reply).zip(results).collect(), ts)
            }
        };
        let took = commit_started.elapsed();
        rested = std::time::Instant::now() + took.min(MAX_REST);
        crate::metrics::writer_commit(rows, took);
        written.fetch_add(answers.iter().filter(|(_, r)| r.is_ok()).count() as u64, Ordering::Relaxed);
        last_ts = last_ts.max(ts);
        if let Some(queue) = queue {
            // Every batch goes through the queue, failed ones too, so that callers are answered in
            // commit order (an MQTT connection acknowledges its publishes in order).
            let needed = cursor_of(answers.iter().filter_map(|(_, r)| r.as_ref().ok()));
            let pending = Pending { needed, deadline: tokio::time::Instant::now() + DELIVERY_WAIT, answers };
            if let Err(mpsc::error::SendError(pending)) = queue.send(pending).await {
                // Only a panicked answerer closes the queue; the rows are committed: answer now.
                tracing::error!("the delivery answerer is gone; answering without waiting for delivery");
                answer(pending.answers);
            }
            continue;
        }
        let committed: Vec<Written> = answers.iter().filter_map(|(_, r)| r.as_ref().ok().cloned()).collect();
        if !committed.is_empty() {
            // The rows are committed whatever happens next: a bug in fan-out must not take the writer
            // (and with it every later insert) down.
            let fan_out = std::panic::AssertUnwindSafe(|| on_commit(&committed));
            if std::panic::catch_unwind(fan_out).is_err() {
                tracing::error!(rows = committed.len(), "fan-out of a commit panicked; its subscribers missed it");
            }
        }
        answer(answers);
    }
}

/// A caller's answer channel with its result.
type Answer = (oneshot::Sender<Result<Written>>, Result<Written>);

/// A committed batch whose callers are answered once the commit tail has delivered it.
struct Pending {
    /// The tail cursor that covers the batch's committed rows (the default when none committed).
    needed: Cursor,
    /// When to answer even if the tail has not delivered (see [`DELIVERY_WAIT`]).
    deadline: tokio::time::Instant,
    answers: Vec<Answer>,
}

/// Committed batches the writer may run ahead of the tail's delivery. The bound only matters when the
/// tail falls far behind (a slow database read): then it slows the writer instead of letting answers
/// pile up; normally two or three batches are in flight.
const PIPELINE_DEPTH: usize = 64;

fn answer(answers: Vec<Answer>) {
    for (reply, result) in answers {
        let _ = reply.send(result);
    }
}

/// Answers queued batches in commit order, each once the tail's `delivered` cursor covers it (or at
/// its deadline), so a client that subscribes after its insert was answered never gets that insert
/// live on top of its replay. Ends when the writer has dropped the queue and every batch is answered.
async fn answer_when_delivered(mut queue: mpsc::Receiver<Pending>, mut delivered: watch::Receiver<Cursor>) {
    while let Some(p) = queue.recv().await {
        let waited = tokio::time::timeout_at(p.deadline, delivered.wait_for(|d| d.covers(&p.needed))).await;
        // A closed channel (Ok(Err)) means the tail has stopped (shutdown): nothing to wait for.
        if waited.is_err() {
            tracing::warn!(rows = p.answers.len(), "the commit tail has not delivered a commit yet; answering anyway");
        }
        answer(p.answers);
    }
}

/// The longest the writer waits for the commit tail to deliver a batch before answering (the rows
/// are committed; only a tail that cannot read the database makes it wait that long).
const DELIVERY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The tail cursor that covers these committed rows.
fn cursor_of<'a>(rows: impl IntoIterator<Item = &'a Written>) -> Cursor {
    let mut c = Cursor::default();
    for w in rows {
        match w {
            Written::Notification(n) => c.notification_id = c.notification_id.max(n.id),
            Written::Command(x) => c.command_id = c.command_id.max(x.id),
            Written::CommandUpdated(x) => c.update = c.update.max((x.last_updated, x.id)),
        }
    }
    c
}

/// The longest the writer waits for the clock to pass the previous stamp. Only a clock stepped back
/// (NTP) makes it wait that long; then stamps run ahead of the clock until it catches up, because
/// stalling every insert for that long would be worse.
const MAX_CLOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// After a commit the writer lets as much time pass as the commit took (at most this long) before
/// the next one, unless the batch fills up first. A commit's cost is mostly the index pages it
/// rewrites, which a bigger batch shares: under load, commits of 25 rows cost 70 µs a row (and the
/// CPU the connections needed to bring rows in), so resting lets batches grow until committing takes
/// at most about half of the writer's time. Under light load commits take ~100 µs, and so does the
/// rest.
const MAX_REST: std::time::Duration = std::time::Duration::from_millis(4);

/// The stamp of the next commit: the current millisecond when it is later than the previous stamp
/// and the writer has rested (`rested`, see [`MAX_REST`]); otherwise the writer waits — never
/// stamping into the future — while the batch keeps filling, which group commit wants anyway. The
/// writer has a thread of its own, so it sleeps the thread: tokio's timer would round the wait up to
/// a whole millisecond tick.
fn next_stamp(
    last_ts: i64,
    rested: std::time::Instant,
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    max_batch: usize,
) -> i64 {
    let started = std::time::Instant::now();
    loop {
        let now_us = chrono::Utc::now().timestamp_micros();
        let now = now_us.div_euclid(1000);
        let resting = jobs.len() < max_batch && std::time::Instant::now() < rested;
        if now > last_ts && !resting {
            return now;
        }
        if started.elapsed() >= MAX_CLOCK_WAIT {
            tracing::warn!(behind_ms = last_ts + 1 - now, "the clock went back; stamping after the last commit");
            return last_ts + 1;
        }
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let until_next_ms = ((last_ts + 1) * 1000 - now_us).max(0) as u64;
        let until_rested = rested.saturating_duration_since(std::time::Instant::now()).as_micros() as u64;
        std::thread::sleep(std::time::Duration::from_micros(until_next_ms.max(until_rested).clamp(10, 1000)));
    }
}

/// Commits one batch; a row that fails fails alone, and on a failed commit every row of the batch
/// fails. Notifications and commands go in as one bulk insert each (in job order, so ids follow the
/// order requests arrived in); command updates one by one.
///
/// On PostgreSQL a failed statement aborts the whole transaction, so a failing row needs a savepoint
/// to fail alone — but savepoints cost round trips on every row, and rows practically never fail (the
/// service layer validated them). So the batch runs first without savepoints; only if a statement
/// failed is it rolled back and run again with a savepoint around each row.
///
/// Returns the results and the stamp the batch got: `ts`, or on PostgreSQL a later one when another
/// instance sharing the database committed at `ts` or after (see [`claim_stamp`]).
async fn commit_batch(store: &Store, jobs: &[Job], ts: i64) -> (Vec<Result<Written>>, i64) {
    if store.backend() == Backend::Postgres {
        if let Some(done) = run_batch(store, jobs, ts, false).await {
            return done;
        }
    }
    run_batch(store, jobs, ts, true)
        .await
        .unwrap_or_else(|| (jobs.iter().map(|_| Err(ApiError::internal())).collect(), ts))
}

/// The advisory lock key of the message clock (any constant both code and operators can recognise).
const MESSAGE_CLOCK_LOCK: i64 = 0x0068_6976_6568_7562; // "hivehub" in ASCII

/// Cluster-wide ordering on PostgreSQL, where several hub instances may share the database: under a
/// transaction-scoped advisory lock, held until the batch commits, the batch takes a stamp strictly
/// later than the last committed batch of any instance (`message_clock`). Commits are therefore one
/// at a time and in stamp order across the cluster — the cursor promise of one writer, for many.
/// When another instance already used this millisecond, the stamp is the next one, and the writer
/// waits (holding the lock, a millisecond or so) until the clock reaches it, so no stamp is answered
/// ahead of the clock.
async fn claim_stamp(tx: &mut Tx, proposed: i64) -> Result<i64> {
    tx.execute(Sql::new("SELECT pg_advisory_xact_lock($1)").bind(MESSAGE_CLOCK_LOCK)).await?;
    let stamp = tx
        .fetch_one(
            Sql::new("UPDATE message_clock SET last_ts = GREATEST(last_ts + 1, $1) RETURNING last_ts").bind(proposed),
            |r| r.i64(0),
        )
        .await?;
    let started = std::time::Instant::now();
    while now_ms() < stamp && started.elapsed() < MAX_CLOCK_WAIT {
        // The writer's own thread (see `Writer::spawn`).
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
    Ok(stamp)
}

/// Whether a row failed in a way a guarded retry can isolate: an unreachable database fails the
/// retry as well, so it is answered at once.
fn statement_failed<T>(r: &Result<T>) -> bool {
    matches!(r, Err(e) if e.status != axum::http::StatusCode::SERVICE_UNAVAILABLE)
}

/// One attempt at a batch; `None` when unguarded and a statement failed (rolled back, nothing stored).
async fn run_batch(store: &Store, jobs: &[Job], ts: i64, guarded: bool) -> Option<(Vec<Result<Written>>, i64)> {
    let fail_all = |e: ApiError| Some((jobs.iter().map(|_| Err(e.clone())).collect(), ts));
    let mut tx = match store.db.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(e),
    };
    let ts = if tx.backend() == Backend::Postgres {
        match claim_stamp(&mut tx, ts).await {
            Ok(stamp) => stamp,
            Err(e) => return fail_all(e),
        }
    } else {
        ts
    };
    let mut failed = false;
    let mut results: Vec<Option<Result<Written>>> = jobs.iter().map(|_| None).collect();
    let (note_at, notes): (Vec<usize>, Vec<&NewNotification>) = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| if let WriteOp::Notification(n) = &j.op { Some((i, n)) } else { None })
        .unzip();
    if !notes.is_empty() {
        let done = notification::insert_many(&mut tx, &notes, ts, guarded).await;
        failed |= done.iter().any(statement_failed);
        for (i, r) in note_at.into_iter().zip(done) {
            results[i] = Some(r.map(|n| Written::Notification(Arc::new(n))));
        }
    }
    let (command_at, commands): (Vec<usize>, Vec<&NewCommand>) = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| if let WriteOp::Command(c) = &j.op { Some((i, c)) } else { None })
        .unzip();
    if !commands.is_empty() {
        let done = command::insert_many(&mut tx, &commands, ts, guarded).await;
        failed |= done.iter().any(statement_failed);
        for (i, r) in command_at.into_iter().zip(done) {
            results[i] = Some(r.map(|c| Written::Command(Arc::new(c))));
        }
    }
    for (i, job) in jobs.iter().enumerate() {
        if let WriteOp::CommandUpdate(u) = &job.op {
            results[i] = Some(match command::update(&mut tx, u, ts, guarded).await {
                Ok(Some(c)) => Ok(Written::CommandUpdated(Arc::new(c))),
                Ok(None) => Err(ApiError::command_not_found(u.command_id)),
                Err(e) => {
                    failed |= e.status != axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    Err(e)
                }
            });
        }
    }
    if failed && !guarded && tx.backend() == Backend::Postgres {
        // Dropping the transaction rolls it back.
        return None;
    }
    if tx.backend() == Backend::Postgres && results.iter().any(|r| matches!(r, Some(Ok(_)))) {
        // Delivered with the commit, in commit order, to every instance's commit tail (tail.rs). The
        // payload says which tables the batch wrote, so a tail reads only those.
        let written = results.iter().filter_map(|r| r.as_ref()?.as_ref().ok());
        let payload = super::tail::commit_payload(ts, written);
        if let Err(e) = tx.execute(Sql::new("SELECT pg_notify($1, $2)").bind(super::tail::CHANNEL).bind(payload)).await
        {
            return fail_all(e);
        }
    }
    if let Err(e) = tx.commit().await {
        return fail_all(e);
    }
    Some((results.into_iter().map(|r| r.unwrap_or_else(|| Err(ApiError::internal()))).collect(), ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With one row per commit and many concurrent writers, commits come faster than one per
    /// millisecond; the stamps must still never be later than the clock when the caller is answered,
    /// and every commit must get a strictly later stamp than the one before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stamps_wait_for_the_clock_instead_of_running_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = crate::config::Settings::defaults().database;
        settings.url = format!("sqlite://{}/w.db", dir.path().display());
        settings.synchronous = "off".into();
        let store = Store::open(&settings).await.unwrap();
        store.seed_if_empty("dhadmin", "admin-pass-1").await.unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let stamps = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = stamps.clone();
        let on_commit: OnCommit = Box::new(move |rows| {
            if let Some(Written::Notification(n)) = rows.first() {
                seen.lock().unwrap().push(n.timestamp);
            }
        });
        let (writer, _task) = Writer::spawn(store, 1, on_commit, None, stop);
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut ahead = 0;
                    for _ in 0..150 {
                        let op = WriteOp::Notification(NewNotification {
                            device_id: "e50d6085-2aba-48e9-b1c3-73c673e414be".into(),
                            network_id: Some(1),
                            device_type_id: Some(1),
                            notification: "tick".into(),
                            timestamp: None,
                            parameters: None,
                        });
                        let Ok(Written::Notification(n)) = writer.write(op).await else { panic!("write failed") };
                        if n.timestamp > now_ms() {
                            ahead += 1;
                        }
                    }
                    ahead
                })
            })
            .collect();
        let mut ahead = 0;
        for t in tasks {
            ahead += t.await.unwrap();
        }
        assert_eq!(ahead, 0, "timestamps ahead of the clock");
        let stamps = stamps.lock().unwrap();
        assert_eq!(stamps.len(), 2400);
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "every commit is stamped later than the one before");
    }
}
