//! A wake-up gate: a session task waits on several things at once (its socket, its deliveries, pings,
//! revocations, shutdown), and a `select!` polls every one of them on every wake-up. With a thousand
//! sessions woken for one push each, polling the idle ones was a large part of a push's cost: a read
//! attempt zero-fills the WebSocket library's read buffer, and a registered waiter of a channel every
//! session shares is re-checked under that channel's lock. Behind a gate, a future is polled only
//! after a waker it was given has fired (or after it was last ready, since it may be ready again
//! without a new wake-up), like the tasks of a `FuturesUnordered`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// Polls what is behind it only when it may have made progress. One gate may stand before several
/// futures: they are then polled together when any of them was woken.
pub struct Gate {
    shared: Arc<Shared>,
    /// The waker handed to the futures behind the gate (made once).
    waker: Waker,
}

struct Shared {
    /// A waker handed out fired, or what is behind the gate was ready last time.
    open: AtomicBool,
    /// The task polling the gate.
    task: AtomicWaker,
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.open.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl Gate {
    /// An open gate: the first poll goes through (and hands out the gate's waker).
    pub fn new() -> Gate {
        let shared = Arc::new(Shared { open: AtomicBool::new(true), task: AtomicWaker::new() });
        let waker = Waker::from(shared.clone());
        Gate { shared, waker }
    }

    /// Runs `poll` with the gate's waker if the gate is open; `Pending` without running it otherwise.
    /// A `Pending` from `poll` closes the gate: it promises a wake-up of the waker it was given.
    pub fn poll<T>(&self, cx: &mut Context<'_>, poll: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
        self.shared.task.register(cx.waker());
        // Closed before the poll: a wake-up during it opens the gate again (the task is woken too).
        if !self.shared.open.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let ready = poll(&mut Context::from_waker(&self.waker));
        if ready.is_ready() {
            // Ready once, maybe ready again (a second frame already read, a second queued message).
            self.shared.open.store(true, Ordering::Release);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    /// The gated future is polled again only after its own waker fired, and nothing is lost: a
    /// message sent while the gate is closed is received once it opens.
    #[tokio::test]
    async fn a_gated_future_is_polled_after_its_wake_up_only() {
        let gate = Gate::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let polls = std::cell::Cell::new(0);
        let poll_once = |gate: &Gate, rx: &mut tokio::sync::mpsc::UnboundedReceiver<u32>| {
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            gate.poll(&mut cx, |cx| {
                polls.set(polls.get() + 1);
                rx.poll_recv(cx)
            })
        };
        // Open at first: polled, pending, closed.
        assert!(poll_once(&gate, &mut rx).is_pending());
        // Closed: not polled.
        assert!(poll_once(&gate, &mut rx).is_pending());
        assert!(poll_once(&gate, &mut rx).is_pending());
        assert_eq!(polls.get(), 1);
        // A send wakes the receiver's waker (the gate's): polled, ready. Two messages with one wake-up
        // (the first send took the waker): the gate stays open after a ready poll, so the second is
        // received without a wake-up of its own.
        tx.send(7).unwrap();
        tx.send(8).unwrap();
        assert_eq!(poll_once(&gate, &mut rx), Poll::Ready(Some(7)));
        assert_eq!(poll_once(&gate, &mut rx), Poll::Ready(Some(8)));
        assert!(poll_once(&gate, &mut rx).is_pending());
        assert!(poll_once(&gate, &mut rx).is_pending());
        assert_eq!(polls.get(), 4);

        // And the task polling the gate is woken through it.
        let task = tokio::spawn(async move { poll_fn(|cx| gate.poll(cx, |cx| rx.poll_recv(cx))).await });
        tokio::task::yield_now().await;
        tx.send(9).unwrap();
        assert_eq!(task.await.unwrap(), Some(9));
    }
}
