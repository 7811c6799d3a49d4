//! Test support: real Envoy processes loaded with the built .wasm, the echo backend,
//! and a raw HTTP/1.1 client (raw, so that tests can send what a hostile client would).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

pub fn envoy_bin() -> PathBuf {
    match std::env::var_os("ENVOY_BIN") {
        Some(p) => PathBuf::from(p),
        None => require(repo_root().join(".venv/envoy"), "run scripts/setup.sh (or scripts/test.sh)"),
    }
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"))
}

pub fn wasm_path() -> PathBuf {
    require(
        target_dir().join("wasm32-wasip1/release/wsgiproxy_filter.wasm"),
        "build it with `cargo build --release --target wasm32-wasip1` (scripts/test.sh does)",
    )
}

/// Which loader runs the filter: the Wasm VM (`envoy.filters.http.wasm`, the shipped
/// configs) or the native dynamic module (`WSGIPROXY_LOADER=native`), which
/// [`render`] swaps in for every Wasm HTTP filter, with the same configuration JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    Wasm,
    Native,
}

impl Loader {
    /// The loader of this test run.
    pub fn from_env() -> Loader {
        match std::env::var("WSGIPROXY_LOADER").as_deref() {
            Ok("native") => Loader::Native,
            Ok("wasm") | Err(_) => Loader::Wasm,
            Ok(other) => panic!("WSGIPROXY_LOADER={other:?}: expected wasm or native"),
        }
    }

    /// Where Envoy shows the filter's counters.
    pub fn stat_prefix(self) -> &'static str {
        match self {
            Loader::Wasm => "wasmcustom.",
            Loader::Native => "dynamicmodulescustom.",
        }
    }
}

/// The folder holding libwsgiproxy.so (Envoy's ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
pub fn native_module_dir() -> PathBuf {
    let dir = target_dir().join("native");
    require(dir.join("libwsgiproxy.so"), "build it with `cargo build --profile native -p wsgiproxy-native` (scripts/test.sh does)");
    dir
}

const WASM_HTTP_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const WASM_NETWORK_FILTER: &str = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";

