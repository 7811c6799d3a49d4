//! The `spawn` role's logic: whether this worker may send a request straight to its
//! on-demand app (it holds a lease from the sidecar), what activity it owes the
//! sidecar and when, and what to answer from the sidecar's replies.
//!
//! The guarantee: the sidecar never stops an app while a request the filter sent to
//! it may be in flight. It rests on three rules, with `tick` the period of the
//! filter's timer (reports are sent from it):
//!
//! 1. A lease is not used in its last `tick + LEASE_MARGIN`.
//! 2. Activity not yet reported (requests started, requests in flight, or a change in
//!    how many are) is reported at the first tick within `2 × (tick + LEASE_MARGIN)`
//!    of the lease's end, whatever the report interval; so a request sent under a lease
//!    is reported at least `LEASE_MARGIN` before the lease ends, and a worker with a
//!    request in flight renews its lease (and tells the sidecar it is busy) before it
//!    runs out. Otherwise reports go every `report_interval` while there is activity.
//! 3. The sidecar stops an app only once the last lease it granted has run out (plus a
//!    grace), no worker reports a request in flight, and nothing happened for
//!    `idle_shutdown`; the end of a worker's last request counts as activity.
//!
//! A report that cannot be delivered revokes the lease: the next request asks the
//! sidecar again (and so tells it about itself).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;

use crate::config::SpawnConfig;
use crate::reason::Reason;
use crate::request::LocalReply;

/// The request header an `ORIGINAL_DST` cluster with `use_http_header` obeys, whoever
/// wrote it. The role never writes it (it sets [`ORIGINAL_DST_STATE`]) and removes any
/// copy a client sent, so that neither such a cluster nor the app sees a client's choice.
pub const UPSTREAM_HEADER: &str = "x-envoy-original-dst-host";
/// Envoy's filter-state object (an `IP:PORT` address) that an `ORIGINAL_DST` cluster's
/// load balancer reads before its metadata key, its header and the connection's
/// restored destination: where the role sends the request. Only a filter can set it;
/// a request that never met the role has none, and a cluster that reads nothing else
/// (no `use_http_header`, no listener restoring the original destination) has no host
/// for it: Envoy answers 503 and connects nowhere.
pub const ORIGINAL_DST_STATE: &str = "envoy.network.transport_socket.original_dst_address";
/// The role's own record of where it sends the request (the Wasm filter's
/// `wasm.wsgiproxy_spawn_upstream`), which Envoy's `set_filter_state` filter after it
/// copies into [`ORIGINAL_DST_STATE`] where the role could not set that itself: the
/// Wasm filter in Envoy before 1.40 (1.36.2's `set_envoy_filter_state` answers
/// `NotFound` in a callout's answer, where a cold start's request goes on).
pub const UPSTREAM_RECORD: &str = "wsgiproxy_spawn_upstream";
/// Response header telling the client how long its request waited for a cold start.
pub const COLD_START_HEADER: &str = "x-wsgiproxy-cold-start-ms";
/// Sidecar API headers.
pub const SIDECAR_UPSTREAM: &str = "x-wsgiproxy-upstream";
pub const SIDECAR_LEASE: &str = "x-wsgiproxy-lease-ms";
pub const SIDECAR_COLD_START: &str = "x-wsgiproxy-cold-start-ms";
/// Present on every answer of the sidecar itself (Envoy's own 503s lack it).
pub const SIDECAR_MARK: &str = "x-wsgiproxy-sidecar";
pub const SIDECAR_REPORTER: &str = "x-wsgiproxy-reporter";
pub const SIDECAR_STARTED: &str = "x-wsgiproxy-started";
pub const SIDECAR_IN_FLIGHT: &str = "x-wsgiproxy-in-flight";
/// How long an ensure call may wait for a start before the sidecar answers that it
/// is still going on (`202`): sent for a request that would rather have the waiting page.
pub const SIDECAR_WAIT: &str = "x-wsgiproxy-wait-ms";

