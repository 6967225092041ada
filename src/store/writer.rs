//! The group-commit writer: the one task that inserts notifications and commands and applies command
//! updates. It gathers whatever requests are waiting (up to `batch_max_rows`) into one transaction,
//! stamps them all with one server timestamp that is strictly later than the previous commit's, commits,
//! hands the committed rows to `on_commit` (the bus) in commit order, and only then answers each caller.
//!
//! Why one writer assigns timestamps: clients resume polls from the timestamp of the last message they
//! received (exclusive). If every commit gets a strictly later millisecond than the one before, and a
//! commit's rows become visible together, a client that has seen any row stamped T has seen every row
//! stamped T — so no cursor can skip a message, however many writers race.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::command::{self, CommandUpdate, NewCommand};
use super::notification::{self, NewNotification};
use super::Store;
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
    reply: oneshot::Sender<Result<Written>>,
}

/// Handle to the writer task. Cloning is cheap; the task ends (after flushing) when every handle is gone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

pub type OnCommit = Box<dyn Fn(&[Written]) + Send + Sync>;

impl Writer {
    /// Starts the writer. It stops when `stop` turns true, after committing every request already
    /// queued — the caller signals it once no request handler can submit more.
    pub fn spawn(
        store: Store,
        max_batch: usize,
        on_commit: OnCommit,
        stop: watch::Receiver<bool>,
    ) -> (Writer, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 8);
        let task = tokio::spawn(run(store, rx, max_batch.max(1), on_commit, stop));
        (Writer { tx }, task)
    }

    /// Stores one row and returns it once committed.
    pub async fn write(&self, op: WriteOp) -> Result<Written> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job { op, reply })
            .await
            .map_err(|_| ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "The hub is shutting down"))?;
        answer.await.unwrap_or_else(|_| Err(ApiError::internal()))
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    on_commit: OnCommit,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_ts = 0i64;
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
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        let results = commit_batch(&store, &jobs, ts).await;
        let committed: Vec<Written> = results.iter().filter_map(|r| r.as_ref().ok().cloned()).collect();
        if !committed.is_empty() {
            // The rows are committed whatever happens next: a bug in fan-out must not take the writer
            // (and with it every later insert) down.
            let fan_out = std::panic::AssertUnwindSafe(|| on_commit(&committed));
            if std::panic::catch_unwind(fan_out).is_err() {
                tracing::error!(rows = committed.len(), "fan-out of a commit panicked; its subscribers missed it");
            }
        }
        for (job, result) in jobs.drain(..).zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// Runs one transaction; on a failed commit every row of the batch fails.
async fn commit_batch(store: &Store, jobs: &[Job], ts: i64) -> Vec<Result<Written>> {
    let mut tx = match store.pool.begin().await {
        Ok(tx) => tx,
        Err(e) => {
            let err = ApiError::from(e);
            return jobs.iter().map(|_| Err(err.clone())).collect();
        }
    };
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let r = match &job.op {
            WriteOp::Notification(n) => {
                notification::insert(&mut tx, n, ts).await.map(|n| Written::Notification(Arc::new(n)))
            }
            WriteOp::Command(c) => command::insert(&mut tx, c, ts).await.map(|c| Written::Command(Arc::new(c))),
            WriteOp::CommandUpdate(u) => match command::update(&mut tx, u, ts).await {
                Ok(Some(c)) => Ok(Written::CommandUpdated(Arc::new(c))),
                Ok(None) => Err(ApiError::command_not_found(u.command_id)),
                Err(e) => Err(e),
            },
        };
        results.push(r);
    }
    if let Err(e) = tx.commit().await {
        let err = ApiError::from(e);
        return jobs.iter().map(|_| Err(err.clone())).collect();
    }
    results
}
