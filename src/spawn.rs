//! The `spawn` role: makes sure the on-demand app is up before a request goes on.
//!
//! A request with a live lease goes straight through (no sidecar call); otherwise it
//! pauses while the sidecar's `/v1/ensure/{app}` answers (a long poll over a cold
//! start). The root context reports activity in the background on each tick.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use log::{debug, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use wsgiproxy_protocol::config::{Config, SpawnConfig};
use wsgiproxy_protocol::request::LocalReply;
use wsgiproxy_protocol::spawn::*;

use crate::host;
use crate::metrics::Metrics;
use crate::root::Shared;

/// Per-worker state of the spawn role, shared by the root and request contexts.
pub struct SpawnRuntime {
    pub lease: RefCell<LeaseState>,
    /// Identifies this worker's VM to the sidecar, which tracks in-flight counts per reporter.
    pub reporter: String,
    last_report: std::cell::Cell<SystemTime>,
}

impl SpawnRuntime {
    pub fn new() -> Self {
        let id = host::random_nonce().unwrap_or_default();
        SpawnRuntime {
            lease: RefCell::new(LeaseState::default()),
            reporter: hex_id(&id),
            last_report: std::cell::Cell::new(SystemTime::UNIX_EPOCH),
        }
    }

    /// True once every `interval` (ticks come more often, for the metrics).
    pub fn report_due(&self, now: SystemTime, interval: Duration) -> bool {
        let due = now.duration_since(self.last_report.get()).map_or(true, |since| since >= interval);
        if due {
            self.last_report.set(now);
        }
        due
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(&[
        "spawn.requests",
        "spawn.lease_hits",
        "spawn.ensure_calls",
        "spawn.cold_starts",
        "spawn.unavailable",
        "spawn.reports",
        "spawn.connect_failures",
    ]);
}

fn sidecar_call(config: &SpawnConfig, path: &str, extra: &[(&str, &str)], timeout: Duration) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> =
        vec![(":method", "POST"), (":path", path), (":authority", &config.sidecar_authority)];
    headers.extend_from_slice(extra);
    hostcalls::dispatch_http_call(&config.sidecar_cluster, headers, None, vec![], timeout)
        .map_err(|s| format!("cannot call the sidecar through cluster {:?}: {s:?}", config.sidecar_cluster))
}

fn call_response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten()
}

/// Sends this worker's activity report, if one is owed. Called from the root's tick.
pub fn report_activity(config: &SpawnConfig, runtime: &SpawnRuntime, metrics: &Metrics) -> Option<(u32, u64, SystemTime)> {
    let (started, in_flight) = runtime.lease.borrow_mut().take_report()?;
    let asked_at = host::now();
    let path = format!("/v1/activity/{}", config.app);
    let started_text = started.to_string();
    let in_flight_text = in_flight.to_string();
    let extra = [
        (SIDECAR_REPORTER, runtime.reporter.as_str()),
        (SIDECAR_STARTED, started_text.as_str()),
        (SIDECAR_IN_FLIGHT, in_flight_text.as_str()),
    ];
    match sidecar_call(config, &path, &extra, Duration::from_secs(5)) {
        Ok(token) => {
            metrics.inc("spawn.reports");
            Some((token, started, asked_at))
        }
        Err(e) => {
            warn!("wsgiproxy spawn: {e}");
            runtime.lease.borrow_mut().report_done(started);
            None
        }
    }
}

/// The answer to an activity report: renews the lease, or forgets it when the app is not ready.
pub fn on_report_answer(runtime: &SpawnRuntime, started: u64, asked_at: SystemTime) {
    let status = call_response_header(":status");
    let mut lease = runtime.lease.borrow_mut();
    match status.as_deref() {
        Some(b"200") => {
            lease.report_done(0);
            match parse_grant(&call_response_header) {
                Some(grant) => lease.grant(&grant, asked_at),
                None => lease.revoke(),
            }
        }
        Some(_) => {
            lease.report_done(0);
            lease.revoke();
        }
        None => {
            // The sidecar did not answer: keep the count for the next report, and stop
            // trusting the lease so that the next request asks again.
            lease.report_done(started);
            lease.revoke();
        }
    }
}

fn parts(shared: &Shared) -> Option<(&SpawnConfig, &SpawnRuntime)> {
    match (&shared.config, &shared.spawn) {
        (Config::Spawn(c), Some(r)) => Some((c, r)),
        _ => None,
    }
}

fn upstream_connect_failed() -> bool {
    hostcalls::get_property(vec!["response", "code_details"])
        .ok()
        .flatten()
        .is_some_and(|details| {
            let text = String::from_utf8_lossy(&details);
            text.starts_with("upstream_reset_before_response_started") && text.contains("connection_failure")
        })
}

