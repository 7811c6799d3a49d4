//! The sidecar's metrics, kept and exposed (OpenMetrics text, which Prometheus reads)
//! by the `prometheus-client` crate.
//!
//! Per app: starts (`spawns_total`), stops by reason, idle stops, crashes, failures
//! by reason, pauses and resumes; the cold-start time (`start_seconds`: from the
//! start to ready) and how long ensure calls waited, as histograms; and the app's
//! state (1 for the current one); and the containers found running whose start the
//! sidecar cannot prove its own, left alone (`unproven_starts_total`).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Histogram buckets (seconds): from a 5 ms process start to a 30 s container start.
const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every state an app may be in, as `wsgiproxy_sidecar_app_state{state}` names them.
pub const STATES: [&str; 7] = ["stopped", "starting", "ready", "stopping", "pausing", "paused", "failed"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppLabel {
    app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppReason {
    app: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorKind {
    kind: String,
}

/// The failed Docker calls, by kind (`wsgiproxy_sidecar_docker_errors_total{kind}`:
/// unreachable, timed_out, no_such_container, no_such_service, refused): a handle the Docker client keeps.
#[derive(Clone, Debug, Default)]
pub struct DockerErrors(Family<ErrorKind, Counter>);

impl DockerErrors {
    /// Every kind, so that each shows at 0 before it happens (an alert on a rise needs a
    /// sample before it).
    const KINDS: [&'static str; 5] = ["unreachable", "timed_out", "no_such_container", "no_such_service", "refused"];

    pub fn count(&self, kind: &str) {
        self.0.get_or_create(&ErrorKind { kind: kind.to_string() }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppState {
    app: String,
    state: String,
}

/// Why an app stopped (`wsgiproxy_sidecar_stops_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Idle,
    Shutdown,
    StartTimeout,
}

impl StopReason {
    pub fn name(self) -> &'static str {
        match self {
            StopReason::Idle => "idle",
            StopReason::Shutdown => "shutdown",
            StopReason::StartTimeout => "start_timeout",
        }
    }
}

/// Why an app moved to failed (`wsgiproxy_sidecar_failures_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The workload could not be started (no port, no such command, Docker refused
    /// or cannot be reached).
    StartError,
    /// It exited before it was ready.
    ExitedBeforeReady,
    /// It was not ready within `start_timeout`.
    StartTimeout,
    /// It exited after it was ready.
    Crashed,
}

impl FailureReason {
    const ALL: [FailureReason; 4] =
        [FailureReason::StartError, FailureReason::ExitedBeforeReady, FailureReason::StartTimeout, FailureReason::Crashed];

    fn name(self) -> &'static str {
        match self {
            FailureReason::StartError => "start_error",
            FailureReason::ExitedBeforeReady => "exited_before_ready",
            FailureReason::StartTimeout => "start_timeout",
            FailureReason::Crashed => "crashed",
        }
    }
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

pub struct Metrics {
    registry: Registry,
    spawns: Family<AppLabel, Counter>,
    stops: Family<AppReason, Counter>,
    idle_stops: Family<AppLabel, Counter>,
    crashes: Family<AppLabel, Counter>,
    failures: Family<AppReason, Counter>,
    pauses: Family<AppLabel, Counter>,
    resumes: Family<AppLabel, Counter>,
    unproven_starts: Family<AppLabel, Counter>,
    start_seconds: Family<AppLabel, Histogram, fn() -> Histogram>,
    ensure_wait_seconds: Family<AppLabel, Histogram, fn() -> Histogram>,
    app_state: Family<AppState, Gauge>,
    docker_errors: DockerErrors,
    /// Serializes state changes, so that an app never shows two states at once.
    state_lock: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::default();
        let spawns = Family::<AppLabel, Counter>::default();
        let stops = Family::<AppReason, Counter>::default();
        let idle_stops = Family::<AppLabel, Counter>::default();
        let crashes = Family::<AppLabel, Counter>::default();
        let failures = Family::<AppReason, Counter>::default();
        let pauses = Family::<AppLabel, Counter>::default();
        let resumes = Family::<AppLabel, Counter>::default();
        let unproven_starts = Family::<AppLabel, Counter>::default();
        let start_seconds = Family::<AppLabel, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let ensure_wait_seconds = Family::<AppLabel, Histogram, fn() -> Histogram>::new_with_constructor(histogram);
        let app_state = Family::<AppState, Gauge>::default();
        let docker_errors = DockerErrors::default();
        for kind in DockerErrors::KINDS {
            let _created = docker_errors.0.get_or_create(&ErrorKind { kind: kind.to_string() });
        }
        // Counters get their `_total` suffix from the encoder.
        registry.register(
            "wsgiproxy_sidecar_spawns",
            "Starts of an app (a process spawned, a container started, a service scaled up)",
            spawns.clone(),
        );
        registry.register("wsgiproxy_sidecar_stops", "Stops of an app, by reason", stops.clone());
        registry.register("wsgiproxy_sidecar_idle_stops", "Stops of an app for idleness", idle_stops.clone());
        registry.register("wsgiproxy_sidecar_crashes", "Exits of an app the sidecar did not ask for", crashes.clone());
        registry.register("wsgiproxy_sidecar_failures", "Moves of an app to failed, by reason", failures.clone());
        registry.register("wsgiproxy_sidecar_pauses", "Pauses of an idle container", pauses.clone());
        registry.register("wsgiproxy_sidecar_resumes", "Resumes of a paused container", resumes.clone());
        registry.register(
            "wsgiproxy_sidecar_unproven_starts",
            "Containers found running after a start whose time the sidecar never learnt: not taken as its own, never stopped",
            unproven_starts.clone(),
        );
        registry.register("wsgiproxy_sidecar_start_seconds", "Cold-start time: from the start of an app to ready", start_seconds.clone());
        registry.register(
            "wsgiproxy_sidecar_ensure_wait_seconds",
            "How long ensure calls that waited for a start waited",
            ensure_wait_seconds.clone(),
        );
        registry.register("wsgiproxy_sidecar_app_state", "1 for the state each app is in, 0 for the others", app_state.clone());
        registry.register(
            "wsgiproxy_sidecar_docker_errors",
            "Failed calls to the Docker API, by kind (unreachable, timed_out, no_such_container, no_such_service, refused)",
            docker_errors.0.clone(),
        );
        Metrics {
            registry,
            spawns,
            stops,
            idle_stops,
            crashes,
            failures,
            pauses,
            resumes,
            unproven_starts,
            start_seconds,
            ensure_wait_seconds,
            app_state,
            docker_errors,
            state_lock: Mutex::new(()),
        }
    }
}

fn app(name: &str) -> AppLabel {
    AppLabel { app: name.to_string() }
}

fn reason(name: &str, reason: &str) -> AppReason {
    AppReason { app: name.to_string(), reason: reason.to_string() }
}

impl Metrics {
    /// Shows an app's counters at 0 before anything happened to it (its failures by
    /// every reason too: an alert on their rise needs a sample before the first).
    pub fn add_app(&self, name: &str) {
        for family in [&self.spawns, &self.idle_stops, &self.crashes] {
            let _created = family.get_or_create(&app(name));
        }
        for why in FailureReason::ALL {
            let _created = self.failures.get_or_create(&reason(name, why.name()));
        }
    }

    pub fn started(&self, name: &str) {
        self.spawns.get_or_create(&app(name)).inc();
    }

    pub fn stopped(&self, name: &str, why: StopReason) {
        self.stops.get_or_create(&reason(name, why.name())).inc();
        if why == StopReason::Idle {
            self.idle_stops.get_or_create(&app(name)).inc();
        }
    }

    pub fn failed(&self, name: &str, why: FailureReason) {
        self.failures.get_or_create(&reason(name, why.name())).inc();
        if matches!(why, FailureReason::Crashed | FailureReason::ExitedBeforeReady) {
            self.crashes.get_or_create(&app(name)).inc();
        }
    }

    pub fn paused(&self, name: &str) {
        self.pauses.get_or_create(&app(name)).inc();
    }

    pub fn resumed(&self, name: &str) {
        self.resumes.get_or_create(&app(name)).inc();
    }

    /// A container found running that a start of the sidecar may or may not have
    /// started (it never learnt the start's time): left alone.
    pub fn unproven_start(&self, name: &str) {
        self.unproven_starts.get_or_create(&app(name)).inc();
    }

    /// A start that became ready after `took`.
    pub fn cold_start(&self, name: &str, took: Duration) {
        self.start_seconds.get_or_create(&app(name)).observe(took.as_secs_f64());
    }

    /// An ensure call that waited `took` for a start.
    pub fn ensure_waited(&self, name: &str, took: Duration) {
        self.ensure_wait_seconds.get_or_create(&app(name)).observe(took.as_secs_f64());
    }

    /// The handle the Docker client counts its failed calls with.
    pub fn docker_errors(&self) -> DockerErrors {
        self.docker_errors.clone()
    }

    pub fn set_state(&self, name: &str, current: &str) {
        let _serialized = self.state_lock.lock();
        for state in STATES {
            let gauge = self.app_state.get_or_create(&AppState { app: name.to_string(), state: state.to_string() });
            gauge.set(i64::from(state == current));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        out
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(text: &str, line_start: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
    }

    #[test]
    fn counters_histograms_and_states_keep_their_names() {
        let m = Metrics::default();
        m.add_app("blog");
        m.add_app("shop");
        m.started("blog");
        m.stopped("blog", StopReason::Idle);
        m.failed("blog", FailureReason::Crashed);
        m.failed("blog", FailureReason::StartTimeout);
        m.cold_start("blog", Duration::from_millis(300));
        m.set_state("blog", "starting");
        m.set_state("blog", "ready");
        let text = m.render();
        assert_eq!(value(&text, "wsgiproxy_sidecar_spawns_total{app=\"blog\"}"), Some(1.0), "{text}");
        assert_eq!(value(&text, "wsgiproxy_sidecar_stops_total{app=\"blog\",reason=\"idle\"}"), Some(1.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_idle_stops_total{app=\"blog\"}"), Some(1.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_crashes_total{app=\"blog\"}"), Some(1.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_failures_total{app=\"blog\",reason=\"start_timeout\"}"), Some(1.0));
        assert!(text.contains("# TYPE wsgiproxy_sidecar_start_seconds histogram"), "{text}");
        assert_eq!(value(&text, "wsgiproxy_sidecar_start_seconds_bucket{le=\"0.25\",app=\"blog\"}"), Some(0.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_start_seconds_bucket{le=\"0.5\",app=\"blog\"}"), Some(1.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_start_seconds_bucket{le=\"+Inf\",app=\"blog\"}"), Some(1.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_app_state{app=\"blog\",state=\"ready\"}"), Some(1.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_app_state{app=\"blog\",state=\"starting\"}"), Some(0.0));
        assert_eq!(
            value(&text, "wsgiproxy_sidecar_spawns_total{app=\"shop\"}"),
            Some(0.0),
            "an app's counters show before anything happened"
        );
        assert_eq!(value(&text, "wsgiproxy_sidecar_failures_total{app=\"shop\",reason=\"start_error\"}"), Some(0.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_docker_errors_total{kind=\"unreachable\"}"), Some(0.0));
        assert_eq!(value(&text, "wsgiproxy_sidecar_pauses_total{app=\"blog\"}"), None, "only what happened, or was added");
        assert!(text.ends_with("# EOF\n"));
    }
}
