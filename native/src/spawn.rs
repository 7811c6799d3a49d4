//! The `spawn` role (as `src/spawn.rs` of the Wasm filter): a request with a live
//! lease goes straight through; otherwise it waits while the sidecar's
//! `/v1/ensure/{app}` answers. Activity reports go from the configuration's context
//! on Envoy's main thread, woken every [`TICK`] by a module thread; one lease per
//! configuration, shared by Envoy's workers (the Wasm filter keeps one per worker).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use wsgiproxy_protocol::config::{Config, SpawnConfig};
use wsgiproxy_protocol::request::LocalReply;
use wsgiproxy_protocol::spawn::*;

use crate::abi::{
    log, Attribute, BodyStatus, CalloutResponse, ConfigHandle, HeaderMap, HeadersStatus, HttpFilter, LogLevel, Scheduler, Stream,
    TrailersStatus,
};
use crate::filter::Shared;
use crate::host;

/// How often the configuration looks for a report to send.
pub const TICK: Duration = Duration::from_millis(250);
/// How long an activity report may take (the sidecar answers at once).
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn metric_names() -> Vec<String> {
    wsgiproxy_protocol::counters::spawn::ALL.iter().map(|n| n.to_string()).collect()
}

/// The lease and activity counts of one configuration, shared across workers.
pub struct SpawnRuntime {
    lease: Mutex<LeaseState>,
    /// Identifies this configuration to the sidecar, which counts in-flight requests per reporter.
    reporter: String,
    /// Calls to the sidecar failing: logged when that begins and ends, not per request.
    health: Mutex<CallHealth>,
    /// The activity report being sent or in flight.
    report: Mutex<Report>,
}

/// Where the configuration's activity report is (all on Envoy's main thread).
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Idle,
    /// Handed to Envoy, which has not given its id yet (it may answer before it does).
    Sending,
    InFlight(u64),
}

/// Locks a mutex, even one a panic left poisoned (the state stays consistent: every
/// update is one call on the protocol crate's types).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SpawnRuntime {
    pub fn new() -> Self {
        let id = host::random_nonce().unwrap_or_default();
        SpawnRuntime {
            lease: Mutex::new(LeaseState::new(TICK)),
            reporter: id.iter().map(|b| format!("{b:02x}")).collect(),
            health: Mutex::new(CallHealth::default()),
            report: Mutex::new(Report::Idle),
        }
    }

    fn call_failed(&self, what: &str) {
        if lock(&self.health).failed() {
            log(LogLevel::Warn, &format!("wsgiproxy spawn: {what} (logged once until the sidecar answers again)"));
        } else {
            host::debug(|| format!("wsgiproxy spawn: {what}"));
        }
    }

    fn call_answered(&self) {
        if lock(&self.health).answered() {
            log(LogLevel::Info, "wsgiproxy spawn: the sidecar answers again");
        }
    }

    /// On each tick: sends the activity report, if one is due and none is in flight.
    /// No lock is held while Envoy makes the call, which may answer before it returns.
    pub fn tick(&self, config: &SpawnConfig, handle: &ConfigHandle, shared: &Shared) {
        {
            let mut state = lock(&self.report);
            if *state != Report::Idle {
                return;
            }
            *state = Report::Sending;
        }
        let Some(report) = lock(&self.lease).take_report(SystemTime::now(), config.report_interval) else {
            *lock(&self.report) = Report::Idle;
            return;
        };
        let path = format!("/v1/activity/{}", config.app);
        let (started, in_flight_now) = (report.started.to_string(), report.in_flight.to_string());
        let headers = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", config.sidecar_authority.as_str()),
            (SIDECAR_REPORTER, self.reporter.as_str()),
            (SIDECAR_STARTED, started.as_str()),
            (SIDECAR_IN_FLIGHT, in_flight_now.as_str()),
        ];
        let sent = handle.http_callout(&config.sidecar_cluster, &headers, REPORT_TIMEOUT);
        let mut state = lock(&self.report);
        match sent {
            Ok(id) => {
                shared.metrics.inc_config(handle, "spawn.reports");
                // Still `Sending` unless the answer already came (then it is `Idle`).
                if *state == Report::Sending {
                    *state = Report::InFlight(id);
                }
            }
            Err(why) => {
                *state = Report::Idle;
                drop(state);
                self.call_failed(&format!("cannot call the sidecar through cluster {:?}: {why}", config.sidecar_cluster));
                lock(&self.lease).report_answered(&ReportAnswer::Undelivered);
            }
        }
    }

    /// The answer to the activity report in flight: renews the lease, or forgets it.
    pub fn report_answered(&self, config: &SpawnConfig, id: u64, response: Option<CalloutResponse>) {
        {
            let mut state = lock(&self.report);
            // One report at a time: while `Sending`, the answer is that report's.
            if !matches!(*state, Report::Sending) && *state != Report::InFlight(id) {
                return;
            }
            *state = Report::Idle;
        }
        let answer = match &response {
            Some(r) => report_answer(config, &|name| r.header(name)),
            None => ReportAnswer::Undelivered,
        };
        match answer {
            ReportAnswer::Undelivered => self.call_failed("an activity report did not reach the sidecar"),
            _ => self.call_answered(),
        }
        lock(&self.lease).report_answered(&answer);
    }
}