/// Turns every Wasm filter into the native module with the same configuration: an
/// HTTP filter into a `DynamicModuleFilter`, a network filter (the `peer` role) into a
/// `DynamicModuleNetworkFilter`.
pub fn use_native_module(doc: &mut Yaml) {
    let type_of =
        |m: &serde_yaml::Mapping| m.get(key("typed_config")).and_then(|t| t.get("@type")).and_then(Yaml::as_str).map(str::to_string);
    walk_mut(doc, &mut |m| {
        let native_type = match type_of(m).as_deref() {
            Some(WASM_HTTP_FILTER) => "http.dynamic_modules.v3.DynamicModuleFilter",
            Some(WASM_NETWORK_FILTER) => "network.dynamic_modules.v3.DynamicModuleNetworkFilter",
            _ => return,
        };
        let name = m[key("typed_config")]["config"]["name"].as_str().unwrap_or("wsgiproxy").to_string();
        let config = m[key("typed_config")]["config"]["configuration"]["value"].clone();
        let native: Yaml = serde_yaml::from_str(&format!(
            "\"@type\": type.googleapis.com/envoy.extensions.filters.{native_type}
dynamic_module_config: {{ name: wsgiproxy, do_not_close: true }}
filter_name: {name}
filter_config: {{ \"@type\": type.googleapis.com/google.protobuf.StringValue }}"
        ))
        .unwrap();
        m.insert(key("typed_config"), native);
        m[key("typed_config")]["filter_config"]["value"] = config;
    });
}

pub fn bin_path(name: &str) -> PathBuf {
    require(target_dir().join("debug").join(name), "build it with `cargo build --workspace --bins` (scripts/test.sh does)")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A child process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    /// Owns a child started by a test itself.
    pub fn adopt(child: Child) -> Proc {
        Proc { child, log: PathBuf::new(), _dir: None }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first: a sidecar stops its children on SIGTERM, not on SIGKILL.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The echo backend: answers with a JSON description of the request it received.
pub struct Echo {
    pub port: u16,
    pub proc: Proc,
}

impl Echo {
    pub fn start() -> Echo {
        Self::start_with(&[])
    }

    pub fn start_with(args: &[&str]) -> Echo {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("echo.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(bin_path("wsgiproxy-echo"))
            .args(["--port", &port.to_string()])
            .args(args)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let proc = Proc { child, log, _dir: Some(dir) };
        assert!(wait_for_port(port, Duration::from_secs(10)), "echo did not start: {}", proc.log_text());
        Echo { port, proc }
    }
}

/// An edit of a rendered config that carries values of its own.
pub type YamlEdit = std::sync::Arc<dyn Fn(&mut Yaml) + Send + Sync>;

/// How a test changes a shipped envoy/*.yaml before running it.
#[derive(Default, Clone)]
pub struct Overrides {
    /// Cluster name → port on 127.0.0.1.
    pub clusters: BTreeMap<String, u16>,
    /// The plugin configuration JSON, replacing the shipped one (first Wasm filter).
    pub plugin_config: Option<Json>,
    /// Extra environment for Envoy (secrets reach the VM from here).
    pub env: Vec<(String, String)>,
    /// Envoy worker threads (default 1).
    pub concurrency: Option<u32>,
    /// Edits applied to the YAML last.
    pub edit: Option<fn(&mut Yaml)>,
    /// An edit that carries values of its own (paths, addresses), applied after `edit`.
    pub edit_with: Option<YamlEdit>,
    /// Every DNS cache resolves through a server on 127.0.0.1 at this port (see [`FakeDns`]).
    pub dns: Option<u16>,
    /// The loader, when a test chooses it (default: [`Loader::from_env`]).
    pub loader: Option<Loader>,
    /// More arguments to Envoy.
    pub args: Vec<String>,
    /// The listener's port, when a test chooses it (a restart on the same address);
    /// else a free one.
    pub listen_port: Option<u16>,
    /// Hot restart enabled (the harness otherwise passes `--disable-hot-restart`):
    /// `--base-id` and `--restart-epoch`.
    pub hot_restart: Option<HotRestart>,
    /// Signatures are trusted as soon as Envoy serves (its replay memory survived a
    /// restart): the start does not wait out a new memory's first seconds.
    pub memory_survives: bool,
}

/// Envoy's hot restart: processes of one `base_id` hand over to the next epoch.
#[derive(Clone, Copy, Debug)]
pub struct HotRestart {
    pub base_id: u32,
    pub epoch: u32,
}

impl Overrides {
    pub fn cluster(mut self, name: &str, port: u16) -> Self {
        self.clusters.insert(name.to_string(), port);
        self
    }
    pub fn plugin(mut self, config: Json) -> Self {
        self.plugin_config = Some(config);
        self
    }
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_string(), value.to_string()));
        self
    }
    pub fn loader(mut self, loader: Loader) -> Self {
        self.loader = Some(loader);
        self
    }
    pub fn chosen_loader(&self) -> Loader {
        self.loader.unwrap_or_else(Loader::from_env)
    }
}

/// One GET to Envoy's admin endpoint at start, when it may not answer yet: the
/// status and the body as sent (chunked: look for whole lines in it), or None.
fn admin_probe(admin_port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::Read;
    let mut stream = TcpStream::connect(("127.0.0.1", admin_port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// Envoy is LIVE, its workers are started, and no listener is warming.
fn envoy_says_it_serves(admin_port: u16) -> bool {
    let live = admin_probe(admin_port, "/ready").is_some_and(|(status, body)| status == 200 && body.lines().any(|l| l.trim() == "LIVE"));
    if !live {
        return false;
    }
    let Some((200, stats)) = admin_probe(admin_port, "/stats?filter=listener_manager") else { return false };
    let gauge = |name: &str| stats.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.trim().parse::<u64>().ok());
    gauge("listener_manager.workers_started") == Some(1)
        && gauge("listener_manager.total_listeners_warming") == Some(0)
        && gauge("listener_manager.total_listeners_active").is_some_and(|n| n > 0)
}

/// A running Envoy.
pub struct Envoy {
    pub port: u16,
    pub admin_port: u16,
    pub proc: Proc,
    pub loader: Loader,
}

fn walk_mut(value: &mut Yaml, f: &mut dyn FnMut(&mut serde_yaml::Mapping)) {
    match value {
        Yaml::Mapping(m) => {
            f(m);
            for (_, v) in m.iter_mut() {
                walk_mut(v, f);
            }
        }
        Yaml::Sequence(s) => {
            for v in s {
                walk_mut(v, f);
            }
        }
        _ => {}
    }
}

fn key(name: &str) -> Yaml {
    Yaml::String(name.to_string())
}

/// The HTTP connection manager's `typed_config` in the first listener of a config
/// (the `peer` network filter stands before it).
pub fn hcm(doc: &mut Yaml) -> &mut Yaml {
    let filters = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"].as_sequence_mut().unwrap();
    let hcm = filters
        .iter_mut()
        .find(|f| f["name"].as_str() == Some("envoy.filters.network.http_connection_manager"))
        .expect("the first listener has an HTTP connection manager");
    &mut hcm["typed_config"]
}

/// Whether a plugin configuration is the `peer` network filter's.
pub fn is_peer_role(config: &str) -> bool {
    serde_json::from_str::<Json>(config).is_ok_and(|c| c["role"] == "peer")
}

/// Loads a shipped config and rewrites its ports and plugin configuration.
pub fn render(file: &str, port: u16, admin_port: u16, o: &Overrides) -> String {
    let text = std::fs::read_to_string(repo_root().join(file)).unwrap();
    let mut doc: Yaml = serde_yaml::from_str(&text).unwrap();
    doc["admin"]["address"]["socket_address"]["port_value"] = Yaml::from(admin_port);
    doc["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = Yaml::from(port);
    if let Some(clusters) = doc["static_resources"]["clusters"].as_sequence_mut() {
        for cluster in clusters {
            let name = cluster["name"].as_str().unwrap_or_default().to_string();
            if let Some(p) = o.clusters.get(&name) {
                walk_mut(&mut cluster["load_assignment"], &mut |m| {
                    if m.contains_key(key("port_value")) {
                        m.insert(key("port_value"), Yaml::from(*p));
                    }
                });
            }
        }
    }
    if let Some(config) = &o.plugin_config {
        // The first Wasm HTTP filter's configuration, and every copy of it
        // (envoy/exact.yaml runs the same filter again in its cluster); the `peer`
        // network filter keeps its own.
        let mut first: Option<Yaml> = None;
        walk_mut(&mut doc, &mut |m| {
            // `configuration` of a Wasm filter, `filter_config` of the native module.
            let field = if m.contains_key(key("filter_config")) { "filter_config" } else { "configuration" };
            if let Some(Yaml::Mapping(c)) = m.get_mut(key(field)) {
                if c.get(key("@type")).and_then(Yaml::as_str) == Some("type.googleapis.com/google.protobuf.StringValue") {
                    let shipped = c.get(key("value")).cloned();
                    if shipped.as_ref().and_then(Yaml::as_str).is_some_and(is_peer_role) {
                        return;
                    }
                    if first.is_none() || first == shipped {
                        first = shipped;
                        c.insert(key("value"), Yaml::String(config.to_string()));
                    }
                }
            }
        });
        assert!(first.is_some(), "{file} has no Wasm plugin configuration to replace");
        // A shipped sender signs in its cluster's upstream filter (`bind_endpoint`); a
        // test that configures the app role without it runs the role before routing
        // only, as such a sender is configured.
        let bound = config["role"] == "app" && config["bind_endpoint"] == true;
        if !bound {
            drop_unbound_app_upstream_filters(&mut doc);
        }
    }
    if let Some(dns_port) = o.dns {
        // Every DNS cache, and every forward-proxy cluster (whose per-destination
        // clusters resolve with its settings).
        walk_mut(&mut doc, &mut |m| {
            let is_forward_proxy_cluster = m.get(key("cluster_type")).and_then(|t| t.get("name")).and_then(Yaml::as_str)
                == Some("envoy.clusters.dynamic_forward_proxy");
            let resolves =
                if is_forward_proxy_cluster { Some(&mut *m) } else { m.get_mut(key("dns_cache_config")).and_then(Yaml::as_mapping_mut) };
            if let Some(cache) = resolves {
                let resolver: Yaml = serde_yaml::from_str(&format!(
                    "name: envoy.network.dns_resolver.cares
typed_config:
  \"@type\": type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig
  resolvers: [{{ socket_address: {{ address: 127.0.0.1, port_value: {dns_port} }} }}]
  use_resolvers_as_fallback: false
  dns_resolver_options: {{ no_default_search_domain: true }}"
                ))
                .unwrap();
                cache.insert(key("typed_dns_resolver_config"), resolver);
            }
        });
    }
    // The shipped configs name target/…/wsgiproxy_filter.wasm: load the one built in
    // CARGO_TARGET_DIR.
    let wasm = Yaml::String(wasm_path().to_string_lossy().into_owned());
    walk_mut(&mut doc, &mut |m| {
        if m.get(key("filename")).and_then(Yaml::as_str).is_some_and(|f| f.ends_with("/wsgiproxy_filter.wasm")) {
            m.insert(key("filename"), wasm.clone());
        }
    });
    if let Some(edit) = o.edit {
        edit(&mut doc);
    }
    if let Some(edit) = &o.edit_with {
        edit(&mut doc);
    }
    if o.chosen_loader() == Loader::Native {
        use_native_module(&mut doc);
    }
    serde_yaml::to_string(&doc).unwrap()
}

/// Removes each cluster's upstream filters when they run the app role (see [`render`]).
fn drop_unbound_app_upstream_filters(doc: &mut Yaml) {
    let Some(clusters) = doc["static_resources"]["clusters"].as_sequence_mut() else { return };
    for cluster in clusters {
        let Some(options) = cluster.get_mut("typed_extension_protocol_options").and_then(Yaml::as_mapping_mut) else { continue };
        let runs_the_app_role = |filters: &Yaml| {
            filters.as_sequence().into_iter().flatten().any(|f| {
                let typed = &f["typed_config"];
                let value = typed["config"]["configuration"]["value"].as_str().or(typed["filter_config"]["value"].as_str());
                value.and_then(|v| serde_json::from_str::<Json>(v).ok()).is_some_and(|c| c["role"] == "app")
            })
        };
        options.retain(|_, o| !runs_the_app_role(&o["http_filters"]));
    }
}

impl Envoy {
    fn spawn(file: &str, o: &Overrides) -> (u16, u16, Proc, PathBuf) {
        Self::spawn_on(file, o, o.listen_port.unwrap_or_else(free_port), free_port())
    }

    fn spawn_on(file: &str, o: &Overrides, port: u16, admin_port: u16) -> (u16, u16, Proc, PathBuf) {
        let _ = wasm_path();
        let dir = scratch_dir();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, render(file, port, admin_port, o)).unwrap();
        let log = dir.path().join("envoy.log");
        let mut cmd = Command::new(envoy_bin());
        cmd.current_dir(repo_root())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", &o.concurrency.unwrap_or(1).to_string()])
            .args(["--log-level", "warn", "--component-log-level", "wasm:debug"])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match o.hot_restart {
            None => cmd.arg("--disable-hot-restart"),
            Some(h) => cmd.args(["--base-id", &h.base_id.to_string(), "--restart-epoch", &h.epoch.to_string()]),
        };
        cmd.args(&o.args);
        // The native module's default replay memory file, in this Envoy's own
        // directory (not the machine's /dev/shm, which every test would share); a
        // test that shares one between Envoys sets it again below.
        cmd.env("WSGIPROXY_REPLAY_MEMORY_DIR", dir.path());
        for (k, v) in &o.env {
            cmd.env(k, v);
        }
        if o.chosen_loader() == Loader::Native {
            cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir());
        }
        let child = cmd.spawn().unwrap();
        (port, admin_port, Proc { child, log: log.clone(), _dir: Some(dir) }, config)
    }

    /// Starts Envoy with a shipped config and waits until Envoy itself says it serves:
    /// admin `/ready` answers LIVE, its workers are started and no listener is still
    /// warming. A TCP connect is not enough: the listen socket accepts before the
    /// workers serve, and a connection queued on a socket Envoy then replaces (one per
    /// worker with reuse_port) is reset.
    pub fn start(file: &str, o: &Overrides) -> Envoy {
        let (port, admin_port, proc, config) = Self::spawn(file, o);
        Self::started(file, o, port, admin_port, proc, config, !o.memory_survives)
    }

    /// As [`Envoy::start`], without waiting until a signature dated now is past what
    /// a freshly started replay memory refuses: for a sender's retries to wait out.
    pub fn start_serving(file: &str, o: &Overrides) -> Envoy {
        let (port, admin_port, proc, config) = Self::spawn(file, o);
        Self::started(file, o, port, admin_port, proc, config, false)
    }

    /// Starts the next epoch of this hot-restartable Envoy (same ports, same base id),
    /// and waits until the child serves; this one drains.
    pub fn hot_restart(&self, file: &str, o: &Overrides) -> Envoy {
        let (port, admin_port, proc, config) = Self::spawn_on(file, o, self.port, self.admin_port);
        Self::started(file, o, port, admin_port, proc, config, !o.memory_survives)
    }

    /// Starts Envoy again on the ports of one that exited.
    pub fn start_on(file: &str, o: &Overrides, port: u16, admin_port: u16) -> Envoy {
        let (port, admin_port, proc, config) = Self::spawn_on(file, o, port, admin_port);
        Self::started(file, o, port, admin_port, proc, config, !o.memory_survives)
    }

    /// Waits until Envoy serves; then, when `wait_for_signatures`, until a signature
    /// dated now is past what a new replay memory refuses.
    fn started(file: &str, o: &Overrides, port: u16, admin_port: u16, proc: Proc, config: PathBuf, wait_for_signatures: bool) -> Envoy {
        let (mut port, mut admin_port, mut proc) = (port, admin_port, proc);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut tries = 1;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                // A free port may be taken by someone else before Envoy binds it (tests
                // and other processes share the machine): start again on new ports.
                if tries < 3 && proc.log_text().contains("Address already in use") {
                    tries += 1;
                    (port, admin_port, proc, _) = Self::spawn(file, o);
                    continue;
                }
                panic!("envoy exited ({status}) at start:\n{}", proc.log_text());
            }
            // A hot-restart child: its parent's admin answers until the child takes it over.
            let this_epoch = || match o.hot_restart {
                Some(h) => admin_probe(admin_port, "/stats?filter=server.hot_restart_epoch")
                    .is_some_and(|(_, body)| body.lines().any(|l| l.trim() == format!("server.hot_restart_epoch: {}", h.epoch))),
                None => true,
            };
            if envoy_says_it_serves(admin_port) && this_epoch() {
                break;
            }
            assert!(Instant::now() < deadline, "envoy did not start:\n{}", proc.log_text());
            std::thread::sleep(Duration::from_millis(25));
        }
        let text = std::fs::read_to_string(&config).unwrap_or_default();
        if text.contains("secret") && wait_for_signatures {
            wait_until_signatures_are_trusted(&text);
        }
        Envoy { port, admin_port, proc, loader: o.chosen_loader() }
    }

    /// Starts Envoy with a config it must refuse; returns its log.
    pub fn start_refused(file: &str, o: &Overrides) -> String {
        let (_, admin_port, mut proc, _) = Self::spawn(file, o);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                assert!(!status.success(), "envoy exited 0");
                return proc.log_text();
            }
            // Not the listener: its socket is bound (and accepts into the backlog)
            // while Envoy is still loading the filters it will refuse. Envoy saying
            // it is ready is what accepting the configuration means.
            assert!(!admin_says_live(admin_port), "envoy accepted a bad configuration:\n{}", proc.log_text());
            assert!(Instant::now() < deadline, "envoy neither started nor exited:\n{}", proc.log_text());
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        request(self.port, "GET", path, headers, b"")
    }

    /// Counters whose names contain `filter`, from the admin endpoint.
    pub fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        let r = request(self.admin_port, "GET", &format!("/stats?filter={filter}"), &[], b"");
        r.text().lines().filter_map(|l| l.split_once(": ")).filter_map(|(k, v)| v.trim().parse().ok().map(|v| (k.to_string(), v))).collect()
    }

    /// A counter the filter defined (Envoy shows Wasm metrics under `wasmcustom.`, the
    /// native module's under `dynamicmodulescustom.`),
    /// read once the filter has flushed its counts (it does every 250 ms): waits until
    /// it has stayed the same for a while. Envoy before 1.40 may show it under the
    /// scope of the first filter that defined it (`cluster.NAME.wasmcustom.` when that
    /// was an upstream filter): every scope's count is added.
    pub fn stat(&self, name: &str) -> u64 {
        let full = format!("{}{name}", self.loader.stat_prefix());
        // The native module's upstream filters count in their cluster's scope
        // (`cluster.NAME.dynamicmodulescustom.…`): every scope's count is added.
        let read = || {
            let dotted = format!(".{full}");
            self.stats(&full).iter().filter(|(k, _)| **k == full || k.ends_with(&dotted)).map(|(_, v)| v).sum::<u64>()
        };
        let mut last = read();
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(600) {
            std::thread::sleep(Duration::from_millis(50));
            let now = read();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        last
    }

    /// Stops Envoy (which flushes its log file) and returns its log.
    pub fn stop_and_log(&mut self) -> String {
        let _ = request(self.admin_port, "POST", "/quitquitquit", &[], b"");
        let _ = self.proc.child.wait();
        self.proc.log_text()
    }

    /// Kills Envoy at once (SIGKILL: no cleanup of any kind).
    pub fn kill(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }

    pub fn admin(&self, path: &str) -> Response {
        request(self.admin_port, "GET", path, &[], b"")
    }
}

