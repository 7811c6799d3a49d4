//! The sidecar's configuration file (TOML): one `[apps.NAME]` table per app, a
//! process to start (`command`) or a Docker container to start (`container`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    apps: BTreeMap<String, RawApp>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawCommand {
    Argv(Vec<String>),
    Line(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    #[serde(default)]
    command: Option<RawCommand>,
    #[serde(default)]
    container: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    replicas: Option<u32>,
    #[serde(default)]
    min_replicas: Option<u32>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    on_idle: Option<String>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    idle_shutdown: Option<f64>,
    #[serde(default)]
    ready_path: Option<String>,
    #[serde(default)]
    start_timeout: Option<f64>,
    #[serde(default)]
    stop_signal: Option<String>,
    #[serde(default)]
    stop_timeout: Option<f64>,
}

/// How the sidecar knows a child is ready to serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connection to its port succeeds.
    Tcp,
    /// `GET path` answers 2xx or 3xx.
    Http(String),
}

/// What an idle app becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnIdle {
    Stop,
    /// Frozen (`docker pause`): it keeps its memory and address, and resumes at once.
    Pause,
}

/// A process the sidecar starts, on a port it gives.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// argv; `__PORT__` is replaced by the port when the child starts.
    pub command: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    /// A fixed port; without it, one is allocated.
    pub port: Option<u16>,
    pub stop_signal: Signal,
}

/// An existing Docker container the sidecar starts.
#[derive(Debug, Clone)]
pub struct ContainerConfig {
    /// Its name, or full id (checked against Docker's answer: see `check_identity`).
    pub container: String,
    /// The port the app listens on inside the container.
    pub port: u16,
    /// The Docker network (one Envoy shares) on which requests reach it; without
    /// it, the host port Docker publishes `port` on, or `port` on loopback for a
    /// container sharing a network namespace (`--network host` or `container:…`).
    pub network: Option<String>,
}

/// A Docker Swarm service the sidecar scales up from `min_replicas` on the first
/// request and back when idle (`workload/service.rs`).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Its name (or id).
    pub service: String,
    /// The port the app listens on inside its tasks.
    pub port: u16,
    /// The network (an overlay Envoy's container is attached to) on which the tasks'
    /// own addresses are reached; without it, each task's port published in `host`
    /// mode on its node.
    pub network: Option<String>,
    /// How many tasks run while the app is in use.
    pub replicas: u32,
    /// How many run while it is idle (the floor it is scaled back to).
    pub min_replicas: u32,
}

pub const DEFAULT_REPLICAS: u32 = 1;

/// What an app is: the seam between the lifecycle and what it runs.
#[derive(Debug, Clone)]
pub enum WorkloadConfig {
    Process(ProcessConfig),
    Container(ContainerConfig),
    Service(ServiceConfig),
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: String,
    pub workload: WorkloadConfig,
    pub idle_shutdown: Option<Duration>,
    pub on_idle: OnIdle,
    pub readiness: Readiness,
    pub start_timeout: Duration,
    pub stop_timeout: Duration,
}

impl AppConfig {
    /// The fixed port a process app reserves on this host, if any.
    pub fn fixed_port(&self) -> Option<u16> {
        match &self.workload {
            WorkloadConfig::Process(p) => p.port,
            WorkloadConfig::Container(_) | WorkloadConfig::Service(_) => None,
        }
    }
}

pub const DEFAULT_START_TIMEOUT: f64 = 30.0;
pub const DEFAULT_STOP_TIMEOUT: f64 = 10.0;

/// A configuration error naming the app and the field.
pub fn error(app: &str, field: &str, message: impl std::fmt::Display) -> String {
    format!("config error: app {app:?}: field {field:?}: {message}")
}

fn seconds(app: &str, field: &str, value: Option<f64>, default: Option<f64>) -> Result<Option<Duration>, String> {
    match value.or(default) {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(error(app, field, format!("{s} must be a number of seconds above 0 and at most 86400"))),
    }
}