/// Beyond the tick, how long before its end a lease stops being used: time for the
/// report of a request sent just before to reach the sidecar.
pub const LEASE_MARGIN: Duration = Duration::from_millis(250);
/// The longest lease believed (the sidecar grants at most 600 s); a longer one is cut.
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// The longest cold start believed, in ms (the longest `ensure_timeout_ms`).
pub const MAX_COLD_START_MS: u64 = 600_000;
/// After a report could not be delivered, lease-driven reports wait this long.
pub const RETRY_REPORT_AFTER: Duration = Duration::from_secs(1);
/// The longest `Retry-After` passed on from the sidecar, in seconds.
pub const MAX_RETRY_AFTER: u64 = 3600;

/// What the sidecar said when it granted a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub upstream: String,
    pub lease: Duration,
    /// Set when the call had to wait for the app to start.
    pub cold_start_ms: Option<u64>,
}

fn text(header: &dyn Fn(&str) -> Option<Vec<u8>>, name: &str) -> Option<String> {
    header(name).and_then(|v| String::from_utf8(v).ok()).map(|v| v.trim().to_string())
}

/// Reads a 200 answer of `/v1/ensure` or `/v1/activity`. The upstream must be a
/// loopback `address:port` (the sidecar starts apps beside Envoy) or one in
/// `networks` (the configuration's `upstream_networks`); durations are capped.
pub fn parse_grant(header: &dyn Fn(&str) -> Option<Vec<u8>>, networks: &[IpNet]) -> Option<Grant> {
    let upstream = text(header, SIDECAR_UPSTREAM)?;
    let address: SocketAddr = upstream.parse().ok()?;
    let ip = address.ip().to_canonical();
    if !(ip.is_loopback() || networks.iter().any(|n| n.contains(&ip))) || address.port() == 0 {
        return None;
    }
    let lease_ms: u64 = text(header, SIDECAR_LEASE)?.parse().ok()?;
    let lease = Duration::from_millis(lease_ms).min(MAX_LEASE);
    let cold_start_ms = text(header, SIDECAR_COLD_START).and_then(|v| v.parse::<u64>().ok()).map(|ms| ms.min(MAX_COLD_START_MS));
    Some(Grant { upstream: address.to_string(), lease, cold_start_ms })
}

/// The sidecar's `Retry-After`, when it is a plain number of seconds (capped); else 1.
pub fn retry_after(value: Option<Vec<u8>>) -> String {
    value
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|v| !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(1, |s| s.clamp(1, MAX_RETRY_AFTER))
        .to_string()
}

/// The sidecar could not be reached (or did not answer in time).
pub fn unreachable_reply(app: &str) -> LocalReply {
    LocalReply::new(503, Reason::SidecarUnreachable, format!("the process manager for {app:?} cannot be reached or did not answer in time"))
        .with_header("retry-after", "1")
}

/// What an answer to `/v1/ensure/{app}` means for the paused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnsureAnswer {
    /// The app is up: send the request there.
    Granted(Grant),
    /// The start goes on past the wait asked for (`SIDECAR_WAIT`).
    Starting,
    /// The sidecar answered that the app is not available.
    Refused(LocalReply),
    /// Envoy answered for a sidecar it could not reach, or nothing came back.
    Unreachable(LocalReply),
}

