//! One app's state machine: stopped → starting → ready → stopping → stopped, and
//! failed (with backoff after repeated failures); what counts as activity, and when
//! the app is idle.
//!
//! Pure: no tokio, no I/O, the time is passed in. `app.rs` holds it under a lock,
//! runs what it decides (starts, stops, waits) and tells waiters of each change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Ready,
    Stopping,
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Failed => "failed",
        }
    }
}

/// A failure a caller is told about: a 503 with Retry-After.
#[derive(Debug, Clone)]
pub struct Unavailable {
    pub reason: String,
    pub retry_after: Duration,
}

/// How long to wait before the next start after `failures` consecutive failures:
/// the first failure is retried at once, then 1 s, 2 s, 4 s … at most 60 s.
pub fn backoff(failures: u32) -> Duration {
    if failures < 2 {
        Duration::ZERO
    } else {
        Duration::from_secs(1u64 << (failures - 2).min(6)).min(Duration::from_secs(60))
    }
}

/// A child that stayed ready this long no longer counts earlier failures.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// A reporter silent this many leases is presumed gone (its Envoy died). A busy
/// worker reports at least once per lease (before its lease runs out).
const REPORTER_EXPIRY_LEASES: u32 = 10;
/// How long past the last lease an idle stop waits: a worker's report of a request it
/// started just before its lease stopped being usable may still be on its way.
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// How long a silent reporter still counts, for a given lease.
pub fn reporter_expiry(lease: Duration) -> Duration {
    lease * REPORTER_EXPIRY_LEASES
}

/// What the state machine needs to know of a running child (the process handle in
/// the sidecar, a stand-in in tests).
pub trait RunningChild {
    fn has_exited(&self) -> bool;
}

/// What an ensure call does next, decided under the app's lock.
#[derive(Debug)]
pub enum EnsureStep {
    /// Ready: grant a lease.
    Grant,
    /// Answer the caller with this 503.
    Refuse(Unavailable),
    /// Stopped, or failed past its back-off: begin a start and wait for it.
    Start,
    /// A start is under way: wait for it.
    JoinStart,
    /// Stopping, or exited with its crash being cleaned up: wait for the outcome.
    Wait,
}

/// A stop under way.
pub struct Stopping<C> {
    pub child: Arc<C>,
    pub generation: u64,
    pub port: Option<u16>,
}

pub struct AppState<C> {
    pub phase: Phase,
    /// Bumped at every start; stale tasks of an older start change nothing.
    pub generation: u64,
    pub port: Option<u16>,
    pub pid: Option<u32>,
    pub child: Option<Arc<C>>,
    pub last_activity: Instant,
    pub lease_until: Instant,
    /// reporter id → (requests in flight, when it last reported); only busy ones.
    pub reporters: HashMap<String, (u64, Instant)>,
    pub consecutive_failures: u32,
    pub failed_until: Instant,
    /// The generation whose start failed, and why.
    pub failure: Option<(u64, String)>,
    pub ready_since: Option<Instant>,
    pub restarts: u64,
    /// Start tasks still running (shutdown waits for them).
    pub starts_running: usize,
}

impl<C> AppState<C> {
    pub fn new(now: Instant) -> AppState<C> {
        AppState {
            phase: Phase::Stopped,
            generation: 0,
            port: None,
            pid: None,
            child: None,
            last_activity: now,
            lease_until: now,
            reporters: HashMap::new(),
            consecutive_failures: 0,
            failed_until: now,
            failure: None,
            ready_since: None,
            restarts: 0,
            starts_running: 0,
        }
    }

