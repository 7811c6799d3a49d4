//! What several sidecars in front of one Swarm service agree on, kept in the
//! service's own labels (no store of our own) and written only under the version
//! index Docker gave with the read (a compare-and-set: a write based on a stale
//! read is refused, and the writer reads again and decides again).
//!
//! - `wsgiproxy.scaled-up = N`: written in the same update that set the replicas to
//!   N. A service whose replicas still equal it is managed by the sidecars (scaled
//!   down when idle); one scaled by anyone else since (`docker service scale`) no
//!   longer matches, and is left alone.
//! - `wsgiproxy.activity.<sidecar id> = <unix ms>`: when that sidecar last saw a
//!   request (written at most every `idle_shutdown / 4`). The service is scaled down
//!   only when no other sidecar's stamp is younger than the idle time.
//!
//! Pure: the time is passed in; `workload/service.rs` reads, decides and writes.

use std::collections::HashMap;

use bollard::models::ServiceSpec;

pub const SCALED_UP: &str = "wsgiproxy.scaled-up";
pub const ACTIVITY_PREFIX: &str = "wsgiproxy.activity.";

/// The replicas a replicated service is set to; `None` for another mode (global, a job).
pub fn replicas(spec: &ServiceSpec) -> Option<u64> {
    let replicated = spec.mode.as_ref()?.replicated.as_ref()?;
    Some(replicated.replicas.unwrap_or(1).max(0).unsigned_abs())
}

fn labels(spec: &ServiceSpec) -> impl Iterator<Item = (&String, &String)> {
    spec.labels.iter().flatten()
}

fn label<'a>(spec: &'a ServiceSpec, key: &str) -> Option<&'a str> {
    spec.labels.as_ref()?.get(key).map(String::as_str)
}

/// Scaled up by a sidecar, and not scaled by anyone else since.
pub fn managed(spec: &ServiceSpec) -> bool {
    let scaled = label(spec, SCALED_UP).and_then(|v| v.parse::<u64>().ok());
    scaled.is_some() && scaled == replicas(spec)
}

fn labels_mut(spec: &mut ServiceSpec) -> &mut HashMap<String, String> {
    spec.labels.get_or_insert_with(HashMap::new)
}

fn set_replicas(spec: &mut ServiceSpec, n: u32) {
    if let Some(replicated) = spec.mode.as_mut().and_then(|m| m.replicated.as_mut()) {
        replicated.replicas = Some(i64::from(n));
    }
}

/// A label key for a sidecar id (letters, digits, '.', '-', '_'; anything else '_').
pub fn stamp_key(sidecar: &str) -> String {
    let id: String = sidecar.chars().map(|c| if c.is_ascii_alphanumeric() || ".-_".contains(c) { c } else { '_' }).collect();
    format!("{ACTIVITY_PREFIX}{id}")
}

/// The spec that scales the service up to `n`, managed, with `sidecar`'s stamp.
pub fn scaled_up(spec: &ServiceSpec, n: u32, sidecar: &str, now_ms: u64) -> ServiceSpec {
    let mut spec = spec.clone();
    set_replicas(&mut spec, n);
    labels_mut(&mut spec).insert(SCALED_UP.into(), n.to_string());
    labels_mut(&mut spec).insert(stamp_key(sidecar), now_ms.to_string());
    spec
}

/// Stamps older than this are dropped at a scale-down (sidecars long gone, or idle:
/// an idle one writes its stamp again at its next request).
pub const STAMP_KEPT_MS: u64 = 3_600_000;

/// The spec that scales the service back to its floor, no longer managed, without
/// stamps older than [`STAMP_KEPT_MS`].
pub fn scaled_down(spec: &ServiceSpec, floor: u32, now_ms: u64) -> ServiceSpec {
    let mut spec = spec.clone();
    set_replicas(&mut spec, floor);
    let labels = labels_mut(&mut spec);
    labels.remove(SCALED_UP);
    labels.retain(|k, v| !k.starts_with(ACTIVITY_PREFIX) || v.parse::<u64>().is_ok_and(|ms| now_ms.saturating_sub(ms) < STAMP_KEPT_MS));
    spec
}

/// The spec with `sidecar`'s activity stamp set to `ms`.
pub fn stamped(spec: &ServiceSpec, sidecar: &str, ms: u64) -> ServiceSpec {
    let mut spec = spec.clone();
    labels_mut(&mut spec).insert(stamp_key(sidecar), ms.to_string());
    spec
}