/// A module thread that wakes the configuration every `every`; woken, stopped and
/// joined at once when the configuration goes (Envoy may drop it on a worker thread,
/// which must not wait for a sleep to end).
pub struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    pub fn start(scheduler: Scheduler, every: Duration) -> Option<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wsgiproxy-tick".into())
            .spawn(move || loop {
                let due = std::time::Instant::now() + every;
                // A park can end early (an unpark, or spuriously): sleep out the tick.
                while let Some(left) = due.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) {
                    if stopped.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::park_timeout(left);
                }
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                scheduler.commit(0);
            })
            .ok()?;
        Some(Ticker { stop, thread: Some(thread) })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn upstream_connect_failed(stream: &Stream) -> bool {
    // Only when Envoy answered 503, as it does when the upstream refuses the connection.
    let status = stream.headers(HeaderMap::Response).into_iter().find(|(n, _)| n == ":status").map(|(_, v)| v);
    if status.as_deref() != Some(b"503") {
        return false;
    }
    stream.attribute_bytes(Attribute::ResponseCodeDetails).is_some_and(|details| {
        let text = String::from_utf8_lossy(&details);
        text.starts_with("upstream_reset_before_response_started") && text.contains("connection_failure")
    })
}

pub struct SpawnFilter {
    shared: Arc<Shared>,
    runtime: Arc<SpawnRuntime>,
    /// The `ensure` callout this request waits for: its body and trailers wait too.
    waiting_for: Option<u64>,
    counted: bool,
    cold_start_ms: Option<u64>,
    asked_at: SystemTime,
}

impl SpawnFilter {
    pub fn new(shared: Arc<Shared>, runtime: Arc<SpawnRuntime>) -> Self {
        SpawnFilter { shared, runtime, waiting_for: None, counted: false, cold_start_ms: None, asked_at: SystemTime::UNIX_EPOCH }
    }

    fn config(&self) -> Option<&SpawnConfig> {
        match &self.shared.config {
            Config::Spawn(c) => Some(c),
            _ => None,
        }
    }

    fn go_on(&mut self, stream: &Stream, upstream: &str) {
        // Envoy's ORIGINAL_DST cluster reads this header: only the role ever sets it.
        stream.set_header(HeaderMap::Request, UPSTREAM_HEADER, upstream.as_bytes());
        lock(&self.runtime.lease).request_started();
        self.counted = true;
    }

    fn unavailable(&self, stream: &Stream, reply: &LocalReply) -> HeadersStatus {
        self.shared.metrics.inc(stream, "spawn.unavailable");
        host::debug(|| format!("wsgiproxy spawn: {} {}: {}", reply.status, reply.reason, reply.detail));
        host::send_reply(stream, reply);
        HeadersStatus::StopIteration
    }
}

impl Drop for SpawnFilter {
    fn drop(&mut self) {
        if self.counted {
            lock(&self.runtime.lease).request_finished();
        }
    }
}

