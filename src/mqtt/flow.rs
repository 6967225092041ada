//! Flow control for plain topics around rumqttd's router.
//!
//! The router keeps one log per subscription filter, bounded by `[mqtt] router_segment_bytes` x
//! `router_segment_count`; a subscriber reads it with its own cursor, and when publishers append
//! faster than a subscriber reads, the log drops its oldest segment and the subscriber's cursor skips
//! ahead: silent loss. So the edge accounts for what each subscriber still has to take from each of
//! its filters' logs (its `Lag`, in the log's own size measure) and admits a publish only when it fits
//! into the lag room of every online matching subscriber. A publisher that does not fit waits — its
//! connection stops reading its socket and its PUBACK (the router's) is not sent — until the slow
//! subscriber has taken enough, or is gone (unsubscribed, or disconnected as not reading).
//!
//! The room is what the log is sure to keep: `(router_segment_count - 1) x router_segment_bytes`
//! (the active segment may be the one dropped next). A publish larger than that is admitted when the
//! subscriber owes nothing, so it never waits forever.
//!
//! Counting is exact in the common case: a subscription is registered once the router has answered
//! its SUBSCRIBE (so everything counted for it is appended after its cursor was placed), and is
//! withdrawn before its UNSUBSCRIBE is sent. A message the router appended in the moment between its
//! SUBACK and the registration is delivered uncounted; taking it off saturates at zero, so the error
//! disappears whenever the subscriber catches up. When one subscriber holds overlapping filters, each
//! copy it receives is taken off one of the matching filters' lags.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

/// How the router measures a message in its log (`PublishData::size`).
pub fn log_size(topic_len: usize, payload_len: usize) -> usize {
    4 + topic_len + payload_len
}

/// What one subscriber still has to take from one filter's log.
pub struct Lag {
    owed: AtomicUsize,
    /// Publishers waiting for room.
    waiters: AtomicUsize,
    room: Notify,
    /// Unsubscribed or disconnected: no longer counted, never waited for.
    closed: AtomicBool,
}

impl Lag {
    fn new() -> Lag {
        Lag {
            owed: AtomicUsize::new(0),
            waiters: AtomicUsize::new(0),
            room: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Bytes counted and not yet taken.
    pub fn owed(&self) -> usize {
        self.owed.load(Ordering::Relaxed)
    }

    /// Counts `size` when it fits under `cap` (or nothing is owed); `false` when it must wait.
    fn try_reserve(&self, size: usize, cap: usize) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return true;
        }
        self.owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| {
                (owed == 0 || owed + size <= cap).then_some(owed + size)
            })
            .is_ok()
    }

    fn release(&self, size: usize) {
        let _ = self.owed.fetch_update(Ordering::AcqRel, Ordering::Acquire, |owed| Some(owed.saturating_sub(size)));
        if self.waiters.load(Ordering::Acquire) > 0 {
            self.room.notify_waiters();
        }
    }

    /// The subscriber took a message of `size` from the log.
    pub fn taken(&self, size: usize) {
        self.release(size);
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.room.notify_waiters();
    }

    /// Waits until `size` may fit (or the lag is closed).
    async fn room_for(&self, size: usize, cap: usize) {
        self.waiters.fetch_add(1, Ordering::AcqRel);
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let owed = self.owed.load(Ordering::Acquire);
            if self.closed.load(Ordering::Acquire) || owed == 0 || owed + size <= cap {
                break;
            }
            notified.await;
        }
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Lags counted for one admitted publish; `release` gives the room back when the publish never
/// reached the router.
#[must_use]
pub struct Admitted {
    lags: Vec<Arc<Lag>>,
    size: usize,
}

impl Admitted {
    pub fn release(self) {
        for lag in &self.lags {
            lag.release(self.size);
        }
    }
}

/// The online plain subscriptions by filter level, and the room each may lag.
pub struct PlainFlow {
    cap: usize,
    root: RwLock<Node>,
}

#[derive(Default)]
struct Node {
    children: HashMap<String, Node>,
    /// Subscriptions whose filter ends here.
    here: Vec<Arc<Lag>>,
    /// Subscriptions whose filter ends here with `/#` (also matching this level itself).
    rest: Vec<Arc<Lag>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.rest.is_empty()
    }

    /// Collects the lags of the filters matching `levels` (rumqttd's `matches`).
    fn collect(&self, levels: &[&str], out: &mut Vec<Arc<Lag>>) {
        out.extend(self.rest.iter().cloned());
        let Some((level, more)) = levels.split_first() else {
            out.extend(self.here.iter().cloned());
            return;
        };
        if let Some(child) = self.children.get(*level) {
            child.collect(more, out);
        }
        if *level != "+" {
            if let Some(child) = self.children.get("+") {
                child.collect(more, out);
            }
        }
    }
}

impl PlainFlow {
    /// Room per subscription from the router's log bounds.
    pub fn new(segment_bytes: usize, segment_count: usize) -> PlainFlow {
        PlainFlow { cap: segment_bytes.saturating_mul(segment_count.saturating_sub(1)), root: RwLock::default() }
    }