/// Deserializes the file, naming the app and field of any error: the TOML parser's
/// own messages name neither (a wrong type, an unknown field, a syntax error).
fn from_toml(text: &str) -> Result<RawFile, String> {
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let path: Vec<String> = e.path().iter().map(|seg| seg.to_string()).filter(|s| s != "?").collect();
        let inner = e.inner();
        let at = inner.span().map_or(String::new(), |s| format!(" ({})", line_of(text, s.start)));
        let message = inner
            .message()
            .trim()
            .replace('\n', ": ")
            .replace("data did not match any variant of untagged enum RawCommand", "must be an array of strings or a string");
        // An unknown or missing field is reported at its table: name it from the message.
        let unknown = ["unknown field `", "missing field `"]
            .iter()
            .find_map(|prefix| message.strip_prefix(prefix))
            .and_then(|m| m.split('`').next())
            .map(str::to_string);
        // A syntax error has no path: name the app and key of the line it is on.
        let (app, field) = match (path.first().map(String::as_str), path.get(1)) {
            (Some("apps"), Some(app)) => (Some(app.clone()), path.get(2).cloned().or(unknown)),
            _ if path.is_empty() => inner.span().map_or((None, None), |s| place_of(text, s.start)),
            _ => (None, None),
        };
        match (app, field) {
            (Some(app), Some(field)) => error(&app, &field, format!("{message}{at}")),
            (Some(app), None) => format!("config error: app {app:?}: {message}{at}"),
            _ => format!("config error: {message}{at}"),
        }
    })
}

/// "line N" for a byte offset.
fn line_of(text: &str, offset: usize) -> String {
    format!("line {}", text.get(..offset).unwrap_or(text).matches('\n').count() + 1)
}

/// The app (`[apps.NAME]` table) and key (`key = …`) of the line holding `offset`.
fn place_of(text: &str, offset: usize) -> (Option<String>, Option<String>) {
    let before = text.get(..offset).unwrap_or(text);
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..).unwrap_or_default().lines().next().unwrap_or_default();
    let key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string()).filter(|k| !k.is_empty() && !k.starts_with('['));
    let app = before.lines().rev().find_map(|l| {
        let name = l.trim().strip_prefix("[apps.")?.strip_suffix(']')?;
        Some(name.trim_matches('"').to_string())
    });
    (app, key)
}

/// A fixed port of a process app, unique among apps.
fn port_field(app: &str, port: u16, taken: &mut HashSet<u16>) -> Result<u16, String> {
    if port == 0 {
        return Err(error(app, "port", "must be 1 to 65535 (leave it out to have one allocated)"));
    }
    if !taken.insert(port) {
        return Err(error(app, "port", format!("{port} is used by another app")));
    }
    Ok(port)
}

fn process(
    app: &str,
    command: RawCommand,
    cwd: Option<PathBuf>,
    env: BTreeMap<String, String>,
    port: Option<u16>,
    stop_signal: Option<String>,
) -> Result<ProcessConfig, String> {
    let command = match command {
        RawCommand::Argv(argv) => argv,
        RawCommand::Line(line) => shlex::split(&line).ok_or_else(|| error(app, "command", "unbalanced quotes"))?,
    };
    if command.first().is_none_or(String::is_empty) {
        return Err(error(app, "command", "must not be empty"));
    }
    let stop_signal = match stop_signal.as_deref() {
        None => Signal::SIGTERM,
        Some(s) => {
            let full = if s.starts_with("SIG") { s.to_string() } else { format!("SIG{s}") };
            full.parse::<Signal>().map_err(|_| error(app, "stop_signal", format!("unknown signal {s:?}")))?
        }
    };
    if env.contains_key("PORT") {
        return Err(error(app, "env", "PORT is set by the sidecar"));
    }
    Ok(ProcessConfig { command, cwd, env, port, stop_signal })
}

