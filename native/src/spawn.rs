//! The `spawn` role's stream filter: the shared driver
//! (`wsgiproxy_protocol::driver::spawn`) over the ABI, with one lease per
//! configuration, shared by Envoy's workers (the Wasm filter keeps one per worker).
//! Activity reports go from the configuration's context on Envoy's main thread,
//! woken every [`TICK`] by a module thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use wsgiproxy_protocol::config::{Config, SpawnConfig};
use wsgiproxy_protocol::driver::spawn::{on_report_answer, send_report, LeaseHolder, SpawnStream};
use wsgiproxy_protocol::spawn::{reporter_id, CallHealth, LeaseState};

use crate::abi::{BodyStatus, CalloutResponse, ConfigHandle, HeadersStatus, HttpFilter, Scheduler, Stream, TrailersStatus};
use crate::host::{self, spawn_status, NativeHost, NativeReportHost};
use crate::shared::Shared;

/// How often the configuration looks for a report to send.
pub const TICK: Duration = Duration::from_millis(250);

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

/// Each call holds its lock for the closure alone: the driver makes no host call inside.
impl LeaseHolder for SpawnRuntime {
    fn with_lease<R>(&self, f: impl FnOnce(&mut LeaseState) -> R) -> R {
        f(&mut lock(&self.lease))
    }

    fn with_health<R>(&self, f: impl FnOnce(&mut CallHealth) -> R) -> R {
        f(&mut lock(&self.health))
    }

    fn reporter(&self) -> &str {
        &self.reporter
    }
}

impl SpawnRuntime {
    pub fn new() -> Self {
        SpawnRuntime {
            lease: Mutex::new(LeaseState::new(TICK)),
            reporter: reporter_id(&host::random_nonce().unwrap_or_default()),
            health: Mutex::new(CallHealth::default()),
            report: Mutex::new(Report::Idle),
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
        let sent = send_report(config, self, &mut NativeReportHost::new(handle, shared));
        let mut state = lock(&self.report);
        match sent {
            // Still `Sending` unless the answer already came (then it is `Idle`).
            Some(id) if *state == Report::Sending => *state = Report::InFlight(id),
            Some(_) => {}
            // Nothing was due, or it could not be sent (and counts as undelivered).
            None => *state = Report::Idle,
        }
    }

    /// The answer to a callout of the configuration: when it is the activity report's,
    /// renews the lease, or forgets it.
    pub fn report_answered(
        &self,
        config: &SpawnConfig,
        handle: &ConfigHandle,
        shared: &Shared,
        id: u64,
        response: Option<CalloutResponse>,
    ) {
        {
            let mut state = lock(&self.report);
            // One report at a time: while `Sending`, the answer is that report's.
            if !matches!(*state, Report::Sending) && *state != Report::InFlight(id) {
                return;
            }
            *state = Report::Idle;
        }
        on_report_answer(config, self, &mut NativeReportHost::new(handle, shared), response.as_ref());
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
        Ticker::every(every, move || scheduler.commit(0))
    }

    /// A module thread that calls `tick` every `every`, until dropped.
    pub fn every(every: Duration, mut tick: impl FnMut() + Send + 'static) -> Option<Ticker> {
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
                tick();
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

pub struct SpawnFilter {
    shared: Arc<Shared>,
    runtime: Arc<SpawnRuntime>,
    stream: SpawnStream,
}

impl SpawnFilter {
    pub fn new(shared: Arc<Shared>, runtime: Arc<SpawnRuntime>) -> Self {
        SpawnFilter { shared, runtime, stream: SpawnStream::default() }
    }
}

impl Drop for SpawnFilter {
    fn drop(&mut self) {
        self.stream.on_done(self.runtime.as_ref());
    }
}

impl HttpFilter for SpawnFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::Spawn(config) = &self.shared.config else { return HeadersStatus::Continue };
        let host = &mut NativeHost::new(stream, &self.shared);
        spawn_status(self.stream.on_request_headers(config, self.runtime.as_ref(), host))
    }

    fn on_request_body(&mut self, _stream: &Stream, _end_of_stream: bool) -> BodyStatus {
        if self.stream.holds_request() {
            BodyStatus::StopIterationAndWatermark
        } else {
            BodyStatus::Continue
        }
    }

    fn on_request_trailers(&mut self, _stream: &Stream) -> TrailersStatus {
        if self.stream.holds_request() {
            TrailersStatus::StopIteration
        } else {
            TrailersStatus::Continue
        }
    }

    fn on_callout_done(&mut self, stream: &Stream, id: u64, response: Option<CalloutResponse>) {
        let Config::Spawn(config) = &self.shared.config else { return };
        let host = &mut NativeHost::new(stream, &self.shared);
        self.stream.on_callout_done(config, self.runtime.as_ref(), host, id, response.as_ref());
    }

    fn on_response_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        self.stream.on_response_headers(self.runtime.as_ref(), &mut NativeHost::new(stream, &self.shared));
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