/// Another sidecar that saw a request less than `idle_ms` ago: its key and how long ago.
pub fn busy_elsewhere(spec: &ServiceSpec, sidecar: &str, now_ms: u64, idle_ms: u64) -> Option<(String, u64)> {
    let own = stamp_key(sidecar);
    labels(spec)
        .filter(|(k, _)| k.starts_with(ACTIVITY_PREFIX) && **k != own)
        .filter_map(|(k, v)| Some((k.trim_start_matches(ACTIVITY_PREFIX).to_string(), now_ms.saturating_sub(v.parse().ok()?))))
        .filter(|(_, ago)| *ago < idle_ms)
        .min_by_key(|(_, ago)| *ago)
}

/// What a start does with the service as it was read.
#[derive(Debug, PartialEq, Eq)]
pub enum OnStart {
    /// At its floor (or below): scale it up.
    ScaleUp,
    /// Already scaled up by a sidecar (this one before a restart, or another): use
    /// it, and say so in the labels (which also fails a concurrent scale-down's write).
    Join,
    /// Scaled up by someone else: used, never scaled down.
    Foreign,
}

pub fn on_start(spec: &ServiceSpec, floor: u32) -> OnStart {
    match replicas(spec) {
        _ if managed(spec) => OnStart::Join,
        Some(n) if n <= u64::from(floor) => OnStart::ScaleUp,
        _ => OnStart::Foreign,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(replicas: i64, labels: &[(&str, &str)]) -> ServiceSpec {
        serde_json::from_value(serde_json::json!({
            "Name": "blog",
            "Labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
            "Mode": { "Replicated": { "Replicas": replicas } }
        }))
        .unwrap()
    }

    #[test]
    fn a_service_is_managed_while_its_replicas_are_those_a_sidecar_set() {
        let idle = spec(0, &[]);
        assert_eq!(on_start(&idle, 0), OnStart::ScaleUp);
        let up = scaled_up(&idle, 2, "a", 1000);
        assert_eq!(replicas(&up), Some(2));
        assert!(managed(&up));
        assert_eq!(on_start(&up, 0), OnStart::Join);
        // Someone scaled it by hand since: no longer the sidecars'.
        let mut by_hand = up.clone();
        set_replicas(&mut by_hand, 3);
        assert!(!managed(&by_hand));
        assert_eq!(on_start(&by_hand, 0), OnStart::Foreign);
        assert_eq!(on_start(&spec(1, &[]), 0), OnStart::Foreign, "running, and not scaled up by a sidecar");
        assert_eq!(on_start(&spec(1, &[]), 1), OnStart::ScaleUp, "at its floor");
        let down = scaled_down(&up, 0, 1000);
        assert_eq!(replicas(&down), Some(0));
        assert!(!managed(&down));
        assert_eq!(on_start(&down, 0), OnStart::ScaleUp);
        let global: ServiceSpec = serde_json::from_value(serde_json::json!({ "Mode": { "Global": {} } })).unwrap();
        assert_eq!(replicas(&global), None);
        assert_eq!(on_start(&global, 0), OnStart::Foreign);
    }

    #[test]
    fn another_sidecars_recent_stamp_keeps_the_service() {
        let s = stamped(&stamped(&spec(1, &[]), "a:9090", 10_000), "b:9091", 9_000);
        assert_eq!(busy_elsewhere(&s, "a:9090", 12_000, 5_000), Some(("b_9091".into(), 3_000)));
        assert_eq!(busy_elsewhere(&s, "a:9090", 14_000, 5_000), None, "b idle for the idle time");
        assert_eq!(busy_elsewhere(&s, "b:9091", 12_000, 5_000), Some(("a_9090".into(), 2_000)));
        assert_eq!(busy_elsewhere(&spec(1, &[("wsgiproxy.activity.c", "junk")]), "a", 1, 5), None);
        assert_eq!(stamp_key("host/a:9090"), "wsgiproxy.activity.host_a_9090");
        // A scale-down drops the stamps of sidecars silent for an hour.
        let down = scaled_down(&stamped(&s, "old", 1), 0, STAMP_KEPT_MS + 8_000);
        let keys: Vec<&String> = labels(&down).map(|(k, _)| k).filter(|k| k.starts_with(ACTIVITY_PREFIX)).collect();
        assert_eq!(keys.len(), 2, "{keys:?}");
        assert!(!keys.iter().any(|k| k.ends_with(".old")));
    }
}