pub fn load(path: &Path) -> Result<Vec<AppConfig>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("config error: cannot read {}: {e}", path.display()))?;
    parse(&text)
}

pub fn parse(text: &str) -> Result<Vec<AppConfig>, String> {
    parse_with_env(text, &|name| std::env::var(name).ok())
}

/// A `container` or `network` written `${NAME}` is read from the environment: a
/// compose stack names its containers and networks after its project.
fn from_env(app: &str, field: &str, value: String, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let Some(var) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) else { return Ok(value) };
    if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(error(app, field, format!("{value:?}: `${{NAME}}` takes an environment variable's name")));
    }
    env(var).filter(|v| !v.is_empty()).ok_or_else(|| error(app, field, format!("{value:?}: {var} is not set in the sidecar's environment")))
}

pub fn parse_with_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<AppConfig>, String> {
    let raw: RawFile = from_toml(text)?;
    if raw.apps.is_empty() {
        return Err("config error: no [apps.NAME] table".into());
    }
    let mut apps = Vec::new();
    let mut ports = HashSet::new();
    for (name, app) in raw.apps {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(format!("config error: app {name:?}: the name must be letters, digits, '.', '_' or '-'"));
        }
        let readiness = match app.ready_path {
            None => Readiness::Tcp,
            Some(p) if p.starts_with('/') && !p.contains(char::is_whitespace) => Readiness::Http(p),
            Some(p) => return Err(error(&name, "ready_path", format!("{p:?} must be a path starting with /"))),
        };
        let on_idle = match app.on_idle.as_deref() {
            None | Some("stop") => OnIdle::Stop,
            Some("pause") => OnIdle::Pause,
            Some(other) => return Err(error(&name, "on_idle", format!("{other:?} must be \"stop\" or \"pause\""))),
        };
        if app.service.is_none() {
            for (field, given) in [("replicas", app.replicas.is_some()), ("min_replicas", app.min_replicas.is_some())] {
                if given {
                    return Err(error(&name, field, "only for a `service` app"));
                }
            }
        }
        let workload = match (app.command, app.container, app.service) {
            (Some(_), Some(_), _) => return Err(error(&name, "container", "an app is a `command`, a `container` or a `service`, not two")),
            (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
                return Err(error(&name, "service", "an app is a `command`, a `container` or a `service`, not two"))
            }
            (None, None, None) => {
                return Err(error(
                    &name,
                    "command",
                    "missing: give `command` (a process to start), `container` (a Docker container to start) or `service` (a Swarm service to scale up)",
                ))
            }
            (None, None, Some(service)) => {
                for (field, given) in [("cwd", app.cwd.is_some()), ("env", !app.env.is_empty()), ("stop_signal", app.stop_signal.is_some())]
                {
                    if given {
                        return Err(error(&name, field, "only for a `command` app (a service has its own)"));
                    }
                }
                if on_idle == OnIdle::Pause {
                    return Err(error(&name, "on_idle", "a service is scaled down when idle, never paused"));
                }
                let service = from_env(&name, "service", service, env)?;
                let network = app.network.map(|n| from_env(&name, "network", n, env)).transpose()?;
                if service.is_empty() || !service.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                    return Err(error(&name, "service", format!("{service:?} is not a service name or id")));
                }
                let Some(port) = app.port.filter(|p| *p != 0) else {
                    return Err(error(&name, "port", "required for a service: the port the app listens on inside its tasks (1 to 65535)"));
                };
                if network.as_deref().is_some_and(str::is_empty) {
                    return Err(error(&name, "network", "must not be empty"));
                }
                let replicas = app.replicas.unwrap_or(DEFAULT_REPLICAS);
                if replicas == 0 || replicas > 100 {
                    return Err(error(&name, "replicas", format!("{replicas} must be 1 to 100")));
                }
                let min_replicas = app.min_replicas.unwrap_or(0);
                if min_replicas >= replicas {
                    return Err(error(&name, "min_replicas", format!("{min_replicas} must be below `replicas` ({replicas})")));
                }
                WorkloadConfig::Service(ServiceConfig { service, port, network, replicas, min_replicas })
            }
            (Some(command), None, None) => {
                for (field, given) in [("network", app.network.is_some()), ("on_idle", on_idle == OnIdle::Pause)] {
                    if given {
                        return Err(error(&name, field, "only for a `container` or `service` app"));
                    }
                }
                let port = match app.port {
                    Some(port) => Some(port_field(&name, port, &mut ports)?),
                    None => None,
                };
                WorkloadConfig::Process(process(&name, command, app.cwd, app.env, port, app.stop_signal)?)
            }
            (None, Some(container), None) => {
                for (field, given) in [("cwd", app.cwd.is_some()), ("env", !app.env.is_empty()), ("stop_signal", app.stop_signal.is_some())]
                {
                    if given {
                        return Err(error(&name, field, "only for a `command` app (a container has its own)"));
                    }
                }
                let container = from_env(&name, "container", container, env)?;
                let network = app.network.map(|n| from_env(&name, "network", n, env)).transpose()?;
                if container.is_empty() || !container.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
                    return Err(error(&name, "container", format!("{container:?} is not a container name or id")));
                }
                let Some(port) = app.port.filter(|p| *p != 0) else {
                    return Err(error(&name, "port", "required for a container: the port the app listens on inside it (1 to 65535)"));
                };
                if network.as_deref().is_some_and(str::is_empty) {
                    return Err(error(&name, "network", "must not be empty"));
                }
                WorkloadConfig::Container(ContainerConfig { container, port, network })
            }
        };
        apps.push(AppConfig {
            idle_shutdown: seconds(&name, "idle_shutdown", app.idle_shutdown, None)?,
            start_timeout: seconds(&name, "start_timeout", app.start_timeout, Some(DEFAULT_START_TIMEOUT))?.unwrap_or_default(),
            stop_timeout: seconds(&name, "stop_timeout", app.stop_timeout, Some(DEFAULT_STOP_TIMEOUT))?.unwrap_or_default(),
            name,
            workload,
            on_idle,
            readiness,
        });
    }
    Ok(apps)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn process(app: &AppConfig) -> &ProcessConfig {
        match &app.workload {
            WorkloadConfig::Process(p) => p,
            WorkloadConfig::Container(_) | WorkloadConfig::Service(_) => panic!("{} is not a process", app.name),
        }
    }

    #[test]
    fn parses_apps() {
        let apps = parse(
            r#"
            [apps.blog]
            command = "wsgiproxy-echo --port __PORT__ --name 'my blog'"
            idle_shutdown = 30
            ready_path = "/health"
            stop_signal = "INT"

            [apps.api]
            command = ["server", "--port", "__PORT__"]
            port = 9000
            env = { MODE = "prod" }
            start_timeout = 2.5

            [apps.shop]
            container = "shop_1"
            port = 8080
            network = "apps"
            on_idle = "pause"
            "#,
        )
        .unwrap();
        let api = &apps[0];
        assert_eq!(api.name, "api");
        assert_eq!(process(api).port, Some(9000));
        assert_eq!(api.fixed_port(), Some(9000));
        assert_eq!(api.start_timeout, Duration::from_millis(2500));
        assert_eq!(api.stop_timeout, Duration::from_secs(10));
        let blog = &apps[1];
        assert_eq!(process(blog).command, ["wsgiproxy-echo", "--port", "__PORT__", "--name", "my blog"]);
        assert_eq!(blog.idle_shutdown, Some(Duration::from_secs(30)));
        assert_eq!(blog.readiness, Readiness::Http("/health".into()));
        assert_eq!(process(blog).stop_signal, Signal::SIGINT);
        assert_eq!(blog.on_idle, OnIdle::Stop);
        let shop = &apps[2];
        let WorkloadConfig::Container(c) = &shop.workload else { panic!("shop is a container") };
        assert_eq!((c.container.as_str(), c.port, c.network.as_deref()), ("shop_1", 8080, Some("apps")));
        assert_eq!(shop.on_idle, OnIdle::Pause);
        assert_eq!(shop.fixed_port(), None, "a container's port is its own, not this host's");
    }

    #[test]
    fn errors_name_the_app_and_field() {
        let cases = [
            ("[apps.a]\ncommand = []", "app \"a\": field \"command\""),
            ("[apps.a]\ncommand = \"x\"\nstop_signal = \"SIGFOO\"", "app \"a\": field \"stop_signal\": unknown signal \"SIGFOO\""),
            ("[apps.a]\ncommand = \"x\"\nidle_shutdown = -1", "app \"a\": field \"idle_shutdown\""),
            ("[apps.a]\ncommand = \"x\"\nready_path = \"health\"", "app \"a\": field \"ready_path\""),
            ("[apps.a]\ncommand = \"x\"\nport = 0", "app \"a\": field \"port\""),
            ("[apps.a]\ncommand = \"x\"\nport = 80\n[apps.b]\ncommand = \"y\"\nport = 80", "app \"b\": field \"port\""),
            ("[apps.a]\ncommand = \"x\"\nbogus = 1", "app \"a\": field \"bogus\": unknown field `bogus`"),
            ("[apps.a]\ncommand = \"x\"\nport = \"80\"", "app \"a\": field \"port\": invalid type: string \"80\", expected u16 (line 3)"),
            ("[apps.a]\ncommand = \"x\"\nport = 70000", "app \"a\": field \"port\""),
            ("[apps.a]\ncommand = \"x\"\nidle_shutdown = \"soon\"", "app \"a\": field \"idle_shutdown\""),
            ("[apps.a]\ncommand = 3", "app \"a\": field \"command\": must be an array of strings or a string"),
            ("[apps.a]\ncommand = \"x\"\nenv = { A = 1 }", "app \"a\": field \"env\""),
            ("[apps.a]\ncommand = \"x\"\n[apps.b]\ncommand = \"y\"\nstart_timeout = 1.2.3", "app \"b\": field \"start_timeout\""),
            ("[apps.a]\nstart_timeout = 3", "app \"a\": field \"command\": missing: give `command`"),
            ("[apps.a]\ncommand = \"'x\"", "app \"a\": field \"command\": unbalanced quotes"),
            ("[apps.a]\ncommand = \"x\"\nenv = { PORT = \"1\" }", "app \"a\": field \"env\""),
            // Containers.
            (
                "[apps.a]\ncommand = \"x\"\ncontainer = \"c\"",
                "app \"a\": field \"container\": an app is a `command`, a `container` or a `service`",
            ),
            ("[apps.a]\ncontainer = \"c\"", "app \"a\": field \"port\": required for a container"),
            ("[apps.a]\ncontainer = \"c\"\nport = 0", "app \"a\": field \"port\": required for a container"),
            ("[apps.a]\ncontainer = \"c d\"\nport = 80", "app \"a\": field \"container\": \"c d\" is not a container name"),
            ("[apps.a]\ncontainer = \"c\"\nport = 80\nstop_signal = \"INT\"", "app \"a\": field \"stop_signal\": only for a `command` app"),
            ("[apps.a]\ncontainer = \"c\"\nport = 80\nenv = { A = \"1\" }", "app \"a\": field \"env\": only for a `command` app"),
            ("[apps.a]\ncontainer = \"c\"\nport = 80\non_idle = \"freeze\"", "app \"a\": field \"on_idle\": \"freeze\" must be"),
            ("[apps.a]\ncommand = \"x\"\non_idle = \"pause\"", "app \"a\": field \"on_idle\": only for a `container` or `service` app"),
            ("[apps.a]\ncommand = \"x\"\nnetwork = \"n\"", "app \"a\": field \"network\": only for a `container` or `service` app"),
            ("[apps.a]\ncontainer = \"c\"\nport = 80\nnetwork = \"\"", "app \"a\": field \"network\": must not be empty"),
            // Services.
            (
                "[apps.a]\nservice = \"s\"\ncontainer = \"c\"\nport = 80",
                "app \"a\": field \"service\": an app is a `command`, a `container` or a `service`",
            ),
            ("[apps.a]\nservice = \"s\"", "app \"a\": field \"port\": required for a service"),
            ("[apps.a]\nservice = \"s\"\nport = 80\nreplicas = 0", "app \"a\": field \"replicas\": 0 must be 1 to 100"),
            ("[apps.a]\nservice = \"s\"\nport = 80\nreplicas = 2\nmin_replicas = 2", "app \"a\": field \"min_replicas\": 2 must be below"),
            ("[apps.a]\nservice = \"s\"\nport = 80\non_idle = \"pause\"", "app \"a\": field \"on_idle\": a service is scaled down"),
            ("[apps.a]\nservice = \"s\"\nport = 80\nenv = { A = \"1\" }", "app \"a\": field \"env\": only for a `command` app"),
            ("[apps.a]\ncontainer = \"c\"\nport = 80\nreplicas = 2", "app \"a\": field \"replicas\": only for a `service` app"),
            ("[apps.a]\ncommand = \"x\"\nmin_replicas = 1", "app \"a\": field \"min_replicas\": only for a `service` app"),
            ("[apps.a]\nservice = \"s s\"\nport = 80", "app \"a\": field \"service\": \"s s\" is not a service name"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_container_and_its_network_may_come_from_the_environment() {
        let env = |name: &str| match name {
            "BLOG" => Some("stack-blog".to_string()),
            "NET" => Some("stack_apps".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let apps = parse_with_env("[apps.a]\ncontainer = \"${BLOG}\"\nport = 80\nnetwork = \"${NET}\"", &env).unwrap();
        let WorkloadConfig::Container(c) = &apps[0].workload else { panic!("a container") };
        assert_eq!((c.container.as_str(), c.network.as_deref()), ("stack-blog", Some("stack_apps")));
        for (config, message) in [
            ("container = \"${NOPE}\"", "field \"container\": \"${NOPE}\": NOPE is not set in the sidecar's environment"),
            ("container = \"${EMPTY}\"", "EMPTY is not set"),
            ("container = \"${A B}\"", "takes an environment variable's name"),
            ("container = \"c\"\nnetwork = \"${NOPE}\"", "field \"network\": \"${NOPE}\": NOPE is not set"),
        ] {
            let err = parse_with_env(&format!("[apps.a]\nport = 80\n{config}"), &env).unwrap_err();
            assert!(err.contains(message), "{config}: {err}");
        }
    }

    #[test]
    fn a_service_scaled_from_its_floor_to_its_replicas() {
        let apps = parse("[apps.a]\nservice = \"blog\"\nport = 8080\nnetwork = \"apps\"\nreplicas = 2\nmin_replicas = 1\n[apps.b]\nservice = \"b\"\nport = 80\n").unwrap();
        let WorkloadConfig::Service(a) = &apps[0].workload else { panic!("a service") };
        assert_eq!((a.service.as_str(), a.port, a.network.as_deref(), a.replicas, a.min_replicas), ("blog", 8080, Some("apps"), 2, 1));
        let WorkloadConfig::Service(b) = &apps[1].workload else { panic!("a service") };
        assert_eq!((b.replicas, b.min_replicas, b.network.as_deref()), (DEFAULT_REPLICAS, 0, None));
        assert_eq!(apps[1].fixed_port(), None);
    }

    #[test]
    fn containers_may_share_a_port_number() {
        // Each listens in its own network namespace.
        let apps = parse("[apps.a]\ncontainer = \"a\"\nport = 80\n[apps.b]\ncontainer = \"b\"\nport = 80\n").unwrap();
        assert_eq!(apps.len(), 2);
    }
}