    /// Bytes one subscriber may lag behind on one filter.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Counts a publish of `size` on `topic` for every matching subscription, waiting while one of
    /// them has no room.
    pub async fn admit(&self, topic: &str, size: usize) -> Admitted {
        loop {
            match self.try_reserve(topic, size) {
                Ok(admitted) => return admitted,
                Err(full) => full.room_for(size, self.cap).await,
            }
        }
    }

    /// `admit` when every matching subscription has room now; `None` when the publish must wait.
    pub fn try_admit(&self, topic: &str, size: usize) -> Option<Admitted> {
        self.try_reserve(topic, size).ok()
    }

    /// Counts the publish for every matching subscription, or for none and returns the first
    /// without room.
    fn try_reserve(&self, topic: &str, size: usize) -> Result<Admitted, Arc<Lag>> {
        let lags = self.matching(topic);
        let Some(i) = lags.iter().position(|lag| !lag.try_reserve(size, self.cap)) else {
            return Ok(Admitted { lags, size });
        };
        for lag in &lags[..i] {
            lag.release(size);
        }
        Err(lags[i].clone())
    }

    fn matching(&self, topic: &str) -> Vec<Arc<Lag>> {
        let mut out = Vec::new();
        // rumqttd never matches `$` topics against filters.
        if topic.starts_with('$') {
            return out;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let root = self.root.read().unwrap_or_else(|e| e.into_inner());
        if root.is_empty() {
            return out;
        }
        root.collect(&levels, &mut out);
        out
    }

    /// Registers a subscription the router has accepted; its lag starts at zero.
    pub fn subscribe(&self, filter: &str) -> Arc<Lag> {
        let lag = Arc::new(Lag::new());
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let mut node = &mut *root;
        let levels: Vec<&str> = filter.split('/').collect();
        let (last, path) = levels.split_last().expect("split yields one level at least");
        if *last == "#" {
            for level in path {
                node = node.children.entry(level.to_string()).or_default();
            }
            node.rest.push(lag.clone());
        } else {
            for level in &levels {
                node = node.children.entry(level.to_string()).or_default();
            }
            node.here.push(lag.clone());
        }
        lag
    }

    /// Withdraws a subscription: it is counted no more, and publishers waiting for it go on.
    pub fn unsubscribe(&self, filter: &str, lag: &Arc<Lag>) {
        lag.close();
        let mut root = self.root.write().unwrap_or_else(|e| e.into_inner());
        let levels: Vec<&str> = filter.split('/').collect();
        remove(&mut root, &levels, lag);
    }
}

/// Removes `lag` under `levels`, pruning nodes left empty.
fn remove(node: &mut Node, levels: &[&str], lag: &Arc<Lag>) {
    match levels {
        ["#"] => node.rest.retain(|l| !Arc::ptr_eq(l, lag)),
        [] => node.here.retain(|l| !Arc::ptr_eq(l, lag)),
        [level, more @ ..] => {
            if let Some(child) = node.children.get_mut(*level) {
                remove(child, more, lag);
                if child.is_empty() {
                    node.children.remove(*level);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(flow: &PlainFlow, topic: &str) -> usize {
        flow.matching(topic).len()
    }

    #[test]
    fn matching_agrees_with_the_router() {
        let filters = ["#", "a/#", "a/+", "a/b", "+/b", "+", "a/+/c", "+/+/#", "a/b/c/#", "/a", "+/a", "b/#"];
        let topics = ["a", "a/b", "a/b/c", "a/b/c/d", "b", "/a", "x/b", "", "a/", "$SYS/a", "a//c", "b/x"];
        let flow = PlainFlow::new(1024, 4);
        let lags: Vec<_> = filters.iter().map(|f| flow.subscribe(f)).collect();
        for topic in topics {
            let expected = filters.iter().filter(|f| rumqttd::protocol::matches(topic, f)).count();
            assert_eq!(count(&flow, topic), expected, "topic {topic:?}");
        }
        for (f, lag) in filters.iter().zip(&lags) {
            flow.unsubscribe(f, lag);
        }
        assert!(flow.root.read().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_publish_waits_until_the_subscriber_has_room() {
        let flow = Arc::new(PlainFlow::new(1024, 3)); // room 2048
        let lag = flow.subscribe("t/#");
        flow.admit("t/1", 1500).await.lags.len();
        assert_eq!(lag.owed(), 1500);
        // 1500 + 1000 > 2048: waits until the subscriber takes the first.
        let f = flow.clone();
        let second = tokio::spawn(async move { f.admit("t/2", 1000).await.lags.len() });
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        lag.taken(1500);
        assert_eq!(second.await.unwrap(), 1);
        assert_eq!(lag.owed(), 1000);
        // Larger than the room, but nothing owed: admitted.
        lag.taken(1000);
        let _ = flow.admit("t/3", 10_000).await;
        assert_eq!(lag.owed(), 10_000);
        // A withdrawn subscription holds nobody up.
        let f = flow.clone();
        let third = tokio::spawn(async move { f.admit("t/4", 10).await.lags.len() });
        tokio::task::yield_now().await;
        flow.unsubscribe("t/#", &lag);
        assert_eq!(third.await.unwrap(), 0);
        assert_eq!(flow.admit("t/5", 10).await.lags.len(), 0);
    }
}
