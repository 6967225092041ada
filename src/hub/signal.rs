//! A session's wake-up that says why: what ends it (taken over, shutdown, its delivery queue
//! overflowed) or needs a look (a deadline may have passed). One `Notify` serves all of them, so a
//! session waiting for its client holds one small future for them instead of one per cause — with
//! many idle connections that is most of their memory.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::LazyLock;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Default)]
pub struct Signal {
    notify: Notify,
    raised: AtomicU32,
    /// When the session's deadline passes, in `clock_ms`; 0 when it has none.
    deadline: AtomicU64,
}

impl Signal {
    /// The bus dropped deliveries: the session's queue was full.
    pub const OVERFLOW: u32 = 1;
    /// A newer connection took the session's client id.
    pub const TAKEN_OVER: u32 = 2;
    pub const SHUTDOWN: u32 = 4;
    /// The deadline the session set may have passed: it checks its own clock (a sweeper raises this).
    pub const DEADLINE: u32 = 8;

    pub fn new() -> Signal {
        Signal::default()
    }

    /// Raises `reasons` and wakes the session.
    pub fn raise(&self, reasons: u32) {
        self.raised.fetch_or(reasons, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// The reasons raised so far.
    pub fn raised(&self) -> u32 {
        self.raised.load(Ordering::Acquire)
    }

    /// Takes back reasons that were looked at and do not hold (a deadline that had moved).
    pub fn clear(&self, reasons: u32) {
        self.raised.fetch_and(!reasons, Ordering::AcqRel);
    }

    /// Waits until a reason is raised; returns the reasons.
    pub async fn wait(&self) -> u32 {
        loop {
            let raised = self.raised();
            if raised != 0 {
                return raised;
            }
            // A raise between the check and here left a permit: this completes at once.
            self.notify.notified().await;
        }
    }

    /// Sets (or, with `None`, removes) the session's deadline, in `clock_ms`.
    pub fn set_deadline(&self, at: Option<u64>) {
        self.deadline.store(at.unwrap_or(0), Ordering::Release);
    }

    /// Raises `DEADLINE` when the session's deadline is at or before `now` (`clock_ms`).
    pub fn raise_if_due(&self, now: u64) {
        let at = self.deadline.load(Ordering::Acquire);
        if at != 0 && at <= now {
            self.raise(Signal::DEADLINE);
        }
    }
}

/// Milliseconds on a monotonic clock (since the first call), never 0: the deadlines' clock.
pub fn clock_ms() -> u64 {
    static START: LazyLock<Instant> = LazyLock::new(Instant::now);
    START.elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_raise_before_the_wait_is_not_lost_and_cleared_reasons_wait_again() {
        let s = Signal::new();
        s.raise(Signal::DEADLINE);
        assert_eq!(s.wait().await, Signal::DEADLINE);
        s.clear(Signal::DEADLINE);
        assert_eq!(s.raised(), 0);
        // The first raise's permit is still stored; the wait must not return without a reason.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), s.wait()).await;
        assert!(waited.is_err(), "returned with nothing raised");
        s.raise(Signal::TAKEN_OVER | Signal::OVERFLOW);
        assert_eq!(s.wait().await, Signal::TAKEN_OVER | Signal::OVERFLOW);
    }

    #[test]
    fn a_deadline_is_raised_only_once_it_is_due() {
        let s = Signal::new();
        s.raise_if_due(clock_ms());
        assert_eq!(s.raised(), 0, "no deadline set");
        let now = clock_ms();
        s.set_deadline(Some(now + 1_000));
        s.raise_if_due(now);
        assert_eq!(s.raised(), 0);
        s.raise_if_due(now + 1_000);
        assert_eq!(s.raised(), Signal::DEADLINE);
        s.clear(Signal::DEADLINE);
        s.set_deadline(None);
        s.raise_if_due(u64::MAX);
        assert_eq!(s.raised(), 0);
    }
}