/// Sleeps into the next second. A replay memory refuses signatures dated in the
/// second it began (restart protection): once Envoy is ready, a test's signatures
/// are dated from the next second on.
pub fn wait_past_this_second() {
    let into_second = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
    std::thread::sleep(Duration::from_nanos(1_000_000_000 - u64::from(into_second)) + Duration::from_millis(5));
}

/// Sleeps until a signature dated now is past what a freshly started replay memory
/// refuses (425): its first second (at or before now) plus `max_future_seconds` (the
/// configuration's, else the default of 2).
pub fn wait_until_signatures_are_trusted(config: &str) {
    let future: u64 = config
        .split("max_future_seconds")
        .nth(1)
        .and_then(|rest| rest.trim_start_matches(|c: char| !c.is_ascii_digit()).split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap_or(2);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let trusted = Duration::from_secs(now.as_secs() + future + 1);
    std::thread::sleep(trusted - now + Duration::from_millis(5));
}

/// Whether Envoy's admin `/ready` answers LIVE; false on any error (Envoy may be
/// starting, or exiting).
pub fn admin_says_live(admin_port: u16) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect(("127.0.0.1", admin_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /ready HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer)?;
        Ok(answer.starts_with("HTTP/1.1 200") && answer.trim_end().ends_with("LIVE"))
    };
    attempt().unwrap_or(false)
}

