//! Fault injection for the integration tests, compiled into debug builds only. A test starts a
//! server with `DFS_FAILPOINTS=name[=value],...`; the code consults a named point where a fault
//! that cannot be caused from outside must be made to happen (a commit that reports an error it
//! did not have, a pause at the one moment a race needs). In release builds every point is off
//! and the environment is not read.

/// The environment variable that switches failpoints on.
pub const FAILPOINTS_ENV: &str = "DFS_FAILPOINTS";

/// The value of failpoint `name` (empty if it is set without one), or None if it is off.
pub fn value(name: &str) -> Option<&'static str> {
    #[cfg(debug_assertions)]
    {
        static POINTS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        let points = POINTS.get_or_init(|| {
            let spec = std::env::var(FAILPOINTS_ENV).unwrap_or_default();
            let points: Vec<(String, String)> = spec
                .split(',')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((n, v)) => (n.to_string(), v.to_string()),
                    None => (p.to_string(), String::new()),
                })
                .collect();
            if !points.is_empty() {
                tracing::warn!("failpoints on: {spec}");
            }
            points
        });
        points.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    #[cfg(not(debug_assertions))]
    {
        let _ = name;
        None
    }
}

/// Whether failpoint `name` is on.
pub fn is_on(name: &str) -> bool {
    value(name).is_some()
}

/// Sleeps for the milliseconds failpoint `name` holds, if it is on.
pub async fn pause(name: &str) {
    if let Some(ms) = value(name).and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!("failpoint {name}: pausing {ms} ms");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
}

/// [`pause`] for a thread outside the runtimes (scrub, compaction): sleeps the milliseconds
/// failpoint `name` holds, if it is on.
pub fn pause_blocking(name: &str) {
    if let Some(ms) = value(name).and_then(|v| v.parse::<u64>().ok()) {
        tracing::warn!("failpoint {name}: pausing {ms} ms");
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
