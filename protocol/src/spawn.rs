//! The `spawn` role's bookkeeping: whether this worker may send a request straight
//! to its on-demand app (it holds a lease from the sidecar), and what activity it
//! owes the sidecar. The sidecar never stops an app while a lease it granted is
//! running, so a request sent under a lease never meets a stopped process.

use std::time::{Duration, SystemTime};

/// The request header the sidecar's answer is delivered in (Envoy's default name), read by the
/// `ORIGINAL_DST` cluster (`use_http_header`). Any client-sent copy is removed first.
pub const UPSTREAM_HEADER: &str = "x-envoy-original-dst-host";
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

/// A lease is not used in its last moments: a request sent then could still be
/// on its way when the sidecar considers the lease over.
pub const LEASE_MARGIN: Duration = Duration::from_millis(250);

/// One worker's view of one app.
#[derive(Debug, Default)]
pub struct LeaseState {
    upstream: Option<String>,
    lease_until: Option<SystemTime>,
    started_since_report: u64,
    in_flight: u64,
    report_pending: bool,
}

/// What the sidecar said when it granted a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub upstream: String,
    pub lease: Duration,
    /// Set when the call had to wait for the app to start.
    pub cold_start_ms: Option<u64>,
}

/// Reads a 200 answer of `/v1/ensure` or `/v1/activity`.
pub fn parse_grant(header: &dyn Fn(&str) -> Option<Vec<u8>>) -> Option<Grant> {
    let text = |name: &str| header(name).and_then(|v| String::from_utf8(v).ok());
    let upstream = text(SIDECAR_UPSTREAM)?;
    // Only a loopback or literal address:port is accepted as a destination.
    upstream.parse::<std::net::SocketAddr>().ok()?;
    let lease_ms: u64 = text(SIDECAR_LEASE)?.trim().parse().ok()?;
    let cold_start_ms = text(SIDECAR_COLD_START).and_then(|v| v.trim().parse().ok());
    Some(Grant { upstream, lease: Duration::from_millis(lease_ms), cold_start_ms })
}

impl LeaseState {
    /// The upstream to use now, when a lease covers it.
    pub fn usable(&self, now: SystemTime) -> Option<&str> {
        let until = self.lease_until?;
        if now + LEASE_MARGIN < until {
            self.upstream.as_deref()
        } else {
            None
        }
    }

    /// Records a grant; `asked_at` is when the call was sent (so the lease never
    /// outlasts the sidecar's own view of it).
    pub fn grant(&mut self, grant: &Grant, asked_at: SystemTime) {
        self.upstream = Some(grant.upstream.clone());
        let until = asked_at + grant.lease;
        if self.lease_until.is_none_or(|u| u < until) {
            self.lease_until = Some(until);
        }
    }

    /// The sidecar says the app is not ready: forget the lease.
    pub fn revoke(&mut self) {
        self.lease_until = None;
    }

    pub fn request_started(&mut self) {
        self.started_since_report += 1;
        self.in_flight += 1;
    }

    pub fn request_finished(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// The activity report owed now, if any: (started since last report, in flight).
    /// Nothing is owed when idle, so that the lease lapses and the app can stop.
    pub fn take_report(&mut self) -> Option<(u64, u64)> {
        if self.report_pending || (self.started_since_report == 0 && self.in_flight == 0) {
            return None;
        }
        self.report_pending = true;
        Some((std::mem::take(&mut self.started_since_report), self.in_flight))
    }

    /// The report's answer arrived (or failed); `unsent` is added back when it failed.
    pub fn report_done(&mut self, unsent_started: u64) {
        self.report_pending = false;
        self.started_since_report += unsent_started;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn grant(lease_ms: u64) -> Grant {
        Grant { upstream: "127.0.0.1:10000".into(), lease: Duration::from_millis(lease_ms), cold_start_ms: None }
    }

    #[test]
    fn a_lease_is_used_until_shortly_before_it_ends() {
        let mut s = LeaseState::default();
        assert_eq!(s.usable(at(0)), None);
        s.grant(&grant(2000), at(1000));
        assert_eq!(s.usable(at(1500)), Some("127.0.0.1:10000"));
        assert_eq!(s.usable(at(2749)), Some("127.0.0.1:10000"));
        assert_eq!(s.usable(at(2750)), None);
        // A later grant extends, an earlier one never shortens.
        s.grant(&grant(2000), at(2000));
        assert_eq!(s.usable(at(3500)), Some("127.0.0.1:10000"));
        s.grant(&grant(100), at(2000));
        assert_eq!(s.usable(at(3500)), Some("127.0.0.1:10000"));
        s.revoke();
        assert_eq!(s.usable(at(2100)), None);
    }

    #[test]
    fn activity_reports() {
        let mut s = LeaseState::default();
        assert_eq!(s.take_report(), None, "idle owes nothing");
        s.request_started();
        s.request_started();
        s.request_finished();
        assert_eq!(s.take_report(), Some((2, 1)));
        assert_eq!(s.take_report(), None, "one report at a time");
        s.report_done(0);
        // A long request keeps being reported while it runs.
        assert_eq!(s.take_report(), Some((0, 1)));
        s.report_done(0);
        s.request_finished();
        assert_eq!(s.take_report(), None);
        // A failed report's count is kept for the next one.
        s.request_started();
        let (started, _) = s.take_report().unwrap();
        s.report_done(started);
        assert_eq!(s.take_report(), Some((1, 1)));
    }

    #[test]
    fn grants_are_parsed_strictly() {
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_bytes().to_vec())
        };
        let ok = headers(&[("x-wsgiproxy-upstream", "127.0.0.1:10001"), ("x-wsgiproxy-lease-ms", "2000"), ("x-wsgiproxy-cold-start-ms", "315")]);
        assert_eq!(
            parse_grant(&ok),
            Some(Grant { upstream: "127.0.0.1:10001".into(), lease: Duration::from_millis(2000), cold_start_ms: Some(315) })
        );
        assert_eq!(parse_grant(&headers(&[("x-wsgiproxy-upstream", "evil.example:80"), ("x-wsgiproxy-lease-ms", "1")])), None);
        assert_eq!(parse_grant(&headers(&[("x-wsgiproxy-upstream", "127.0.0.1:1")])), None);
    }
}