/// An HTTP response as the client got it.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text()))
    }
    /// What the echo backend received: it answers with a JSON description of the request.
    pub fn received(&self) -> Received {
        assert_eq!(self.status, 200, "backend not reached: {}", self.text());
        Received(self.json())
    }
}

/// A request as the echo backend saw it.
pub struct Received(pub Json);

impl Received {
    pub fn uri(&self) -> String {
        self.0["uri"].as_str().unwrap().to_string()
    }
    pub fn method(&self) -> String {
        self.0["method"].as_str().unwrap().to_string()
    }
    pub fn body(&self) -> String {
        self.0["body"].as_str().unwrap_or_default().to_string()
    }
    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0["headers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h[0].as_str() == Some(name))
            .map(|h| h[1].as_str().unwrap().to_string())
            .collect()
    }
    /// The one value of a header; fails when it is repeated.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} received {} times: {all:?}", all.len());
        all.into_iter().next()
    }
    pub fn names(&self) -> Vec<String> {
        self.0["headers"].as_array().unwrap().iter().map(|h| h[0].as_str().unwrap().to_string()).collect()
    }
}

/// Sends one request on a new connection and reads the whole response.
pub fn request(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut raw = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        raw.extend_from_slice(b"Host: test.local\r\n");
    }
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        raw.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    raw.extend_from_slice(body);
    raw_request(port, &raw)
}