pub struct SpawnFilter {
    shared: Rc<Shared>,
    counted: bool,
    cold_start_ms: Option<u64>,
    asked_at: SystemTime,
}

impl SpawnFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        SpawnFilter { shared, counted: false, cold_start_ms: None, asked_at: SystemTime::UNIX_EPOCH }
    }

    fn parts(&self) -> Option<(&SpawnConfig, &SpawnRuntime)> {
        parts(&self.shared)
    }

    fn go_on(&mut self, upstream: &str) {
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, UPSTREAM_HEADER, Some(upstream.as_bytes()));
        if let Some((_, runtime)) = self.parts() {
            runtime.lease.borrow_mut().request_started();
            self.counted = true;
        }
    }

    fn unavailable(&self, reply: LocalReply) {
        self.shared.metrics.inc("spawn.unavailable");
        debug!("wsgiproxy spawn: {} {}: {}", reply.status, reply.reason, reply.detail);
        host::send_reply(&reply);
    }
}

impl Context for SpawnFilter {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some((config, runtime)) = self.parts() else { return };
        let status = call_response_header(":status");
        let grant = match status.as_deref() {
            Some(b"200") => parse_grant(&call_response_header),
            _ => None,
        };
        if let Some(grant) = grant {
            // The sidecar granted the lease when it answered, after any cold-start wait:
            // count from then, still never later than the sidecar's own clock.
            let granted_at = self.asked_at + Duration::from_millis(grant.cold_start_ms.unwrap_or(0));
            runtime.lease.borrow_mut().grant(&grant, granted_at);
            if let Some(ms) = grant.cold_start_ms {
                self.shared.metrics.inc("spawn.cold_starts");
                self.cold_start_ms = Some(ms);
            }
            self.go_on(&grant.upstream);
            hostcalls::resume_http_request().ok();
            return;
        }
        let from_sidecar = call_response_header(SIDECAR_MARK).is_some();
        let reply = match status.filter(|_| from_sidecar) {
            None => LocalReply::new(
                503,
                "sidecar_unreachable",
                format!("the process manager for {:?} did not answer in time", config.app),
            )
            .with_header("retry-after", "1"),
            Some(code) => {
                let body = hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, body_size.min(1024))
                    .ok()
                    .flatten()
                    .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                    .unwrap_or_default();
                let retry = call_response_header("retry-after")
                    .and_then(|v| String::from_utf8(v).ok())
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()) && !v.is_empty())
                    .unwrap_or_else(|| "1".into());
                LocalReply::new(
                    503,
                    "app_unavailable",
                    format!("{:?} is not available (sidecar answered {}): {body}", config.app, String::from_utf8_lossy(&code)),
                )
                .with_header("retry-after", &retry)
            }
        };
        self.unavailable(reply);
    }

    fn on_done(&mut self) -> bool {
        if self.counted {
            if let Some((_, runtime)) = self.parts() {
                runtime.lease.borrow_mut().request_finished();
            }
            self.counted = false;
        }
        true
    }
}

impl HttpContext for SpawnFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let shared = Rc::clone(&self.shared);
        let Some((config, runtime)) = parts(&shared) else { return Action::Continue };
        shared.metrics.inc("spawn.requests");
        // Envoy's ORIGINAL_DST cluster reads this header: a client must never choose it.
        let _ = hostcalls::remove_map_value(MapType::HttpRequestHeaders, UPSTREAM_HEADER);
        let now = host::now();
        let leased = runtime.lease.borrow().usable(now).map(str::to_string);
        if let Some(upstream) = leased {
            self.shared.metrics.inc("spawn.lease_hits");
            self.go_on(&upstream);
            return Action::Continue;
        }
        self.asked_at = now;
        let path = format!("/v1/ensure/{}", config.app);
        match sidecar_call(config, &path, &[(SIDECAR_REPORTER, &runtime.reporter)], config.ensure_timeout) {
            Ok(_) => {
                self.shared.metrics.inc("spawn.ensure_calls");
                Action::Pause
            }
            Err(e) => {
                warn!("wsgiproxy spawn: {e}");
                self.unavailable(
                    LocalReply::new(503, "sidecar_unreachable", "the process manager cannot be reached").with_header("retry-after", "1"),
                );
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // The app did not accept the connection (it crashed or was stopped under us):
        // stop trusting the lease so that the next request asks the sidecar again.
        if self.counted && upstream_connect_failed() {
            if let Some((_, runtime)) = self.parts() {
                runtime.lease.borrow_mut().revoke();
                self.shared.metrics.inc("spawn.connect_failures");
            }
        }
        if let Some(ms) = self.cold_start_ms {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, COLD_START_HEADER, Some(ms.to_string().as_bytes()));
        }
        Action::Continue
    }
}
