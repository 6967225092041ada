//! Giving freed memory back to the system. glibc's allocator keeps the pages of freed allocations in
//! its per-thread arenas unless asked: after 500 WebSocket sessions that never read were closed, the
//! hub still held ~1 GB (bench `ws-slow`). A background task asks for them back every few seconds
//! (`malloc_trim`, which walks every arena and releases whole free pages). Elsewhere a no-op.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often freed memory is handed back.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// Starts the trimmer; it ends when `stop` turns true.
pub fn spawn_trimmer(mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory held by the allocator; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