/// A chunked upload whose chunks leave the client `gap` apart, after the headers
/// (so that Envoy sees the request's head well before its body), ending with
/// `trailers`; then the whole response.
pub fn chunked_upload(
    port: u16,
    target: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
    gap: Duration,
    trailers: &[(&str, &str)],
) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("PUT {target} HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    for chunk in chunks {
        std::thread::sleep(gap);
        stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).unwrap();
        stream.write_all(chunk).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    std::thread::sleep(gap);
    let mut end = b"0\r\n".to_vec();
    for (n, v) in trailers {
        end.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    end.extend_from_slice(b"\r\n");
    stream.write_all(&end).unwrap();
    read_response(&mut BufReader::new(stream))
}

/// Reads one response on a kept-alive connection: its status (the body is skipped).
pub fn read_status(reader: &mut BufReader<TcpStream>, line: &mut String) -> u16 {
    use std::io::Read;
    line.clear();
    reader.read_line(line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut length = 0usize;
    loop {
        line.clear();
        reader.read_line(line).unwrap();
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    status
}

/// Sends raw bytes and parses the response (Content-Length, chunked, or until close).
pub fn raw_request(port: u16, raw: &[u8]) -> Response {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(raw).unwrap();
    let mut reader = BufReader::new(stream);
    read_response(&mut reader)
}

/// A v1-signed `GET {path}` to `authority`, dated `date`, whose only protocol header
/// is X-WSGIProxy-Version: 0.1, as raw HTTP/1.1 bytes.
/// A nonce no other of this test process's repeats: the process id, a counter and
/// the time (XORing the counter into the time, as two tests did, let two threads
/// draw the same nonce now and then: a replay refusal in a test of something else).
/// A directory for one Envoy's files, the native module's 512 MB replay memory among
/// them: under the target directory, on the disk that holds the build, since /tmp may
/// be a small tmpfs (CI's is).
pub fn scratch_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

pub fn unique_nonce() -> [u8; 16] {
    static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut nonce = [0u8; 16];
    nonce[..4].copy_from_slice(&std::process::id().to_be_bytes());
    nonce[4..8].copy_from_slice(&COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_be_bytes());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or_default();
    nonce[8..].copy_from_slice(&nanos.to_be_bytes());
    nonce
}

pub fn signed_v1_get(ring: &wsgiproxy_protocol::signature::KeyRing, nonce: &[u8; 16], authority: &str, path: &str, date: &str) -> Vec<u8> {
    let parts = wsgiproxy_protocol::signature::SignedParts {
        method: b"GET",
        authority: authority.as_bytes(),
        path: path.as_bytes(),
        date: date.as_bytes(),
        protocol_headers: vec![("x-wsgiproxy-version", b"0.1")],
    };
    let signature = wsgiproxy_protocol::signature::sign(ring, nonce, &parts).unwrap();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nDate: {date}\r\nX-WSGIProxy-Version: 0.1\r\nX-WSGIProxy-Signature: {signature}\r\n\r\n"
    )
    .into_bytes()
}

/// A kept-alive HTTP/1.1 connection to 127.0.0.1: requests one after another on one
/// socket (to reach the filter chain, or the process, it was opened on), each answer
/// read whole.
pub struct KeptAlive(BufReader<TcpStream>);

impl KeptAlive {
    pub fn open(port: u16) -> KeptAlive {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        KeptAlive(BufReader::new(stream))
    }

    /// Sends raw request bytes; the answer.
    pub fn send(&mut self, raw: &[u8]) -> Response {
        self.0.get_mut().write_all(raw).unwrap();
        read_response(&mut self.0)
    }

    /// Sends raw request bytes; the answer's status and `x-wsgiproxy-error`.
    pub fn verdict(&mut self, raw: &[u8]) -> (u16, Option<String>) {
        let r = self.send(raw);
        (r.status, r.header("x-wsgiproxy-error").map(str::to_string))
    }
}

pub fn read_response(reader: &mut impl BufRead) -> Response {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v): &(String, String)| v.clone());
    let mut body = Vec::new();
    if let Some(len) = find("content-length") {
        body.resize(len.parse().unwrap(), 0);
        reader.read_exact(&mut body).unwrap();
    } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if status != 204 && status != 304 {
        let _ = reader.read_to_end(&mut body);
    }
    Response { status, headers, body }
}

