//! An Envoy whose listener comes from an LDS file in a watched directory, rewritten
//! with an atomic rename: a configuration push as xDS makes it, for the tests that
//! change a filter's configuration under live connections (`replay_settings.rs`,
//! `key_rotation.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use super::support::*;

pub struct LdsEnvoy {
    pub envoy: Envoy,
    dir: tempfile::TempDir,
    listener: Yaml,
    pushes: u64,
}

impl LdsEnvoy {
    /// `config_file` as `overrides` render it on `port`, its first listener moved to the
    /// LDS file; `args`: more of Envoy's arguments (the drain's, say).
    pub fn start(config_file: &str, port: u16, overrides: &Overrides, node: &str, args: &[&str]) -> LdsEnvoy {
        let dir = scratch_dir();
        let admin_port = free_port();
        let mut doc: Yaml = serde_yaml::from_str(&render(config_file, port, admin_port, overrides)).unwrap();
        let listener = doc["static_resources"]["listeners"][0].clone();
        doc["static_resources"].as_mapping_mut().unwrap().remove("listeners");
        doc["node"] = serde_yaml::from_str(&format!("{{ id: {node}, cluster: {node} }}")).unwrap();
        let lds = dir.path().join("lds.yaml");
        doc["dynamic_resources"] = serde_yaml::from_str(&format!(
            "{{ lds_config: {{ resource_api_version: V3, path_config_source: {{ path: {}, watched_directory: {{ path: {} }} }} }} }}",
            lds.display(),
            dir.path().display()
        ))
        .unwrap();
        let loader = overrides.chosen_loader();
        let pushes = write_listener(dir.path(), &listener, 0);
        let bootstrap = dir.path().join("envoy.yaml");
        std::fs::write(&bootstrap, serde_yaml::to_string(&doc).unwrap()).unwrap();
        let log = dir.path().join("envoy.log");
        let mut cmd = Command::new(envoy_bin());
        cmd.current_dir(repo_root())
            .arg("-c")
            .arg(&bootstrap)
            .args(args)
            .args(["--concurrency", "1", "--disable-hot-restart", "--log-level", "warn", "--log-path"])
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // The native module's replay memory in this Envoy's own directory, not the
            // machine's /dev/shm, which every test would share.
            .env("WSGIPROXY_REPLAY_MEMORY_DIR", dir.path());
        if loader == Loader::Native {
            cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", native_module_dir());
        }
        let mut proc = Proc::adopt(cmd.spawn().unwrap());
        proc.log = log;
        let lds_envoy = LdsEnvoy { envoy: Envoy { port, admin_port, proc, loader }, dir, listener, pushes };
        lds_envoy.wait_for_pushes(1);
        lds_envoy
    }

    /// Rewrites the listener with `plugin` in place of the configuration of the filter
    /// in `role`, and waits until Envoy serves new connections with it.
    pub fn push(&mut self, role: &str, plugin: &Json) {
        let mut replaced = false;
        for filter in self.listener["filter_chains"][0]["filters"].as_sequence_mut().unwrap() {
            if filter["name"].as_str() != Some("envoy.filters.network.http_connection_manager") {
                continue;
            }
            for http in filter["typed_config"]["http_filters"].as_sequence_mut().unwrap() {
                // The Wasm filter's `config.configuration`, the native module's `filter_config`.
                let Some(typed) = http.get_mut("typed_config") else { continue };
                let holder = if typed.get("filter_config").is_some() {
                    typed.get_mut("filter_config")
                } else {
                    typed.get_mut("config").and_then(|c| c.get_mut("configuration"))
                };
                let Some(holder) = holder else { continue };
                let in_role = holder
                    .get("value")
                    .and_then(Yaml::as_str)
                    .and_then(|v| serde_json::from_str::<Json>(v).ok())
                    .is_some_and(|v| v["role"] == role);
                if in_role {
                    holder["value"] = Yaml::from(plugin.to_string());
                    replaced = true;
                }
            }
        }
        assert!(replaced, "the listener's {role} configuration");
        self.pushes = write_listener(self.dir.path(), &self.listener, self.pushes);
        self.wait_for_pushes(self.pushes);
    }

    fn wait_for_pushes(&self, pushes: u64) {
        let envoy = &self.envoy;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !wait_for_port(envoy.admin_port, Duration::from_millis(100)) {
            assert!(Instant::now() < deadline, "Envoy's admin endpoint:\n{}", envoy.proc.log_text());
        }
        wait_until("the LDS update", Duration::from_secs(30), || {
            let stats = envoy.stats("listener_manager");
            let stat = |name: &str| stats.get(name).copied().unwrap_or_default();
            stat("listener_manager.lds.update_success") >= pushes
                && stat("listener_manager.total_listeners_warming") == 0
                && stat("listener_manager.total_listeners_active") == 1
                && stat("listener_manager.workers_started") == 1
        });
        assert!(wait_for_port(envoy.port, Duration::from_secs(5)));
    }
}

/// Writes the LDS file with an atomic rename; the pushes made so far.
fn write_listener(dir: &Path, listener: &Yaml, pushes: u64) -> u64 {
    let mut listener = listener.clone();
    listener["@type"] = Yaml::from("type.googleapis.com/envoy.config.listener.v3.Listener");
    let mut resources = serde_yaml::Mapping::new();
    resources.insert("resources".into(), Yaml::Sequence(vec![listener]));
    let staged = dir.join("lds.yaml.next");
    std::fs::write(&staged, serde_yaml::to_string(&resources).unwrap()).unwrap();
    std::fs::rename(&staged, dir.join("lds.yaml")).unwrap();
    pushes + 1
}