    /// A worker's report: requests it started since its last report, and how many it
    /// has in flight now. Requests in flight are activity, and so is the end of the
    /// last of them: idle time counts from when a worker was last busy, not from when
    /// its long request started.
    pub fn record_activity(&mut self, reporter: &str, started: u64, in_flight: u64, now: Instant, expiry: Duration) {
        let was_busy = self.reporters.get(reporter).is_some_and(|(n, _)| *n > 0);
        if started > 0 || in_flight > 0 || was_busy {
            self.last_activity = now;
        }
        if !reporter.is_empty() {
            if in_flight > 0 {
                self.reporters.insert(reporter.to_string(), (in_flight, now));
            } else {
                self.reporters.remove(reporter);
            }
        }
        self.reporters.retain(|_, (_, at)| now.duration_since(*at) < expiry);
    }

    /// True when the app may be stopped for idleness at `now`: ready, no worker
    /// reporting a request in flight, the last lease run out (plus a grace for a
    /// report still on its way), and no activity for `idle`.
    pub fn idle(&self, now: Instant, idle: Duration, expiry: Duration) -> bool {
        let busy = self.reporters.values().any(|(in_flight, at)| *in_flight > 0 && now.duration_since(*at) < expiry);
        self.phase == Phase::Ready && !busy && now >= self.lease_until + STOP_GRACE && now.duration_since(self.last_activity) >= idle
    }

    /// A lease running until `until` (a running one is never shortened); the port it
    /// points at, when the app has one.
    pub fn grant(&mut self, until: Instant) -> Option<u16> {
        let port = self.port?;
        if until > self.lease_until {
            self.lease_until = until;
        }
        Some(port)
    }

    /// Moves to starting under a new generation, and returns it.
    pub fn begin_start(&mut self) -> u64 {
        self.generation += 1;
        self.failure = None;
        self.starts_running += 1;
        self.phase = Phase::Starting;
        self.generation
    }

    /// A start task ended, whatever its outcome.
    pub fn start_wound_up(&mut self) {
        self.starts_running = self.starts_running.saturating_sub(1);
    }

    /// Records the child a start launched, unless the start is stale. True when it
    /// is current.
    pub fn adopt_child(&mut self, generation: u64, port: u16, pid: u32, child: Arc<C>) -> bool {
        let current = self.generation == generation;
        if current {
            self.port = Some(port);
            self.pid = Some(pid);
            self.child = Some(child);
        }
        current
    }

    /// The start of `generation` found its child ready. False when it is stale (shut
    /// down meanwhile: the shutdown took the child and stops it).
    pub fn became_ready(&mut self, generation: u64, now: Instant) -> bool {
        if self.generation != generation {
            return false;
        }
        self.ready_since = Some(now);
        self.phase = Phase::Ready;
        true
    }

    /// The start of `generation`, or its child, failed: failed, with a back-off once
    /// failures repeat. False when it is stale.
    pub fn fail(&mut self, generation: u64, reason: String, now: Instant) -> bool {
        if self.generation != generation {
            return false;
        }
        self.consecutive_failures += 1;
        self.failed_until = now + backoff(self.consecutive_failures);
        self.failure = Some((generation, reason));
        self.child = None;
        self.pid = None;
        self.port = None;
        self.phase = Phase::Failed;
        true
    }

    /// True while `generation` is the current one and ready (a child exiting then
    /// has crashed; otherwise it was stopped on purpose).
    pub fn is_ready_as(&self, generation: u64) -> bool {
        self.generation == generation && self.phase == Phase::Ready
    }

    /// Counts a crash of the ready child of `generation` (its cleanup done): a child
    /// that stayed healthy long enough forgets earlier failures. False when it is no
    /// longer current and ready.
    pub fn count_crash(&mut self, generation: u64, now: Instant) -> bool {
        if !self.is_ready_as(generation) {
            return false;
        }
        if self.ready_since.is_some_and(|t| now.duration_since(t) > HEALTHY_AFTER) {
            self.consecutive_failures = 0;
        }
        self.restarts += 1;
        true
    }

