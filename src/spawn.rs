//! The `spawn` role: makes sure the on-demand app is up before a request goes on.
//!
//! A request with a live lease goes straight through (no sidecar call); otherwise it
//! pauses while the sidecar's `/v1/ensure/{app}` answers (a long poll over a cold
//! start). The root context reports activity in the background on each tick.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use log::{debug, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use wsgiproxy_protocol::config::{Config, SpawnConfig};
use wsgiproxy_protocol::request::LocalReply;
use wsgiproxy_protocol::spawn::*;

use crate::host;
use crate::metrics::Metrics;
use crate::root::Shared;

/// How long an activity report may take (the sidecar answers at once).
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Per-worker state of the spawn role, shared by the root and request contexts.
pub struct SpawnRuntime {
    pub lease: RefCell<LeaseState>,
    /// Identifies this worker's VM to the sidecar, which tracks in-flight counts per reporter.
    pub reporter: String,
    /// Calls to the sidecar failing: logged when that begins and ends, not per request.
    health: RefCell<CallHealth>,
}

impl SpawnRuntime {
    pub fn new() -> Self {
        let id = host::random_nonce().unwrap_or_default();
        SpawnRuntime {
            // Reports are sent from the root's tick.
            lease: RefCell::new(LeaseState::new(crate::metrics::FLUSH_EVERY)),
            reporter: hex_id(&id),
            health: RefCell::new(CallHealth::default()),
        }
    }

    /// True when an activity report should go now: at most every `interval` while
    /// there is activity, and at once when the lease nears its end with activity the
    /// sidecar has not heard of. Asking does not move the timer; sending does.
    pub fn report_due(&self, now: SystemTime, interval: Duration) -> bool {
        self.lease.borrow().report_due(now, interval)
    }

    fn call_failed(&self, what: &str) {
        if self.health.borrow_mut().failed() {
            warn!("wsgiproxy spawn: {what} (logged once until the sidecar answers again)");
        } else {
            debug!("wsgiproxy spawn: {what}");
        }
    }

    fn call_answered(&self) {
        if self.health.borrow_mut().answered() {
            info!("wsgiproxy spawn: the sidecar answers again");
        }
    }
}

fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(wsgiproxy_protocol::counters::spawn::ALL);
}

fn sidecar_call(config: &SpawnConfig, path: &str, extra: &[(&str, &str)], timeout: Duration) -> Result<u32, String> {
    let mut headers: Vec<(&str, &str)> = vec![(":method", "POST"), (":path", path), (":authority", &config.sidecar_authority)];
    headers.extend_from_slice(extra);
    hostcalls::dispatch_http_call(&config.sidecar_cluster, headers, None, vec![], timeout)
        .map_err(|s| format!("cannot call the sidecar through cluster {:?}: {s:?}", config.sidecar_cluster))
}

fn call_response_header(name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten()
}

/// Sends this worker's activity report, if one is due. Called from the root's tick;
/// returns the call's token (the report's counts and time stay in the lease state).
pub fn report_activity(config: &SpawnConfig, runtime: &SpawnRuntime, metrics: &Metrics) -> Option<u32> {
    let report = runtime.lease.borrow_mut().take_report(host::now(), config.report_interval)?;
    let path = format!("/v1/activity/{}", config.app);
    let started_text = report.started.to_string();
    let in_flight_text = report.in_flight.to_string();
    let extra = [
        (SIDECAR_REPORTER, runtime.reporter.as_str()),
        (SIDECAR_STARTED, started_text.as_str()),
        (SIDECAR_IN_FLIGHT, in_flight_text.as_str()),
    ];
    match sidecar_call(config, &path, &extra, REPORT_TIMEOUT) {
        Ok(token) => {
            metrics.inc("spawn.reports");
            Some(token)
        }
        Err(e) => {
            runtime.call_failed(&e);
            runtime.lease.borrow_mut().report_answered(&ReportAnswer::Undelivered);
            None
        }
    }
}

