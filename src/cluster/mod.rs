//! Cluster mode: instances sharing one PostgreSQL database behave as one hub. Messages need nothing
//! from here — every instance's commit tail (`store::tail`) reads every instance's commits. This
//! module owns the rest: the node id, and (next) control events and node heartbeats.

/// This instance's node id: `[cluster] node_id`, or the host name with a random suffix (a restarted
/// instance is a new node, so a survivor can tell its old sessions from its new ones).
pub fn node_id(configured: &str) -> String {
    let configured = configured.trim();
    if !configured.is_empty() {
        return configured.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect())
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "hivehub".to_string());
    let suffix: u32 = rand::random();
    format!("{host}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_configured_node_id_is_kept_and_generated_ones_differ() {
        assert_eq!(super::node_id(" hub-a "), "hub-a");
        let (a, b) = (super::node_id(""), super::node_id(""));
        assert_ne!(a, b);
        assert!(a.len() > 9 && !a.contains(' '));
    }
}
