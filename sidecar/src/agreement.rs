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
//!   request, written at most every `throttle` and read by the others at most a
//!   poll period late; so a stamp counts as busy for `idle + throttle + poll`
//!   ([`Timing::busy_window_ms`]), never less than the idle time after the request.
//!   A sidecar that leaves (idle, a failed start, its shutdown) removes its stamp.
//!   Every write drops stamps older than [`Timing::kept_ms`] (sidecars gone).
//! - Whoever leaves — the sidecar that scaled it up or one that joined, idle or
//!   after a failed start — scales the service down only when no other sidecar's
//!   stamp is busy ([`on_leave`]).
//!
//! Pure: the time is passed in; `workload/service.rs` reads, decides and writes.

use std::collections::HashMap;

use bollard::models::ServiceSpec;

pub const SCALED_UP: &str = "wsgiproxy.scaled-up";
pub const ACTIVITY_PREFIX: &str = "wsgiproxy.activity.";
/// How often a ready instance reads its service (and may write its stamp).
pub const POLL_MS: u64 = 1000;

/// The times the agreement is kept by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// `idle_shutdown`.
    pub idle_ms: u64,
    /// A stamp is written at most this often.
    pub throttle_ms: u64,
}

impl Timing {
    /// How long a stamp counts as busy: a stamp lags the request it stands for by
    /// up to a throttle and a poll period, so the service stays up for the idle
    /// time after any sidecar's last request.
    pub fn busy_window_ms(&self) -> u64 {
        self.idle_ms.saturating_add(self.throttle_ms).saturating_add(POLL_MS)
    }

    /// Stamps older than this are dropped at each write (sidecars long gone).
    pub fn kept_ms(&self) -> u64 {
        self.busy_window_ms().saturating_mul(4)
    }
}

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

/// Drops the stamps older than `kept_ms` (and any that is not a time): labels do
/// not grow with every sidecar that ever used the service.
fn prune(spec: &mut ServiceSpec, now_ms: u64, kept_ms: u64) {
    labels_mut(spec).retain(|k, v| !k.starts_with(ACTIVITY_PREFIX) || v.parse::<u64>().is_ok_and(|ms| now_ms.saturating_sub(ms) < kept_ms));
}

/// The spec that scales the service up to `n`, managed, with `sidecar`'s stamp.
pub fn scaled_up(spec: &ServiceSpec, n: u32, sidecar: &str, now_ms: u64, timing: Timing) -> ServiceSpec {
    let mut spec = stamped(spec, sidecar, now_ms, now_ms, timing);
    set_replicas(&mut spec, n);
    labels_mut(&mut spec).insert(SCALED_UP.into(), n.to_string());
    spec
}

/// The spec that scales the service back to its floor, no longer managed, without
/// `sidecar`'s stamp nor stale ones.
pub fn scaled_down(spec: &ServiceSpec, floor: u32, sidecar: &str, now_ms: u64, timing: Timing) -> ServiceSpec {
    let mut spec = unstamped(spec, sidecar, now_ms, timing);
    set_replicas(&mut spec, floor);
    labels_mut(&mut spec).remove(SCALED_UP);
    spec
}

/// The spec with `sidecar`'s activity stamp set to `ms` (stale stamps dropped).
pub fn stamped(spec: &ServiceSpec, sidecar: &str, ms: u64, now_ms: u64, timing: Timing) -> ServiceSpec {
    let mut spec = spec.clone();
    prune(&mut spec, now_ms, timing.kept_ms());
    labels_mut(&mut spec).insert(stamp_key(sidecar), ms.to_string());
    spec
}

/// The spec without `sidecar`'s stamp (it no longer uses the service; stale stamps dropped).
pub fn unstamped(spec: &ServiceSpec, sidecar: &str, now_ms: u64, timing: Timing) -> ServiceSpec {
    let mut spec = spec.clone();
    prune(&mut spec, now_ms, timing.kept_ms());
    labels_mut(&mut spec).remove(&stamp_key(sidecar));
    spec
}

/// Whether `sidecar` has a stamp on the service (it uses the service).
pub fn has_stamp(spec: &ServiceSpec, sidecar: &str) -> bool {
    label(spec, &stamp_key(sidecar)).is_some()
}

/// Another sidecar whose stamp is still within the busy window: its key and how long ago.
pub fn busy_elsewhere(spec: &ServiceSpec, sidecar: &str, now_ms: u64, timing: Timing) -> Option<(String, u64)> {
    let own = stamp_key(sidecar);
    labels(spec)
        .filter(|(k, _)| k.starts_with(ACTIVITY_PREFIX) && **k != own)
        .filter_map(|(k, v)| Some((k.trim_start_matches(ACTIVITY_PREFIX).to_string(), now_ms.saturating_sub(v.parse().ok()?))))
        .filter(|(_, ago)| *ago < timing.busy_window_ms())
        .min_by_key(|(_, ago)| *ago)
}