pub fn path_exists(p: &Path) -> bool {
    p.exists()
}

/// Where a sidecar's apps are given ports: a block of 10 of its own for each sidecar
/// of this test process (20 blocks, then they are reused), blocks apart from other
/// processes', all below the kernel's ephemeral range (32768 up), where clients'
/// own ports come from. With overlapping ranges, a port one test's crashed app
/// freed was taken by another test's sidecar, whose app then answered under the
/// first test's lease.
fn first_app_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed) % 20;
    20000 + (std::process::id() % 60) as u16 * 200 + block * 10
}

/// The spawn sidecar, with a configuration written by the test.
pub struct Sidecar {
    pub port: u16,
    pub proc: Proc,
}

impl Sidecar {
    /// `ECHO` in the configuration stands for the echo backend's path.
    pub fn start(config: &str, lease_ms: u64) -> Sidecar {
        Self::start_on(config, lease_ms, free_port())
    }

    /// The same, on a given port (to stand in for a sidecar that restarts).
    pub fn start_on(config: &str, lease_ms: u64, port: u16) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sidecar.log");
        let child = Self::spawn(config, lease_ms, port, dir.path(), &log, &[]);
        Self::serving(port, Proc { child, log, _dir: Some(dir) })
    }

    /// The same, in `dir` (kept by the caller: its configuration, log and state
    /// directory, which a sidecar started again in it finds), with `extra` options.
    pub fn start_in(dir: &Path, config: &str, lease_ms: u64, extra: &[&str]) -> Sidecar {
        let port = free_port();
        let log = dir.join(format!("sidecar-{port}.log"));
        let child = Self::spawn(config, lease_ms, port, dir, &log, extra);
        Self::serving(port, Proc { child, log, _dir: None })
    }

    fn spawn(config: &str, lease_ms: u64, port: u16, dir: &Path, log: &Path, extra: &[&str]) -> Child {
        let path = dir.join("sidecar.toml");
        std::fs::write(&path, config.replace("ECHO", &bin_path("wsgiproxy-echo").to_string_lossy())).unwrap();
        let out = std::fs::File::create(log).unwrap();
        let first_port = first_app_port();
        Command::new(bin_path("wsgiproxy-sidecar"))
            .arg("--config")
            .arg(&path)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--lease-ms", &lease_ms.to_string()])
            .args(["--first-port", &first_port.to_string()])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(extra)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap()
    }

    fn serving(port: u16, proc: Proc) -> Sidecar {
        assert!(wait_for_port(port, Duration::from_secs(10)), "sidecar did not start: {}", proc.log_text());
        Sidecar { port, proc }
    }

    pub fn status(&self, app: &str) -> Json {
        request(self.port, "GET", "/v1/status", &[], b"").json()["apps"][app].clone()
    }

    pub fn metric(&self, line_start: &str) -> u64 {
        request(self.port, "GET", "/metrics", &[], b"")
            .text()
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Stops it with SIGTERM (it stops its children first) and waits.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.proc.pid().to_string()).status();
        let _ = self.proc.child.wait();
    }
}