/// Reads the sidecar's answer to an ensure call: `header` gives its headers
/// (`:status` included), `body` its body (read only for a refusal).
pub fn ensure_answer(config: &SpawnConfig, header: &dyn Fn(&str) -> Option<Vec<u8>>, body: &dyn Fn() -> Vec<u8>) -> EnsureAnswer {
    let app = config.app.as_str();
    let status = header(":status");
    if status.as_deref() == Some(b"200") {
        if let Some(grant) = parse_grant(header, &config.upstream_networks) {
            return EnsureAnswer::Granted(grant);
        }
    }
    let Some(status) = status.filter(|_| header(SIDECAR_MARK).is_some()) else {
        return EnsureAnswer::Unreachable(unreachable_reply(app));
    };
    if status == b"202" {
        return EnsureAnswer::Starting;
    }
    let status = String::from_utf8_lossy(&status).into_owned();
    let why = if status == "200" {
        "its answer could not be used".to_string()
    } else {
        let body = body();
        let body = String::from_utf8_lossy(body.get(..1024).unwrap_or(&body))
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect::<String>();
        body.trim().to_string()
    };
    EnsureAnswer::Refused(
        LocalReply::new(503, Reason::AppUnavailable, format!("{app:?} is not available (sidecar answered {status}): {why}"))
            .with_header("retry-after", &retry_after(header("retry-after"))),
    )
}

/// What an answer to an activity report means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportAnswer {
    /// Received; the lease is renewed.
    Granted(Grant),
    /// Received, but the app is not ready: the lease is over.
    NotReady,
    /// The sidecar did not get it (or its answer did not come back).
    Undelivered,
}

pub fn report_answer(config: &SpawnConfig, header: &dyn Fn(&str) -> Option<Vec<u8>>) -> ReportAnswer {
    let marked = header(SIDECAR_MARK).is_some();
    match header(":status").as_deref() {
        Some(b"200") if marked => parse_grant(header, &config.upstream_networks).map_or(ReportAnswer::NotReady, ReportAnswer::Granted),
        Some(_) if marked => ReportAnswer::NotReady,
        _ => ReportAnswer::Undelivered,
    }
}

/// An activity report sent and not yet answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Requests started since the last report.
    pub started: u64,
    /// Requests in flight when it was sent.
    pub in_flight: u64,
    /// When it was sent: a lease it renews counts from then.
    pub asked_at: SystemTime,
}

/// One worker's view of one app.
#[derive(Debug)]
pub struct LeaseState {
    /// The period of the timer reports are sent from.
    tick: Duration,
    upstream: Option<String>,
    lease_until: Option<SystemTime>,
    /// The lease granted for `upstream`: no lease can legitimately end further away
    /// than that (when one does, the clock went back).
    lease_len: Duration,
    started_since_report: u64,
    in_flight: u64,
    /// Requests in flight as the sidecar last heard.
    reported_in_flight: u64,
    pending: Option<Report>,
    last_sent: Option<SystemTime>,
    last_failed: bool,
}

impl LeaseState {
    /// `tick`: how often the filter's timer runs (and may send a report).
    pub fn new(tick: Duration) -> LeaseState {
        LeaseState {
            tick,
            upstream: None,
            lease_until: None,
            lease_len: Duration::ZERO,
            started_since_report: 0,
            in_flight: 0,
            reported_in_flight: 0,
            pending: None,
            last_sent: None,
            last_failed: false,
        }
    }

    /// How long before its end a lease stops being used.
    pub fn stop_using_before(&self) -> Duration {
        self.tick.saturating_add(LEASE_MARGIN)
    }

    /// From how long before its end a lease is renewed by a report of any activity.
    pub fn renew_before(&self) -> Duration {
        self.stop_using_before().saturating_mul(2)
    }

    /// The upstream to use now, when a lease covers it.
    pub fn usable(&self, now: SystemTime) -> Option<&str> {
        let left = self.lease_until?.duration_since(now).ok()?;
        if left > self.stop_using_before() && left <= self.lease_len {
            self.upstream.as_deref()
        } else {
            None
        }
    }