impl HttpFilter for SpawnFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        // Envoy's ORIGINAL_DST cluster obeys this header: whatever happens next, no copy
        // the client sent survives (a request that goes on gets the role's own).
        stream.remove_header(HeaderMap::Request, UPSTREAM_HEADER);
        let Some(config) = self.config() else { return HeadersStatus::Continue };
        let (app, cluster, authority, timeout) =
            (config.app.clone(), config.sidecar_cluster.clone(), config.sidecar_authority.clone(), config.ensure_timeout);
        self.shared.metrics.inc(stream, "spawn.requests");
        let now = SystemTime::now();
        let leased = lock(&self.runtime.lease).usable(now).map(str::to_string);
        if let Some(upstream) = leased {
            self.shared.metrics.inc(stream, "spawn.lease_hits");
            self.go_on(stream, &upstream);
            return HeadersStatus::Continue;
        }
        self.asked_at = now;
        let path = format!("/v1/ensure/{app}");
        let headers = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", authority.as_str()),
            (SIDECAR_REPORTER, self.runtime.reporter.as_str()),
        ];
        match stream.http_callout(&cluster, &headers, timeout) {
            Ok(id) => {
                self.shared.metrics.inc(stream, "spawn.ensure_calls");
                self.waiting_for = Some(id);
                // The whole request waits, body and trailers included (Envoy holds them
                // under flow control): nothing may reach the router before `go_on`.
                HeadersStatus::StopAllIterationAndWatermark
            }
            Err(why) => {
                self.runtime.call_failed(&format!("cannot call the sidecar through cluster {cluster:?}: {why}"));
                self.unavailable(stream, &unreachable_reply(&app))
            }
        }
    }

    fn on_request_body(&mut self, _stream: &Stream, _end_of_stream: bool) -> BodyStatus {
        if self.waiting_for.is_some() {
            BodyStatus::StopIterationAndWatermark
        } else {
            BodyStatus::Continue
        }
    }

    fn on_request_trailers(&mut self, _stream: &Stream) -> TrailersStatus {
        if self.waiting_for.is_some() {
            TrailersStatus::StopIteration
        } else {
            TrailersStatus::Continue
        }
    }

    fn on_callout_done(&mut self, stream: &Stream, id: u64, response: Option<CalloutResponse>) {
        // Only the answer this request waits for (a callout Envoy refused at once may
        // still be answered: the request was refused already).
        if self.waiting_for != Some(id) {
            return;
        }
        self.waiting_for = None;
        let Some(config) = self.config() else { return };
        let (app, cluster) = (config.app.clone(), config.sidecar_cluster.clone());
        let answer = match &response {
            Some(r) => ensure_answer(config, &|name| r.header(name), &|| r.body.clone()),
            None => EnsureAnswer::Unreachable(unreachable_reply(&app)),
        };
        match answer {
            EnsureAnswer::Granted(grant) => {
                self.runtime.call_answered();
                lock(&self.runtime.lease).ensure_granted(&grant, self.asked_at, SystemTime::now());
                if let Some(ms) = grant.cold_start_ms {
                    self.shared.metrics.inc(stream, "spawn.cold_starts");
                    self.cold_start_ms = Some(ms);
                }
                self.go_on(stream, &grant.upstream);
                stream.continue_decoding();
            }
            EnsureAnswer::Refused(reply) => {
                self.runtime.call_answered();
                self.unavailable(stream, &reply);
            }
            EnsureAnswer::Unreachable(reply) => {
                self.runtime.call_failed(&format!("the sidecar for {app:?} did not answer (cluster {cluster:?})"));
                self.unavailable(stream, &reply);
            }
        }
    }

    fn on_response_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        // The app did not accept the connection (it crashed or was stopped under us):
        // stop trusting the lease so that the next request asks the sidecar again.
        if self.counted && upstream_connect_failed(stream) {
            lock(&self.runtime.lease).revoke();
            self.shared.metrics.inc(stream, "spawn.connect_failures");
        }
        if let Some(ms) = self.cold_start_ms {
            stream.set_header(HeaderMap::Response, COLD_START_HEADER, ms.to_string().as_bytes());
        }
        HeadersStatus::Continue
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_ticker_stops_at_once_in_the_middle_of_a_tick() {
        // The stand-in Envoy's scheduler (abi/tests.rs).
        let scheduler = ConfigHandle(std::ptr::null_mut()).scheduler().unwrap();
        let ticker = Ticker::start(scheduler, Duration::from_secs(60)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let began = std::time::Instant::now();
        drop(ticker);
        // It used to sleep out the tick: a worker dropping the configuration waited.
        assert!(began.elapsed() < Duration::from_secs(5), "the ticker took {:?} to stop", began.elapsed());
    }
}