/// Waits for a condition, failing the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting until {what}");
}

/// A DNS server on loopback that answers every A question with 127.0.0.1 (and
/// every other question with no answer): names that resolve to loopback, for
/// testing what a proxy does with them, without touching /etc/hosts. Names given to
/// [`FakeDns::start_with`] get their own A records instead, in the order given.
pub struct FakeDns {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FakeDns {
    pub fn start() -> FakeDns {
        Self::start_with(&[])
    }

    /// Answers each `(name, addresses)` with those A records (a name as asked, without
    /// the final dot, any case), every other name with 127.0.0.1.
    pub fn start_with(records: &[(&str, &[std::net::Ipv4Addr])]) -> FakeDns {
        use std::sync::atomic::{AtomicBool, Ordering};
        let records: BTreeMap<String, Vec<std::net::Ipv4Addr>> =
            records.iter().map(|(name, addresses)| (name.to_ascii_lowercase(), addresses.to_vec())).collect();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((len, from)) = socket.recv_from(&mut buf) else { continue };
                if let Some(answer) = dns_answer(&buf[..len], &records) {
                    let _ = socket.send_to(&answer, from);
                }
            }
        });
        FakeDns { port, stop }
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The reply to one DNS query: the question echoed, and, when the question is for A,
/// the name's A records from `records`, or 127.0.0.1.
fn dns_answer(query: &[u8], records: &BTreeMap<String, Vec<std::net::Ipv4Addr>>) -> Option<Vec<u8>> {
    let mut end = 12;
    let mut labels = Vec::new();
    while *query.get(end)? != 0 {
        let len = *query.get(end)? as usize;
        labels.push(String::from_utf8_lossy(query.get(end + 1..end + 1 + len)?).to_ascii_lowercase());
        end += 1 + len;
    }
    let question = query.get(12..end + 5)?;
    let is_a = query.get(end + 1..end + 3)? == [0, 1];
    let loopback = [std::net::Ipv4Addr::LOCALHOST];
    let addresses: &[std::net::Ipv4Addr] = if is_a { records.get(&labels.join(".")).map_or(&loopback, Vec::as_slice) } else { &[] };
    let count = u8::try_from(addresses.len()).unwrap();
    let mut reply = vec![query[0], query[1], 0x81, 0x80, 0, 1, 0, count, 0, 0, 0, 0];
    reply.extend_from_slice(question);
    for address in addresses {
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
        reply.extend_from_slice(&address.octets());
    }
    Some(reply)
}

/// Runs `body` in a network namespace of its own (a thread that unshared its
/// network namespace: the processes and threads it starts are in it too), with `lo`
/// up and `addresses` (e.g. "10.9.9.9/32") added to it: every address the test uses
/// is on that namespace's loopback, so nothing leaves the machine. Needs root
/// (CAP_SYS_ADMIN); fails loudly when the namespace cannot be made.
pub fn in_own_network_namespace<T: Send + 'static>(addresses: &[&str], body: impl FnOnce() -> T + Send + 'static) -> T {
    let addresses: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare(2) with CLONE_NEWNET changes only this thread's network
        // namespace; it takes no pointers.
        let status = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(
            status,
            0,
            "THIS TEST NEEDS A NETWORK NAMESPACE OF ITS OWN and could not make one (unshare(CLONE_NEWNET): {}); \
             run it as root (CI does)",
            std::io::Error::last_os_error()
        );
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap_or_else(|e| panic!("cannot run `ip` (iproute2): {e}"));
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["link", "set", "lo", "up"]);
        for address in &addresses {
            ip(&["address", "add", address, "dev", "lo"]);
        }
        body()
    });
    thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// A TCP server that records what reaches it: connections accepted and bytes
/// received. It answers each request head it reads with a 200 saying `name`.
pub struct Recorder {
    pub address: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    closed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub fn start(ip: &str, name: &'static str) -> Recorder {
        use std::io::Read;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let received = std::sync::Arc::new(AtomicUsize::new(0));
        let closed = std::sync::Arc::new(AtomicUsize::new(0));
        let (accepts, bytes, closes) = (accepted.clone(), received.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                accepts.fetch_add(1, Ordering::SeqCst);
                let (bytes, closes) = (bytes.clone(), closes.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        bytes.fetch_add(n, Ordering::SeqCst);
                        head.extend_from_slice(&buf[..n]);
                        if head.windows(4).any(|w| w == b"\r\n\r\n") {
                            head.clear();
                            let body = format!("reached {name}\n");
                            let _ = stream.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
                        }
                    }
                    closes.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Recorder { address, accepted, received, closed }
    }

    pub fn port(&self) -> u16 {
        self.address.port()
    }
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Bytes received so far, on every connection.
    pub fn received(&self) -> usize {
        self.received.load(std::sync::atomic::Ordering::SeqCst)
    }
    /// Connections the other side has closed so far.
    pub fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Opens a connection to Envoy from a given loopback source address (127.0.0.2,
/// 127.0.0.3, ...): on one machine, distinct TCP peers for trust tests.
pub fn connect_from(source: &str, port: u16) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let source: std::net::IpAddr = source.parse().unwrap();
    let socket = Socket::new(if source.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }, Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::new(source, 0).into()).unwrap();
    let target = std::net::SocketAddr::new(if source.is_ipv4() { "127.0.0.1".parse().unwrap() } else { source }, port);
    socket.connect(&target.into()).unwrap();
    socket.into()
}

/// [`request`], sent from a given loopback source address.
pub fn request_from(source: &str, port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} {target} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        raw.extend_from_slice(b"Host: test.local\r\n");
    }
    for (n, v) in headers {
        raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    let mut stream = connect_from(source, port);
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.write_all(&raw).unwrap();
    read_response(&mut BufReader::new(stream))
}