    /// Records a grant counted from `granted_at` (never later than the sidecar's own
    /// view of it). A later lease extends, an earlier one never shortens, a grant for
    /// another upstream replaces.
    pub fn grant(&mut self, grant: &Grant, granted_at: SystemTime) {
        let Some(until) = granted_at.checked_add(grant.lease) else {
            self.revoke();
            return;
        };
        let same = self.upstream.as_deref() == Some(grant.upstream.as_str());
        let lease_len = if same { self.lease_len.max(grant.lease) } else { grant.lease };
        let plausible = |u: SystemTime| granted_at.checked_add(lease_len).is_some_and(|latest| u <= latest);
        let keep = same && self.lease_until.is_some_and(|u| u >= until && plausible(u));
        if !keep {
            self.lease_until = Some(until);
        }
        self.upstream = Some(grant.upstream.clone());
        self.lease_len = lease_len;
    }

    /// Records the grant of an ensure call sent at `asked_at` and answered at `now`:
    /// the sidecar granted it after the cold start it reports, if any.
    pub fn ensure_granted(&mut self, grant: &Grant, asked_at: SystemTime, now: SystemTime) {
        let waited = Duration::from_millis(grant.cold_start_ms.unwrap_or(0));
        let granted_at = asked_at.checked_add(waited).map_or(now, |t| t.min(now));
        self.grant(grant, granted_at);
    }

    /// The sidecar says the app is not ready, or cannot be reached: forget the lease.
    pub fn revoke(&mut self) {
        self.lease_until = None;
    }

    pub fn request_started(&mut self) {
        self.started_since_report = self.started_since_report.saturating_add(1);
        self.in_flight = self.in_flight.saturating_add(1);
    }

    pub fn request_finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Activity the sidecar has not heard of: requests started, requests in flight
    /// (kept alive), or a change in how many are in flight (their end included).
    fn owed(&self) -> bool {
        self.started_since_report > 0 || self.in_flight > 0 || self.in_flight != self.reported_in_flight
    }

    /// True when the lease (if any) ends within `renew_before`.
    fn lease_ending(&self, now: SystemTime) -> bool {
        self.lease_until.is_none_or(|until| until.duration_since(now).map_or(true, |left| left <= self.renew_before()))
    }

    /// Whether a report should go now: activity is owed, none is in flight, and either
    /// `interval` passed since the last one or the lease is about to end.
    pub fn report_due(&self, now: SystemTime, interval: Duration) -> bool {
        if self.pending.is_some() || !self.owed() {
            return false;
        }
        // A clock gone back counts as long ago.
        let since = self.last_sent.map(|t| now.duration_since(t).unwrap_or(Duration::MAX));
        if since.is_none_or(|s| s >= interval) {
            return true;
        }
        if self.last_failed && since.is_some_and(|s| s < RETRY_REPORT_AFTER) {
            return false;
        }
        self.lease_ending(now)
    }

    /// The report to send now, if one is due; the interval counts from here.
    pub fn take_report(&mut self, now: SystemTime, interval: Duration) -> Option<Report> {
        if !self.report_due(now, interval) {
            return None;
        }
        let report = Report { started: std::mem::take(&mut self.started_since_report), in_flight: self.in_flight, asked_at: now };
        self.pending = Some(report);
        self.last_sent = Some(now);
        Some(report)
    }

    /// The answer to the report in flight (or `Undelivered` when it could not be sent).
    pub fn report_answered(&mut self, answer: &ReportAnswer) {
        let Some(sent) = self.pending.take() else { return };
        match answer {
            ReportAnswer::Granted(grant) => {
                self.reported_in_flight = sent.in_flight;
                self.last_failed = false;
                self.grant(grant, sent.asked_at);
            }
            ReportAnswer::NotReady => {
                self.reported_in_flight = sent.in_flight;
                self.last_failed = false;
                self.revoke();
            }
            ReportAnswer::Undelivered => {
                // Keep the count for the next report, and stop trusting the lease so
                // that the next request asks the sidecar again.
                self.started_since_report = self.started_since_report.saturating_add(sent.started);
                self.last_failed = true;
                self.revoke();
            }
        }
    }
}

/// How a lease holder names itself to the sidecar: its random bytes, in hex.
pub fn reporter_id(random: &[u8]) -> String {
    hex::encode(random)
}