/// The answer to the activity report in flight: renews the lease, or forgets it when
/// the app is not ready or the sidecar did not get the report.
pub fn on_report_answer(config: &SpawnConfig, runtime: &SpawnRuntime) {
    let answer = report_answer(config, &call_response_header);
    match answer {
        ReportAnswer::Undelivered => runtime.call_failed("an activity report did not reach the sidecar"),
        _ => runtime.call_answered(),
    }
    runtime.lease.borrow_mut().report_answered(&answer);
}

fn parts(shared: &Shared) -> Option<(&SpawnConfig, &SpawnRuntime)> {
    match (&shared.config, &shared.spawn) {
        (Config::Spawn(c), Some(r)) => Some((c, r)),
        _ => None,
    }
}

fn upstream_connect_failed() -> bool {
    // A header read is much cheaper than a property read: look at the details only
    // when Envoy answered 503, as it does when the upstream refuses the connection.
    let status = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok().flatten();
    if status.as_deref() != Some(b"503") {
        return false;
    }
    hostcalls::get_property(vec!["response", "code_details"]).ok().flatten().is_some_and(|details| {
        let text = String::from_utf8_lossy(&details);
        text.starts_with("upstream_reset_before_response_started") && text.contains("connection_failure")
    })
}

pub struct SpawnFilter {
    shared: Rc<Shared>,
    /// The `ensure` call this request waits for: its body and trailers wait too.
    waiting_for: Option<u32>,
    counted: bool,
    cold_start_ms: Option<u64>,
    asked_at: SystemTime,
}

impl SpawnFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        SpawnFilter { shared, waiting_for: None, counted: false, cold_start_ms: None, asked_at: SystemTime::UNIX_EPOCH }
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
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        if self.waiting_for != Some(token) {
            return;
        }
        self.waiting_for = None;
        let shared = Rc::clone(&self.shared);
        let Some((config, runtime)) = parts(&shared) else { return };
        let body = || {
            hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpCallResponseBody, 0, body_size.min(1024))
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        match ensure_answer(config, &call_response_header, &body) {
            EnsureAnswer::Granted(grant) => {
                runtime.call_answered();
                runtime.lease.borrow_mut().ensure_granted(&grant, self.asked_at, host::now());
                if let Some(ms) = grant.cold_start_ms {
                    shared.metrics.inc("spawn.cold_starts");
                    self.cold_start_ms = Some(ms);
                }
                self.go_on(&grant.upstream);
                hostcalls::resume_http_request().ok();
            }
            EnsureAnswer::Refused(reply) => {
                runtime.call_answered();
                self.unavailable(reply);
            }
            EnsureAnswer::Unreachable(reply) => {
                runtime.call_failed(&format!("the sidecar for {:?} did not answer (cluster {:?})", config.app, config.sidecar_cluster));
                self.unavailable(reply);
            }
        }
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
        // Envoy's ORIGINAL_DST cluster obeys UPSTREAM_HEADER: whatever happens next, no
        // copy the client sent survives. Every request that goes on has the role's own,
        // set by `go_on`; every other one is answered here.
        let _ = hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, UPSTREAM_HEADER, None);
        let Some((config, runtime)) = parts(&shared) else { return Action::Continue };
        shared.metrics.inc("spawn.requests");
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
            Ok(token) => {
                self.shared.metrics.inc("spawn.ensure_calls");
                self.waiting_for = Some(token);
                // The host turns this into "stop all iteration" under flow control: the
                // body and trailers wait with the headers.
                Action::Pause
            }
            Err(e) => {
                runtime.call_failed(&e);
                self.unavailable(unreachable_reply(&config.app));
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // Held by the host while the request waits; should it come anyway, it waits too.
        if self.waiting_for.is_some() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.waiting_for.is_some() {
            Action::Pause
        } else {
            Action::Continue
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