/// A sidecar configuration whose app `name` is Python's development server:
/// `http.server` listens with a backlog of 5.
pub fn small_backlog_app(name: &str) -> String {
    format!("[apps.{name}]\ncommand = [\"python3\", \"-m\", \"http.server\", \"__PORT__\", \"--bind\", \"127.0.0.1\", \"--directory\", \"sidecar\"]\n")
}

/// `count` requests sent at once, each on its own connection; their statuses and
/// the Envoy answers' details for the ones that failed.
pub fn burst(port: u16, count: usize, path: &str) -> Vec<(u16, String)> {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(count));
    (0..count)
        .map(|_| {
            let (barrier, path) = (barrier.clone(), path.to_string());
            std::thread::spawn(move || {
                barrier.wait();
                let r = request(port, "GET", &path, &[], b"");
                (r.status, if r.status == 200 { String::new() } else { r.text() })
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect()
}

/// 20 first requests at once through a spawn Envoy whose sidecar runs
/// [`small_backlog_app`] as `name`, then twice 30 warm ones: all must be answered.
pub fn bursts_reach_it(envoy: &Envoy, sidecar: &Sidecar, name: &str) {
    // 20 first requests at once: they wait for the cold start, then Envoy opens 20
    // connections to a server whose accept queue holds 6.
    let began = Instant::now();
    let cold = burst(envoy.port, 20, "/README.md");
    eprintln!("20 cold requests answered in {:?}", began.elapsed());
    let failed: Vec<_> = cold.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "{} of 20 cold requests failed: {failed:?}", failed.len());
    // At least once (one run saw two spawns during the burst, every request answered;
    // concurrent_cold_start_spawns_once holds the exactly-once guarantee).
    assert!(sidecar.metric(&format!("wsgiproxy_sidecar_spawns_total{{app=\"{name}\"}}")) >= 1);
    // Warm: 30 at once, more than the pool holds.
    for round in 0..2 {
        let began = Instant::now();
        let warm = burst(envoy.port, 30, "/README.md");
        eprintln!("30 warm requests answered in {:?}", began.elapsed());
        let failed: Vec<_> = warm.iter().filter(|(s, _)| *s != 200).collect();
        assert!(failed.is_empty(), "round {round}: {} of 30 warm requests failed: {failed:?}", failed.len());
    }
    let timeouts = envoy.stats("cluster.spawned.upstream_cx_connect_timeout");
    assert_eq!(timeouts.get("cluster.spawned.upstream_cx_connect_timeout"), Some(&0));
}

/// The Python of the project's venv (PyPI's http-message-signatures and cryptography).
pub fn python() -> PathBuf {
    repo_root().join(".venv/bin/python")
}

/// Signs each entry with PyPI's http-message-signatures, a library nobody here wrote
/// (`tests/apps/rfc9421_sign.py` reads the entries): each one's `Signature-Input` and
/// `Signature`, in order.
pub fn library_signatures(entries: &[Json]) -> Vec<(String, String)> {
    let mut child = Command::new(python())
        .arg(repo_root().join("tests/apps/rfc9421_sign.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(Json::from(entries.to_vec()).to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the Python signer failed");
    let signatures: Vec<Json> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(signatures.len(), entries.len(), "one signature an entry");
    signatures.iter().map(|s| (s["signature-input"].as_str().unwrap().to_string(), s["signature"].as_str().unwrap().to_string())).collect()
}

/// The protocol headers of a request the library signs in the RFC 9421 tests
/// (`rfc9421_interop.rs`, `rfc9421_algorithms.rs`), and what its signature covers:
/// everything the middleware role requires.
pub const LIBRARY_PROTOCOL: [(&str, &str); 5] = [
    ("x-forwarded-for", "203.0.113.5"),
    ("x-forwarded-server", "www.example.com"),
    ("x-forwarded-scheme", "https"),
    ("x-wsgiproxy-version", "0.1"),
    ("x-wsgiproxy-str-0", "REMOTE_USER alice"),
];

pub const LIBRARY_COVERED: [&str; 9] = [
    "@method",
    "@authority",
    "@path",
    "@query",
    "x-forwarded-for",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-wsgiproxy-version",
    "x-wsgiproxy-str-0",
];

/// Key pairs OpenSSL made (`tests/apps/rfc9421_keys.py`): one JSON object a pair, with
/// `private_jwk` and `public_jwk` (JWK texts) among its members.
pub fn openssl_key_pairs(algorithm: &str, count: usize) -> Vec<Json> {
    let out =
        Command::new(python()).arg(repo_root().join("tests/apps/rfc9421_keys.py")).args([algorithm, &count.to_string()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}