/// Whether calls to the sidecar go through, so that a failure is logged once when it
/// begins (and once when it ends), not at every request.
#[derive(Debug, Default)]
pub struct CallHealth {
    failing: bool,
}

impl CallHealth {
    /// A call failed: true when the calls worked until now (log this one loudly).
    pub fn failed(&mut self) -> bool {
        !std::mem::replace(&mut self.failing, true)
    }

    /// A call was answered by the sidecar: true when calls were failing until now.
    pub fn answered(&mut self) -> bool {
        std::mem::replace(&mut self.failing, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(250);
    const SECOND: Duration = Duration::from_secs(1);
    /// A report interval longer than any lease here: only the lease drives reports.
    const NEVER: Duration = Duration::from_secs(60);

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn grant(lease_ms: u64) -> Grant {
        Grant { upstream: "127.0.0.1:10000".into(), lease: Duration::from_millis(lease_ms), cold_start_ms: None }
    }

    fn state() -> LeaseState {
        LeaseState::new(TICK)
    }

    #[test]
    fn a_lease_is_used_until_a_tick_and_a_margin_before_it_ends() {
        let mut s = state();
        assert_eq!(s.usable(at(0)), None);
        s.grant(&grant(2000), at(1000));
        assert_eq!(s.usable(at(1500)), Some("127.0.0.1:10000"));
        assert_eq!(s.usable(at(2499)), Some("127.0.0.1:10000"));
        assert_eq!(s.usable(at(2500)), None);
        // A later grant extends, an earlier one never shortens.
        s.grant(&grant(2000), at(2000));
        assert_eq!(s.usable(at(3400)), Some("127.0.0.1:10000"));
        s.grant(&grant(100), at(2000));
        assert_eq!(s.usable(at(3400)), Some("127.0.0.1:10000"));
        s.revoke();
        assert_eq!(s.usable(at(2100)), None);
    }

    #[test]
    fn a_grant_for_another_upstream_replaces_the_lease() {
        let mut s = state();
        s.grant(&grant(2000), at(1000));
        let moved = Grant { upstream: "127.0.0.1:10001".into(), lease: Duration::from_millis(1000), cold_start_ms: None };
        s.grant(&moved, at(1100));
        assert_eq!(s.usable(at(1500)), Some("127.0.0.1:10001"));
        assert_eq!(s.usable(at(1900)), None, "the old port's longer lease does not carry over");
    }

    #[test]
    fn a_clock_gone_back_does_not_stretch_a_lease() {
        let mut s = state();
        s.grant(&grant(2000), at(10_000));
        // The clock jumps 5 s back: the lease would seem to last 7 s more.
        assert_eq!(s.usable(at(5_000)), None);
        // A fresh grant at the new time replaces the implausible one.
        s.grant(&grant(2000), at(5_000));
        assert_eq!(s.usable(at(5_100)), Some("127.0.0.1:10000"));
        assert_eq!(s.usable(at(6_600)), None);
    }

    #[test]
    fn huge_or_overflowing_durations_never_panic() {
        let mut s = state();
        let huge = Grant { upstream: "127.0.0.1:10000".into(), lease: Duration::MAX, cold_start_ms: Some(u64::MAX) };
        s.ensure_granted(&huge, at(1000), at(1200));
        s.grant(&huge, SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4));
        assert_eq!(s.usable(at(1300)), None, "an overflowing lease is no lease");
        let headers = |name: &str| match name {
            SIDECAR_UPSTREAM => Some(b"127.0.0.1:10000".to_vec()),
            SIDECAR_LEASE | SIDECAR_COLD_START => Some(u64::MAX.to_string().into_bytes()),
            _ => None,
        };
        let g = parse_grant(&headers, &[]).unwrap();
        assert_eq!((g.lease, g.cold_start_ms), (MAX_LEASE, Some(MAX_COLD_START_MS)));
        let mut s = state();
        s.ensure_granted(&g, at(1000), at(1200));
        // A claimed cold start longer than the call took counts from when the answer came.
        assert_eq!(s.usable(at(1200)), Some("127.0.0.1:10000"));
        assert_eq!(s.lease_until, Some(at(1200) + MAX_LEASE));
    }

    #[test]
    fn a_cold_start_lease_counts_from_when_it_was_granted() {
        let mut s = state();
        let cold = Grant { cold_start_ms: Some(3000), ..grant(2000) };
        s.ensure_granted(&cold, at(1000), at(4010));
        assert_eq!(s.lease_until, Some(at(6000)));
    }

    /// Runs the timer from `from` to `to` (ms), one tick every 250 ms; the reports sent.
    fn ticks(s: &mut LeaseState, from: u64, to: u64, interval: Duration) -> Vec<(u64, Report)> {
        (from..to).step_by(250).filter_map(|t| s.take_report(at(t), interval).map(|r| (t, r))).collect()
    }

    #[test]
    fn a_request_sent_late_in_a_lease_is_reported_before_the_lease_ends() {
        // Whatever the report interval, and whenever the request starts.
        for start in (1000..3000).step_by(10) {
            // The lease came with a report just sent: the interval is far off.
            let mut s = state();
            s.request_started();
            s.request_finished();
            assert!(s.take_report(at(1000), NEVER).is_some());
            s.report_answered(&ReportAnswer::Granted(grant(2000)));
            let until = 3000;
            if s.usable(at(start)).is_none() {
                assert!(start >= until - 500, "refused a lease at {start}");
                continue;
            }
            s.request_started();
            let first_tick = start.div_ceil(250) * 250;
            let sent = ticks(&mut s, first_tick, until, NEVER);
            let (t, report) = sent.first().copied().unwrap_or_else(|| panic!("started at {start}: never reported"));
            assert!(t + LEASE_MARGIN.as_millis() as u64 <= until, "started at {start}, reported at {t}");
            assert_eq!((report.started, report.in_flight), (1, 1));
        }
    }

    #[test]
    fn a_long_request_renews_the_lease_and_its_end_is_reported() {
        let mut s = state();
        s.grant(&grant(2000), at(0));
        s.request_started();
        let mut reports = Vec::new();
        for t in (0..20_000).step_by(250) {
            if let Some(r) = s.take_report(at(t), NEVER) {
                reports.push((t, r));
                s.report_answered(&ReportAnswer::Granted(grant(2000)));
            }
            // Still in flight: the lease never runs out under it.
            assert!(s.usable(at(t)).is_some(), "lease lost at {t}");
        }
        assert!(reports.windows(2).all(|w| w[1].0 - w[0].0 <= 1500), "a busy worker reports within each lease");
        assert!(reports.iter().skip(1).all(|(_, r)| (r.started, r.in_flight) == (0, 1)));
        s.request_finished();
        let end = ticks(&mut s, 20_000, 22_000, NEVER);
        assert_eq!(end.first().map(|(_, r)| (r.started, r.in_flight)), Some((0, 0)), "the end is reported: {end:?}");
        s.report_answered(&ReportAnswer::Granted(grant(2000)));
        assert_eq!(ticks(&mut s, 22_000, 30_000, NEVER), [], "then nothing is owed, and the lease lapses");
    }

    #[test]
    fn reports_follow_the_interval_and_only_a_sent_one_moves_the_timer() {
        let mut s = state();
        s.grant(&grant(60_000), at(0));
        // Nothing owed: nothing sent, and the timer stays where it was.
        assert_eq!(s.take_report(at(0), SECOND), None);
        s.request_started();
        s.request_finished();
        let r = s.take_report(at(250), SECOND).unwrap();
        assert_eq!((r.started, r.in_flight), (1, 0));
        assert_eq!(s.take_report(at(500), SECOND), None, "one report at a time");
        s.report_answered(&ReportAnswer::Granted(grant(60_000)));
        assert_eq!(s.take_report(at(1000), SECOND), None, "nothing owed");
        // Idle ticks did not restart the interval: new activity goes at the next tick.
        s.request_started();
        assert!(s.take_report(at(5000), SECOND).is_some());
        s.report_answered(&ReportAnswer::Granted(grant(60_000)));
        s.request_finished();
        assert_eq!(s.take_report(at(5250), SECOND), None, "within the interval");
        assert_eq!(s.take_report(at(6000), SECOND).map(|r| r.in_flight), Some(0));
    }

    #[test]
    fn an_undelivered_report_keeps_its_count_and_revokes_the_lease() {
        let mut s = state();
        s.grant(&grant(10_000), at(0));
        s.request_started();
        let r = s.take_report(at(0), SECOND).unwrap();
        assert_eq!(r.started, 1);
        s.report_answered(&ReportAnswer::Undelivered);
        assert_eq!(s.usable(at(100)), None);
        // Retried after a pause, not at every tick.
        assert_eq!(s.take_report(at(250), SECOND), None);
        let r = s.take_report(at(1000), SECOND).unwrap();
        assert_eq!((r.started, r.in_flight), (1, 1));
        s.report_answered(&ReportAnswer::NotReady);
        assert_eq!(s.usable(at(1100)), None);
    }

    #[test]
    fn grants_are_parsed_strictly() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes().to_vec())
        };
        let ok =
            headers(&[("x-wsgiproxy-upstream", "127.0.0.1:10001"), ("x-wsgiproxy-lease-ms", "2000"), ("x-wsgiproxy-cold-start-ms", "315")]);
        assert_eq!(
            parse_grant(&ok, &[]),
            Some(Grant { upstream: "127.0.0.1:10001".into(), lease: Duration::from_millis(2000), cold_start_ms: Some(315) })
        );
        assert!(parse_grant(&headers(&[("x-wsgiproxy-upstream", "[::1]:80"), ("x-wsgiproxy-lease-ms", "1")]), &[]).is_some());
        for bad in ["evil.example:80", "10.0.0.5:80", "0.0.0.0:80", "127.0.0.1:0", "127.0.0.1", "[2001:db8::1]:80"] {
            let pairs: &'static [(&'static str, &'static str)] =
                Box::leak(vec![("x-wsgiproxy-upstream", bad), ("x-wsgiproxy-lease-ms", "1")].into_boxed_slice());
            assert_eq!(parse_grant(&headers(pairs), &[]), None, "{bad}");
        }
        assert_eq!(parse_grant(&headers(&[("x-wsgiproxy-upstream", "127.0.0.1:1")]), &[]), None);
        // A container on its own address, where the configuration names its network.
        let bridge: IpNet = "172.18.0.0/16".parse().unwrap();
        let container = headers(&[("x-wsgiproxy-upstream", "172.18.0.5:8080"), ("x-wsgiproxy-lease-ms", "1")]);
        assert_eq!(parse_grant(&container, &[]), None, "not without the network configured");
        assert_eq!(parse_grant(&container, &[bridge]).map(|g| g.upstream), Some("172.18.0.5:8080".into()));
        let elsewhere = headers(&[("x-wsgiproxy-upstream", "10.0.0.5:80"), ("x-wsgiproxy-lease-ms", "1")]);
        assert_eq!(parse_grant(&elsewhere, &[bridge]), None);
        assert_eq!(parse_grant(&headers(&[("x-wsgiproxy-upstream", "127.0.0.1:1"), ("x-wsgiproxy-lease-ms", "-1")]), &[]), None);
    }

    fn blog_config() -> SpawnConfig {
        SpawnConfig {
            app: "blog".into(),
            sidecar_cluster: "sidecar".into(),
            sidecar_authority: "wsgiproxy-sidecar".into(),
            ensure_timeout: SECOND,
            report_interval: SECOND,
            upstream_networks: Vec::new(),
            waiting_page: None,
        }
    }

    fn answer<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<Vec<u8>> + 'a {
        move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes().to_vec())
    }

    #[test]
    fn ensure_answers() {
        let body = || b"app \"blog\" is not available: the app exited\x1b[31m\n".to_vec();
        let granted = [(":status", "200"), (SIDECAR_MARK, "1"), (SIDECAR_UPSTREAM, "127.0.0.1:10000"), (SIDECAR_LEASE, "2000")];
        assert_eq!(ensure_answer(&blog_config(), &answer(&granted), &body), EnsureAnswer::Granted(grant(2000)));

        let refused = [(":status", "503"), (SIDECAR_MARK, "1"), ("retry-after", "8")];
        let EnsureAnswer::Refused(reply) = ensure_answer(&blog_config(), &answer(&refused), &body) else { panic!() };
        assert_eq!((reply.status, reply.reason), (503, Reason::AppUnavailable));
        assert_eq!(reply.headers, [("retry-after".to_string(), "8".to_string())]);
        assert!(reply.detail.ends_with("the app exited [31m"), "no control characters: {}", reply.detail);

        // Envoy's own 503 for a sidecar it cannot reach, or no answer at all.
        for pairs in [&[(":status", "503")][..], &[]] {
            let EnsureAnswer::Unreachable(reply) = ensure_answer(&blog_config(), &answer(pairs), &body) else { panic!() };
            assert_eq!(reply.reason, Reason::SidecarUnreachable);
        }
        // A 200 with an unusable grant is a refusal, not a request sent anywhere.
        let bad = [(":status", "200"), (SIDECAR_MARK, "1"), (SIDECAR_UPSTREAM, "10.1.1.1:80"), (SIDECAR_LEASE, "2000")];
        assert!(matches!(ensure_answer(&blog_config(), &answer(&bad), &body), EnsureAnswer::Refused(_)));
        // Still starting past the wait asked for: only the sidecar's own 202 says so.
        assert_eq!(ensure_answer(&blog_config(), &answer(&[(":status", "202"), (SIDECAR_MARK, "1")]), &body), EnsureAnswer::Starting);
        assert!(matches!(ensure_answer(&blog_config(), &answer(&[(":status", "202")]), &body), EnsureAnswer::Unreachable(_)));
    }

    #[test]
    fn retry_after_is_a_bounded_number_of_seconds() {
        let v = |s: &str| Some(s.as_bytes().to_vec());
        assert_eq!(retry_after(v("5")), "5");
        assert_eq!(retry_after(v("0")), "1");
        assert_eq!(retry_after(v("99999999999999")), "1");
        assert_eq!(retry_after(v("86400")), "3600");
        assert_eq!(retry_after(v("5\r\nx-evil: 1")), "1");
        assert_eq!(retry_after(v("Wed, 21 Oct 2015 07:28:00 GMT")), "1");
        assert_eq!(retry_after(None), "1");
    }

    #[test]
    fn report_answers() {
        let ok = [(":status", "200"), (SIDECAR_MARK, "1"), (SIDECAR_UPSTREAM, "127.0.0.1:10000"), (SIDECAR_LEASE, "2000")];
        assert_eq!(report_answer(&blog_config(), &answer(&ok)), ReportAnswer::Granted(grant(2000)));
        assert_eq!(report_answer(&blog_config(), &answer(&[(":status", "409"), (SIDECAR_MARK, "1")])), ReportAnswer::NotReady);
        assert_eq!(
            report_answer(&blog_config(), &answer(&[(":status", "503")])),
            ReportAnswer::Undelivered,
            "Envoy's 503: the sidecar never got it"
        );
        assert_eq!(report_answer(&blog_config(), &answer(&[])), ReportAnswer::Undelivered);
    }

    #[test]
    fn call_failures_are_news_once() {
        let mut h = CallHealth::default();
        assert!(h.failed());
        assert!(!h.failed());
        assert!(h.answered());
        assert!(!h.answered());
        assert!(h.failed());
    }
}