    /// Moves a ready app to stopping; what to stop, if anything.
    pub fn begin_stop(&mut self) -> Option<Stopping<C>> {
        if self.phase != Phase::Ready {
            return None;
        }
        let child = self.child.clone()?;
        let stopping = Stopping { child, generation: self.generation, port: self.port };
        self.phase = Phase::Stopping;
        Some(stopping)
    }

    /// The stop of `generation` is done: stopped, failures forgotten. False when
    /// something else happened meanwhile.
    pub fn stopped(&mut self, generation: u64) -> bool {
        if self.generation != generation || self.phase != Phase::Stopping {
            return false;
        }
        self.child = None;
        self.pid = None;
        self.port = None;
        self.consecutive_failures = 0;
        self.phase = Phase::Stopped;
        true
    }

    /// At shutdown: a start in progress is abandoned (its task kills what it
    /// started); the child and port left, to stop.
    pub fn abandon(&mut self) -> (Option<Arc<C>>, Option<u16>) {
        self.generation += 1;
        (self.child.take(), self.port.take())
    }
}

impl<C: RunningChild> AppState<C> {
    /// True when the child has exited (a crash whose cleanup is under way).
    pub fn exited(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.has_exited())
    }

    /// An ensure call at `now`, which counts as activity. `joined`: the start this
    /// caller is waiting on, whose failure is this caller's answer.
    pub fn on_ensure(&mut self, joined: Option<u64>, now: Instant) -> EnsureStep {
        self.last_activity = now;
        if let (Some(gen), Some((failed_gen, reason))) = (joined, &self.failure) {
            if gen == *failed_gen {
                return EnsureStep::Refuse(Unavailable {
                    reason: reason.clone(),
                    retry_after: backoff(self.consecutive_failures).max(Duration::from_secs(1)),
                });
            }
        }
        match self.phase {
            // Exited, and its crash is being cleaned up: wait for the outcome
            // rather than grant a lease on a closed port.
            Phase::Ready if self.exited() => EnsureStep::Wait,
            Phase::Ready => EnsureStep::Grant,
            Phase::Failed if now < self.failed_until => {
                let reason = self.failure.as_ref().map(|(_, r)| r.clone()).unwrap_or_default();
                EnsureStep::Refuse(Unavailable {
                    reason: format!("{reason} (retrying after a back-off)"),
                    retry_after: (self.failed_until - now).max(Duration::from_secs(1)),
                })
            }
            Phase::Stopped | Phase::Failed => EnsureStep::Start,
            Phase::Starting => EnsureStep::JoinStart,
            Phase::Stopping => EnsureStep::Wait,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(8));
        assert_eq!(backoff(50), Duration::from_secs(60));
    }

    const IDLE: Duration = Duration::from_secs(5);
    const EXPIRY: Duration = Duration::from_secs(20);

    /// A stand-in child: exited or not.
    struct FakeChild(bool);

    impl RunningChild for FakeChild {
        fn has_exited(&self) -> bool {
            self.0
        }
    }

    fn ready_at(t0: Instant) -> AppState<FakeChild> {
        let mut inner = AppState::new(t0);
        inner.phase = Phase::Ready;
        inner
    }

    #[test]
    fn requests_in_flight_are_activity_and_so_is_their_end() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut inner = ready_at(t0);
        // A long request: started at 0, reported in flight until 30, done at 31.
        inner.record_activity("w1", 1, 1, s(0), EXPIRY);
        for t in (1..=30).step_by(3) {
            inner.record_activity("w1", 0, 1, s(t), EXPIRY);
            assert!(!inner.idle(s(t), IDLE, EXPIRY), "busy at {t}");
        }
        inner.record_activity("w1", 0, 0, s(31), EXPIRY);
        assert!(inner.reporters.is_empty(), "a worker with nothing in flight is not busy");
        // Idle time counts from the end of the request, not from its start.
        assert!(!inner.idle(s(35), IDLE, EXPIRY));
        assert!(inner.idle(s(36), IDLE, EXPIRY));
    }

    #[test]
    fn a_silent_busy_reporter_expires_and_the_lease_gets_a_grace() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut inner = ready_at(t0);
        inner.record_activity("gone", 1, 1, s(0), EXPIRY);
        assert!(!inner.idle(s(19), IDLE, EXPIRY));
        assert!(inner.idle(s(20), IDLE, EXPIRY), "its Envoy died: not busy for ever");
        inner.lease_until = s(30);
        assert!(!inner.idle(s(30), IDLE, EXPIRY), "a report of a request sent late in the lease may be on its way");
        assert!(inner.idle(s(30) + STOP_GRACE, IDLE, EXPIRY));
        inner.phase = Phase::Stopped;
        assert!(!inner.idle(s(60), IDLE, EXPIRY));
    }

    #[test]
    fn a_failed_start_is_the_answer_of_those_who_waited_for_it_then_backs_off() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut state = AppState::<FakeChild>::new(t0);
        assert!(matches!(state.on_ensure(None, s(0)), EnsureStep::Start));
        let first = state.begin_start();
        assert!(matches!(state.on_ensure(Some(first), s(0)), EnsureStep::JoinStart));
        assert!(state.fail(first, "exited".into(), s(1)));
        // The first failure is retried at once, but not for whoever waited for it.
        match state.on_ensure(Some(first), s(1)) {
            EnsureStep::Refuse(u) => assert_eq!((u.reason.as_str(), u.retry_after), ("exited", Duration::from_secs(1))),
            step => panic!("{step:?}"),
        }
        assert!(matches!(state.on_ensure(None, s(1)), EnsureStep::Start));
        let second = state.begin_start();
        assert!(state.fail(second, "exited again".into(), s(2)));
        // The second one backs off for a second.
        match state.on_ensure(None, s(2)) {
            EnsureStep::Refuse(u) => assert_eq!(u.reason, "exited again (retrying after a back-off)"),
            step => panic!("{step:?}"),
        }
        assert!(matches!(state.on_ensure(None, s(3)), EnsureStep::Start));
        assert!(!state.fail(first, "a stale start".into(), s(3)), "a stale start changes nothing");
        assert_eq!(state.consecutive_failures, 2);
    }

    #[test]
    fn an_exited_ready_child_is_waited_for_and_a_healthy_one_forgets_failures() {
        let t0 = Instant::now();
        let mut state = AppState::new(t0);
        let generation = state.begin_start();
        state.consecutive_failures = 3;
        assert!(state.adopt_child(generation, 10000, 42, Arc::new(FakeChild(true))));
        assert!(state.became_ready(generation, t0));
        assert!(matches!(state.on_ensure(None, t0), EnsureStep::Wait), "no lease on a closed port");
        assert!(state.count_crash(generation, t0 + HEALTHY_AFTER + Duration::from_secs(1)));
        assert_eq!((state.consecutive_failures, state.restarts), (0, 1));
    }

    #[test]
    fn a_stop_ends_in_stopped_with_failures_forgotten_and_a_lease_is_never_shortened() {
        let t0 = Instant::now();
        let mut state = AppState::new(t0);
        let generation = state.begin_start();
        assert!(state.adopt_child(generation, 10000, 42, Arc::new(FakeChild(false))));
        assert!(state.became_ready(generation, t0));
        assert_eq!(state.grant(t0 + Duration::from_secs(2)), Some(10000));
        assert_eq!(state.grant(t0 + Duration::from_secs(1)), Some(10000));
        assert_eq!(state.lease_until, t0 + Duration::from_secs(2));
        state.consecutive_failures = 1;
        let stopping = state.begin_stop().unwrap();
        assert_eq!((stopping.generation, stopping.port), (generation, Some(10000)));
        assert!(state.begin_stop().is_none(), "already stopping");
        assert!(state.stopped(generation));
        assert_eq!((state.phase, state.consecutive_failures, state.port), (Phase::Stopped, 0, None));
    }
}
