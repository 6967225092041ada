//! Failing fast while PostgreSQL is unreachable. Without this, every request waits the pool's whole
//! acquire timeout (10 s) before its 503, as sqlx keeps retrying the connection. Once a statement
//! fails because the server cannot be reached, the breaker opens: from then on one statement at a
//! time probes the server (with a 1 s deadline) and the others wait for that probe's outcome — 503
//! if it failed, their own try if it succeeded (so nobody is refused in the moment the server is
//! back). The first statement that succeeds closes the breaker, so the hub resumes by itself; the
//! commit tail reads every 200 ms while failing, so it keeps probing even when no client asks. A
//! failed probe also opens a connection in the background, without the probe's deadline, so that
//! a slow connect on a busy machine is not cut off by every probe in turn.
//!
//! A pool that is merely busy (all connections in use, the acquire timeout passed) does not open the
//! breaker: that is load, not an outage, and failing fast would turn a queue into errors.

use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::Notify;

/// How long a probe may take while the breaker is open.
const PROBE_DEADLINE: Duration = Duration::from_secs(1);

/// A PostgreSQL pool with its breaker. Derefs to the pool (for listeners and migrations).
#[derive(Clone)]
pub(crate) struct Pg {
    pool: PgPool,
    breaker: Arc<Breaker>,
}

#[derive(Default)]
struct Breaker {
    open: AtomicBool,
    probing: AtomicBool,
    /// A connection is being opened for the next probe (`reconnect_in_background`).
    reconnecting: AtomicBool,
    /// Wakes the statements waiting for a probe's outcome.
    probed: Notify,
}

impl Deref for Pg {
    type Target = PgPool;
    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

impl Pg {
    pub fn new(pool: PgPool) -> Pg {
        Pg { pool, breaker: Arc::default() }
    }

    /// Runs `op` (a statement on the pool) through the breaker.
    pub async fn guard<T>(&self, op: impl Future<Output = Result<T, sqlx::Error>>) -> Result<T, sqlx::Error> {
        let b = &self.breaker;
        if !b.open.load(Ordering::Acquire) {
            let r = op.await;
            self.observe(&r);
            return r;
        }
        let probed = b.probed.notified();
        tokio::pin!(probed);
        probed.as_mut().enable();
        if b.probing.swap(true, Ordering::AcqRel) {
            // Another statement is finding out whether the server is back: wait for its outcome.
            let _ = tokio::time::timeout(PROBE_DEADLINE, probed).await;
            if b.open.load(Ordering::Acquire) {
                return Err(sqlx::Error::PoolTimedOut);
            }
            let r = op.await;
            self.observe(&r);
            return r;
        }
        // The turn is handed back also when this future is dropped mid-probe — `/readyz` gives the
        // database as long as a probe may take, and a client may hang up — or no statement would
        // ever probe again and the breaker would stay open after the server is back.
        let turn = ProbeTurn(b);
        let r = tokio::time::timeout(PROBE_DEADLINE, op).await.unwrap_or(Err(sqlx::Error::PoolTimedOut));
        if r.is_err() {
            self.reconnect_in_background();
        }
        self.observe(&r);
        drop(turn);
        r
    }

    /// Opens a pool connection for the next probe, without the probe's deadline: on a busy machine
    /// a connection to a server that is back can take longer than `PROBE_DEADLINE` to open, and a
    /// probe cut off at its deadline drops its half-made connection — every probe would, and the
    /// breaker would stay open as long as the load lasts. The connection opened here goes back to
    /// the pool idle, where the next probe finds it. One at a time; bounded by the pool's acquire
    /// timeout.
    fn reconnect_in_background(&self) {
        if self.breaker.reconnecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, breaker) = (self.pool.clone(), self.breaker.clone());
        tokio::spawn(async move {
            drop(pool.acquire().await);
            breaker.reconnecting.store(false, Ordering::Release);
        });
    }

    fn observe<T>(&self, r: &Result<T, sqlx::Error>) {
        let open = &self.breaker.open;
        match r {
            Ok(_) => {
                if open.swap(false, Ordering::AcqRel) {
                    tracing::info!("the database answers again");
                }
            }
            Err(e) if self.means_unreachable(e) => {
                if !open.swap(true, Ordering::AcqRel) {
                    tracing::warn!(error = %e, "the database is unreachable; answering 503 at once until it is back");
                }
            }
            Err(_) => {}
        }
    }

    fn means_unreachable(&self, e: &sqlx::Error) -> bool {
        match e {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::PoolClosed => true,
            // Timed out with connections to spare: they could not be opened.
            sqlx::Error::PoolTimedOut => self.pool.size() < self.pool.options().get_max_connections(),
            // Connection exceptions, and the server shutting down or starting up.
            sqlx::Error::Database(db) => db.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
            _ => false,
        }
    }
}

/// The probing turn of one statement: handed back, with the waiting statements woken to look at the
/// outcome, when the probe ends or its future is dropped.
struct ProbeTurn<'a>(&'a Breaker);

impl Drop for ProbeTurn<'_> {
    fn drop(&mut self) {
        self.0.probing.store(false, Ordering::Release);
        self.0.probed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll};

    fn unreachable() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    /// A probe whose caller gives up (a `/readyz` deadline, a client that hung up) must not keep the
    /// probing turn: the next statement probes, and its success closes the breaker.
    #[tokio::test]
    async fn a_dropped_probe_hands_its_turn_back() {
        let pool = sqlx::postgres::PgPoolOptions::new().connect_lazy("postgres://hub@127.0.0.1:1/hub").unwrap();
        let pg = Pg::new(pool);
        // A statement finds the server unreachable: the breaker opens.
        assert!(pg.guard(async { Err::<(), _>(unreachable()) }).await.is_err());
        assert!(pg.breaker.open.load(Ordering::Acquire));

        // The next statement becomes the probe; its caller drops it before it ends.
        let mut probe = Box::pin(pg.guard(std::future::pending::<Result<(), sqlx::Error>>()));
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        assert!(matches!(probe.as_mut().poll(&mut cx), Poll::Pending));
        assert!(pg.breaker.probing.load(Ordering::Acquire));
        drop(probe);

        // The server is back: the next statement probes, succeeds and closes the breaker.
        // (With the turn kept, it would wait for a probe nobody runs and fail as the breaker is open.)
        let answer = pg.guard(async { Ok::<_, sqlx::Error>(7) }).await;
        assert_eq!(answer.expect("the breaker stayed open"), 7);
        assert!(!pg.breaker.open.load(Ordering::Acquire));
    }
}
