//! One app's state machine: stopped → starting → ready → stopping → stopped, or
//! ready → pausing → paused → starting (a resume) → ready, and failed (with backoff
//! after repeated failures); what counts as activity, and when the app is idle.
//! The same for every kind of workload (`workload.rs`).
//!
//! Pure: no tokio, no I/O, the time is passed in. `app.rs` holds it under a lock,
//! runs what it decides (starts, stops, waits) and tells waiters of each change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Stopped,
    Starting,
    Ready,
    Stopping,
    Pausing,
    Paused,
    Failed,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Stopped => "stopped",
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Pausing => "pausing",
            Phase::Paused => "paused",
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

/// What the state machine needs to know of a running child (a workload's instance
/// in the sidecar, a stand-in in tests).
pub trait RunningChild {
    fn has_exited(&self) -> bool;
    /// Started by the sidecar, which may then stop or pause it (a container someone
    /// else started is used, never stopped).
    fn is_ours(&self) -> bool;
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
    /// Stopping or pausing, or exited with its crash being cleaned up: wait for the outcome.
    Wait,
}

/// A stop (or pause) under way.
pub struct Stopping<C: ?Sized> {
    pub child: Arc<C>,
    pub generation: u64,
}

pub struct AppState<C: ?Sized> {
    pub phase: Phase,
    /// Bumped at every start (and resume); stale tasks of an older one change nothing.
    pub generation: u64,
    /// Where the child answers.
    pub upstream: Option<SocketAddr>,
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

impl<C: ?Sized> AppState<C> {
    pub fn new(now: Instant) -> AppState<C> {
        AppState {
            phase: Phase::Stopped,
            generation: 0,
            upstream: None,
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

    /// A lease running until `until` (a running one is never shortened); the
    /// address it points at, when the app has one.
    pub fn grant(&mut self, until: Instant) -> Option<SocketAddr> {
        let upstream = self.upstream?;
        if until > self.lease_until {
            self.lease_until = until;
        }
        Some(upstream)
    }

    /// Moves to starting under a new generation, and returns it, with the paused
    /// child to resume when the app was paused.
    pub fn begin_start(&mut self) -> (u64, Option<Arc<C>>) {
        let paused = if self.phase == Phase::Paused { self.child.clone() } else { None };
        self.generation += 1;
        self.failure = None;
        self.starts_running += 1;
        self.phase = Phase::Starting;
        (self.generation, paused)
    }

    /// Takes over a paused child an earlier run of the sidecar left (its idleness
    /// counted from now).
    pub fn adopt_paused(&mut self, upstream: SocketAddr, child: Arc<C>, now: Instant) {
        self.generation += 1;
        self.upstream = Some(upstream);
        self.child = Some(child);
        self.last_activity = now;
        self.phase = Phase::Paused;
    }

    /// A start task ended, whatever its outcome.
    pub fn start_wound_up(&mut self) {
        self.starts_running = self.starts_running.saturating_sub(1);
    }

    /// Records the child a start launched, unless the start is stale. True when it
    /// is current.
    pub fn adopt_child(&mut self, generation: u64, upstream: SocketAddr, child: Arc<C>) -> bool {
        let current = self.generation == generation;
        if current {
            self.upstream = Some(upstream);
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
        self.upstream = None;
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

    /// Moves a ready app to `to` (stopping or pausing); what to stop or pause, if anything.
    fn leave_ready(&mut self, to: Phase) -> Option<Stopping<C>> {
        if self.phase != Phase::Ready {
            return None;
        }
        let child = self.child.clone()?;
        self.phase = to;
        Some(Stopping { child, generation: self.generation })
    }

    /// Moves a ready app to stopping; what to stop, if anything.
    pub fn begin_stop(&mut self) -> Option<Stopping<C>> {
        self.leave_ready(Phase::Stopping)
    }

    /// Moves a ready app to pausing; what to pause, if anything.
    pub fn begin_pause(&mut self) -> Option<Stopping<C>> {
        self.leave_ready(Phase::Pausing)
    }

    /// The stop of `generation` is done: stopped, failures forgotten. False when
    /// something else happened meanwhile.
    pub fn stopped(&mut self, generation: u64) -> bool {
        if self.generation != generation || self.phase != Phase::Stopping {
            return false;
        }
        self.child = None;
        self.upstream = None;
        self.consecutive_failures = 0;
        self.phase = Phase::Stopped;
        true
    }

    /// The pause of `generation` is done: paused, child and address kept.
    pub fn paused(&mut self, generation: u64) -> bool {
        if self.generation != generation || self.phase != Phase::Pausing {
            return false;
        }
        self.consecutive_failures = 0;
        self.phase = Phase::Paused;
        true
    }

    /// The pause of `generation` failed: ready again, idle from `now` on (the next
    /// try is an idle period away).
    pub fn pause_failed(&mut self, generation: u64, now: Instant) -> bool {
        if self.generation != generation || self.phase != Phase::Pausing {
            return false;
        }
        self.last_activity = now;
        self.phase = Phase::Ready;
        true
    }

    /// At shutdown: a start in progress is abandoned (its task kills what it
    /// started); the child left, to stop.
    pub fn abandon(&mut self) -> Option<Arc<C>> {
        self.generation += 1;
        self.upstream = None;
        self.child.take()
    }
}

impl<C: RunningChild + ?Sized> AppState<C> {
    /// True when the child has exited (a crash whose cleanup is under way).
    pub fn exited(&self) -> bool {
        self.child.as_ref().is_some_and(|c| c.has_exited())
    }

    /// True when the app may be stopped (or paused) for idleness at `now`: ready,
    /// its child the sidecar's own, no worker reporting a request in flight, the
    /// last lease run out (plus a grace for a report still on its way), and no
    /// activity for `idle`.
    pub fn idle(&self, now: Instant, idle: Duration, expiry: Duration) -> bool {
        let busy = self.reporters.values().any(|(in_flight, at)| *in_flight > 0 && now.duration_since(*at) < expiry);
        let ours = self.child.as_ref().is_some_and(|c| c.is_ours());
        self.phase == Phase::Ready
            && ours
            && !busy
            && now >= self.lease_until + STOP_GRACE
            && now.duration_since(self.last_activity) >= idle
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
            Phase::Stopped | Phase::Failed | Phase::Paused => EnsureStep::Start,
            Phase::Starting => EnsureStep::JoinStart,
            Phase::Stopping | Phase::Pausing => EnsureStep::Wait,
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

    /// A stand-in child: exited or not, the sidecar's or not.
    struct FakeChild {
        exited: bool,
        ours: bool,
    }

    impl RunningChild for FakeChild {
        fn has_exited(&self) -> bool {
            self.exited
        }

        fn is_ours(&self) -> bool {
            self.ours
        }
    }

    fn running() -> Arc<FakeChild> {
        Arc::new(FakeChild { exited: false, ours: true })
    }

    fn address() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 10000))
    }

    fn ready_at(t0: Instant) -> AppState<FakeChild> {
        let mut inner = AppState::new(t0);
        inner.phase = Phase::Ready;
        inner.child = Some(running());
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
        let (first, _) = state.begin_start();
        assert!(matches!(state.on_ensure(Some(first), s(0)), EnsureStep::JoinStart));
        assert!(state.fail(first, "exited".into(), s(1)));
        // The first failure is retried at once, but not for whoever waited for it.
        match state.on_ensure(Some(first), s(1)) {
            EnsureStep::Refuse(u) => assert_eq!((u.reason.as_str(), u.retry_after), ("exited", Duration::from_secs(1))),
            step => panic!("{step:?}"),
        }
        assert!(matches!(state.on_ensure(None, s(1)), EnsureStep::Start));
        let (second, _) = state.begin_start();
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
        let (generation, _) = state.begin_start();
        state.consecutive_failures = 3;
        assert!(state.adopt_child(generation, address(), Arc::new(FakeChild { exited: true, ours: true })));
        assert!(state.became_ready(generation, t0));
        assert!(matches!(state.on_ensure(None, t0), EnsureStep::Wait), "no lease on a closed port");
        assert!(state.count_crash(generation, t0 + HEALTHY_AFTER + Duration::from_secs(1)));
        assert_eq!((state.consecutive_failures, state.restarts), (0, 1));
    }

    #[test]
    fn a_stop_ends_in_stopped_with_failures_forgotten_and_a_lease_is_never_shortened() {
        let t0 = Instant::now();
        let mut state = AppState::new(t0);
        let (generation, _) = state.begin_start();
        assert!(state.adopt_child(generation, address(), running()));
        assert!(state.became_ready(generation, t0));
        assert_eq!(state.grant(t0 + Duration::from_secs(2)), Some(address()));
        assert_eq!(state.grant(t0 + Duration::from_secs(1)), Some(address()));
        assert_eq!(state.lease_until, t0 + Duration::from_secs(2));
        state.consecutive_failures = 1;
        let stopping = state.begin_stop().unwrap();
        assert_eq!(stopping.generation, generation);
        assert!(state.begin_stop().is_none(), "already stopping");
        assert!(state.stopped(generation));
        assert_eq!((state.phase, state.consecutive_failures, state.upstream), (Phase::Stopped, 0, None));
    }

    #[test]
    fn a_paused_app_is_resumed_by_the_next_request_on_the_same_address() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut state = ready_at(t0);
        state.upstream = Some(address());
        let generation = state.generation;
        assert!(state.idle(s(10), IDLE, EXPIRY));
        let pausing = state.begin_pause().unwrap();
        assert_eq!(state.phase, Phase::Pausing);
        assert!(matches!(state.on_ensure(None, s(10)), EnsureStep::Wait), "a request during the pause waits for it");
        assert!(state.paused(pausing.generation));
        assert!(!state.idle(s(60), IDLE, EXPIRY), "a paused app is not stopped again");
        assert!(matches!(state.on_ensure(None, s(61)), EnsureStep::Start));
        let (resume, paused) = state.begin_start();
        assert!(resume > generation);
        assert!(paused.is_some(), "the paused child is the one to resume");
        assert_eq!(state.upstream, Some(address()), "it keeps its address");
        // A pause that failed leaves the app ready, idle counted afresh.
        let mut state = ready_at(t0);
        let pausing = state.begin_pause().unwrap();
        assert!(state.pause_failed(pausing.generation, s(20)));
        assert_eq!(state.phase, Phase::Ready);
        assert!(!state.idle(s(24), IDLE, EXPIRY));
        assert!(state.idle(s(25), IDLE, EXPIRY));
    }

    #[test]
    fn a_child_the_sidecar_did_not_start_is_never_idle() {
        let t0 = Instant::now();
        let mut state = ready_at(t0);
        state.child = Some(Arc::new(FakeChild { exited: false, ours: false }));
        assert!(!state.idle(t0 + Duration::from_secs(3600), IDLE, EXPIRY));
        assert!(matches!(state.on_ensure(None, t0), EnsureStep::Grant), "it is used all the same");
    }
}