/// What a sidecar that stops using the service (idle, a start that failed, its
/// shutdown) writes, whether it scaled the service up or joined it.
#[derive(Debug, PartialEq)]
pub enum OnLeave {
    /// Not (or no longer) the sidecars' to scale: nothing to write.
    NotManaged,
    /// Another sidecar is busy on it (its key, how long ago): left up, this
    /// sidecar's stamp removed.
    LeaveUp { spec: ServiceSpec, other: String, ago_ms: u64 },
    /// Nobody busy: scaled down to the floor.
    ScaleDown(ServiceSpec),
}

pub fn on_leave(spec: &ServiceSpec, sidecar: &str, floor: u32, now_ms: u64, timing: Timing) -> OnLeave {
    if !managed(spec) {
        return OnLeave::NotManaged;
    }
    match busy_elsewhere(spec, sidecar, now_ms, timing) {
        Some((other, ago_ms)) => OnLeave::LeaveUp { spec: unstamped(spec, sidecar, now_ms, timing), other, ago_ms },
        None => OnLeave::ScaleDown(scaled_down(spec, floor, sidecar, now_ms, timing)),
    }
}

/// The service as read by an instance using it: scaled down (to 0, or, for one the
/// sidecars scaled up, back to the floor by another sidecar): its tasks are
/// stopping, and the next request must start it again.
pub fn scaled_down_elsewhere(spec: &ServiceSpec, ours: bool, floor: u32) -> bool {
    match replicas(spec) {
        Some(0) => true,
        Some(n) => ours && !managed(spec) && n <= u64::from(floor),
        None => false,
    }
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
#[allow(clippy::unwrap_used, clippy::panic)]
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

    /// idle 5 s, stamps written at most every 1.25 s: busy for 7.25 s.
    const T: Timing = Timing { idle_ms: 5_000, throttle_ms: 1_250 };

    #[test]
    fn a_service_is_managed_while_its_replicas_are_those_a_sidecar_set() {
        let idle = spec(0, &[]);
        assert_eq!(on_start(&idle, 0), OnStart::ScaleUp);
        let up = scaled_up(&idle, 2, "a", 1000, T);
        assert_eq!(replicas(&up), Some(2));
        assert!(managed(&up));
        assert_eq!(on_start(&up, 0), OnStart::Join);
        // Someone scaled it by hand since: no longer the sidecars'.
        let mut by_hand = up.clone();
        set_replicas(&mut by_hand, 3);
        assert!(!managed(&by_hand));
        assert_eq!(on_start(&by_hand, 0), OnStart::Foreign);
        assert_eq!(on_leave(&by_hand, "a", 0, 1000, T), OnLeave::NotManaged);
        assert_eq!(on_start(&spec(1, &[]), 0), OnStart::Foreign, "running, and not scaled up by a sidecar");
        assert_eq!(on_start(&spec(1, &[]), 1), OnStart::ScaleUp, "at its floor");
        let down = scaled_down(&up, 0, "a", 1000, T);
        assert_eq!(replicas(&down), Some(0));
        assert!(!managed(&down));
        assert_eq!(on_start(&down, 0), OnStart::ScaleUp);
        let global: ServiceSpec = serde_json::from_value(serde_json::json!({ "Mode": { "Global": {} } })).unwrap();
        assert_eq!(replicas(&global), None);
        assert_eq!(on_start(&global, 0), OnStart::Foreign);
    }

    #[test]
    fn another_sidecars_recent_stamp_keeps_the_service() {
        let s = stamped(&stamped(&spec(1, &[]), "a:9090", 10_000, 10_000, T), "b:9091", 9_000, 10_000, T);
        assert_eq!(busy_elsewhere(&s, "a:9090", 12_000, T), Some(("b_9091".into(), 3_000)));
        assert_eq!(busy_elsewhere(&s, "a:9090", 9_000 + T.busy_window_ms(), T), None, "b idle for the busy window");
        assert_eq!(busy_elsewhere(&s, "b:9091", 12_000, T), Some(("a_9090".into(), 2_000)));
        assert_eq!(busy_elsewhere(&spec(1, &[("wsgiproxy.activity.c", "junk")]), "a", 1, T), None);
        assert_eq!(stamp_key("host/a:9090"), "wsgiproxy.activity.host_a_9090");
    }

    /// A stamp holds the time of the request that was last written, at most every
    /// throttle, and is read up to a poll period late: B's last request can be a
    /// throttle and a poll later than its stamp says. At A's scale-down, B must have
    /// been idle for the whole idle time.
    #[test]
    fn a_stamp_lagging_the_last_request_still_keeps_the_service_for_the_idle_time() {
        let written = 100_000;
        let last_request = written + T.throttle_ms - 1; // not written: within the throttle
        let s = scaled_up(&spec(0, &[]), 1, "b", written, T);
        // Just before B has been idle for the idle time, A reads the label, a poll late.
        let a_reads = last_request + T.idle_ms - 1;
        assert!(busy_elsewhere(&s, "a", a_reads, T).is_some(), "A scales down when B has been idle only {} ms", a_reads - last_request);
        assert!(matches!(on_leave(&s, "a", 0, a_reads + POLL_MS, T), OnLeave::LeaveUp { .. }));
        assert_eq!(busy_elsewhere(&s, "a", written + T.busy_window_ms(), T), None, "a stale stamp blocks only for the window");
    }

    /// B joined the service A scaled up and serves; B's own start fails (its probe,
    /// Docker silent, a task replaced): B must not scale it down under A's traffic.
    #[test]
    fn a_sidecar_that_joined_leaves_a_service_another_uses_up() {
        let up = scaled_up(&spec(0, &[]), 2, "a", 100_000, T);
        let joined = stamped(&up, "b", 101_000, 101_000, T);
        match on_leave(&joined, "b", 0, 104_000, T) {
            OnLeave::LeaveUp { spec, other, ago_ms } => {
                assert_eq!((other.as_str(), ago_ms), ("a", 4_000));
                assert_eq!(replicas(&spec), Some(2), "not scaled down");
                assert!(managed(&spec));
                assert!(!has_stamp(&spec, "b"), "B's stamp removed: it no longer keeps the service");
                assert!(has_stamp(&spec, "a"));
                assert_eq!(label(&spec, &stamp_key("a")), Some("100000"));
                // A leaves later: B's stamp gone, nobody busy: scaled down.
                assert!(matches!(on_leave(&spec, "a", 0, 104_500, T), OnLeave::ScaleDown(_)));
            }
            other => panic!("{other:?}"),
        }
        // The one that scaled it up fails its start while B, joined, still waits:
        // left up for B, whose own failure then scales it down.
        let OnLeave::LeaveUp { spec: left, .. } = on_leave(&joined, "a", 0, 102_000, T) else { panic!() };
        let OnLeave::ScaleDown(down) = on_leave(&left, "b", 0, 103_000, T) else { panic!() };
        assert_eq!(replicas(&down), Some(0));
        assert!(labels(&down).all(|(k, _)| !k.starts_with(ACTIVITY_PREFIX)), "{:?}", down.labels);
    }

    #[test]
    fn every_write_drops_stale_stamps() {
        let now = 1_000_000;
        let s = spec(1, &[("wsgiproxy.activity.gone", "1"), ("wsgiproxy.activity.junk", "x"), ("other", "kept")]);
        let s = stamped(&s, "recent", now - 10, now - 10, T);
        for written in [stamped(&s, "a", now, now, T), unstamped(&s, "a", now, T), scaled_up(&s, 1, "a", now, T)] {
            let mut keys: Vec<&String> = labels(&written).map(|(k, _)| k).collect();
            keys.sort();
            assert!(keys.contains(&&"other".to_string()) && keys.contains(&&stamp_key("recent")), "{keys:?}");
            assert!(!keys.iter().any(|k| k.ends_with(".gone") || k.ends_with(".junk")), "{keys:?}");
        }
        assert!(T.kept_ms() >= T.busy_window_ms());
    }

    #[test]
    fn an_instance_notices_the_service_scaled_down_by_another_sidecar() {
        let up = scaled_up(&spec(0, &[]), 2, "a", 1, T);
        assert!(!scaled_down_elsewhere(&up, true, 0));
        assert!(scaled_down_elsewhere(&scaled_down(&up, 0, "b", 2, T), true, 0));
        let floor1 = scaled_up(&spec(1, &[]), 2, "a", 1, T);
        assert!(scaled_down_elsewhere(&scaled_down(&floor1, 1, "b", 2, T), true, 1));
        assert!(!scaled_down_elsewhere(&scaled_down(&floor1, 1, "b", 2, T), false, 1), "a service used as it runs, still up");
        let mut by_hand = up.clone();
        set_replicas(&mut by_hand, 3);
        assert!(!scaled_down_elsewhere(&by_hand, true, 0), "scaled up by hand: still serving");
        assert!(scaled_down_elsewhere(&spec(0, &[]), false, 0));
    }
}
