//! One accept loop for every listener (HTTP, MQTT over TCP, TLS and WebSocket).
//!
//! When the process runs out of file descriptors, `accept` fails at once and keeps failing until a
//! descriptor is freed: a loop that just retries spins a core and writes a warning per try (millions per
//! minute). This loop backs off instead, logs at most one warning per interval with a count of the
//! suppressed ones, sets TCP_NODELAY, and admits a connection only with a slot of its listener's cap.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Over-limit connections that may be answered at once (e.g. MQTT's CONNACK "server unavailable",
/// which needs the client's CONNECT first); past that they are closed unanswered, so a flood cannot
/// turn refusals into a new pile of open sockets and tasks.
pub const REFUSAL_SLOTS: usize = 16;

/// At most one warning of a kind per listener this often.
const LOG_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A cap on the concurrent connections of one or more listeners.
pub struct Cap {
    slots: Arc<Semaphore>,
    refusals: Arc<Semaphore>,
    max: usize,
}

/// A connection's place under its cap. It is released when dropped, wherever that happens — the
/// connection ends, fails, or its task panics and unwinds — so a slot cannot leak. Keep it with the
/// socket (moved into the connection's task, or carried by the socket itself).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Cap {
    pub fn new(max: usize) -> Arc<Cap> {
        Arc::new(Cap { slots: Arc::new(Semaphore::new(max)), refusals: Arc::new(Semaphore::new(REFUSAL_SLOTS)), max })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections holding a slot now.
    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    fn try_take(&self) -> Option<Slot> {
        self.slots.clone().try_acquire_owned().ok().map(|p| Slot { _permit: p })
    }

    fn try_refusal(&self) -> Option<Slot> {
        self.refusals.clone().try_acquire_owned().ok().map(|p| Slot { _permit: p })
    }
}

/// Accepts connections on `listener` until `shutdown` completes (dropping the listener then, so no
/// more are accepted). Each connection with a free slot goes to `serve`; one over the cap goes to
/// `refuse` with a refusal slot while one is free, and is closed otherwise. Both run on the accept
/// loop: they spawn whatever outlives the call, moving the slot along.
pub async fn run(
    name: &'static str,
    listener: TcpListener,
    cap: Arc<Cap>,
    shutdown: impl Future<Output = ()>,
    mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
    mut refuse: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    tokio::pin!(shutdown);
    let mut backoff = Backoff::default();
    let mut failures = Throttle::default();
    let mut refusals = Throttle::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                // Without TCP_NODELAY small writes (WebSocket messages, long-poll answers, MQTT packets)
                // wait for delayed ACKs: 40 ms latency tails.
                let _ = stream.set_nodelay(true);
                if let Some(slot) = cap.try_take() {
                    serve(stream, peer, slot);
                    continue;
                }
                if let Some(suppressed) = refusals.tick(Instant::now()) {
                    tracing::warn!(listener = name, %peer, max = cap.max, suppressed, "connection refused: connection limit reached");
                }
                match cap.try_refusal() {
                    Some(slot) => refuse(stream, peer, slot),
                    None => drop(stream),
                }
            }
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE), buffers and the like: it fails again at once
                // until something is freed, so wait before retrying.
                if let Some(suppressed) = failures.tick(Instant::now()) {
                    tracing::warn!(listener = name, error = %e, suppressed, "accept failed; backing off");
                }
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = &mut shutdown => return,
                }
            }
        }
    }
}

/// Delay before retrying a failed accept: 10 ms doubling to 1 s, back to 10 ms after a success.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: BACKOFF_FIRST }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        delay
    }

    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

/// Lets one event of a kind be logged per `LOG_EVERY`, counting the ones suppressed in between.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(suppressed since the last logged one)` when this event may be logged.
    fn tick(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay(), BACKOFF_FIRST);
    }

    #[test]
    fn throttle_logs_once_per_interval_with_the_suppressed_count() {
        let start = Instant::now();
        let mut t = Throttle::default();
        assert_eq!(t.tick(start), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.tick(start + Duration::from_millis(i)), None);
        }
        assert_eq!(t.tick(start + LOG_EVERY), Some(1000));
        assert_eq!(t.tick(start + LOG_EVERY + Duration::from_millis(1)), None);
    }

    #[tokio::test]
    async fn a_slot_is_released_when_its_task_panics() {
        let cap = Cap::new(1);
        let slot = cap.try_take().unwrap();
        assert!(cap.try_take().is_none());
        let task = tokio::spawn(async move {
            let _slot = slot;
            panic!("connection task fails");
        });
        assert!(task.await.is_err());
        assert_eq!(cap.in_use(), 0);
        assert!(cap.try_take().is_some());
    }
}
