//! The Istio examples in deploy/istio: every WasmPlugin's spec uses only fields and
//! values of Istio's WasmPlugin API (extensions.istio.io/v1alpha1, istio/api
//! extensions/v1alpha1/wasm.proto), and its pluginConfig, turned into JSON the way
//! Istio does (numbers become doubles), is accepted by the filter in real Envoy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::*;

/// Field → allowed values (empty: any value of the right shape, checked below).
const SPEC_FIELDS: [&str; 16] = [
    "selector",
    "targetRef",
    "targetRefs",
    "url",
    "sha256",
    "imagePullPolicy",
    "imagePullSecret",
    "verificationKey",
    "pluginConfig",
    "pluginName",
    "phase",
    "priority",
    "failStrategy",
    "vmConfig",
    "match",
    "type",
];
const PULL_POLICY: [&str; 3] = ["UNSPECIFIED_POLICY", "IfNotPresent", "Always"];
const PHASE: [&str; 4] = ["UNSPECIFIED_PHASE", "AUTHN", "AUTHZ", "STATS"];
const FAIL_STRATEGY: [&str; 3] = ["FAIL_CLOSE", "FAIL_OPEN", "FAIL_RELOAD"];
const PLUGIN_TYPE: [&str; 3] = ["UNSPECIFIED_PLUGIN_TYPE", "HTTP", "NETWORK"];
const WORKLOAD_MODE: [&str; 4] = ["UNDEFINED", "CLIENT", "SERVER", "CLIENT_AND_SERVER"];
const ENV_SOURCE: [&str; 2] = ["INLINE", "HOST"];

fn keys(v: &Yaml, what: &str, allowed: &[&str]) {
    let map = v.as_mapping().unwrap_or_else(|| panic!("{what} must be a mapping"));
    for k in map.keys() {
        let k = k.as_str().unwrap();
        assert!(allowed.contains(&k), "{what}: unknown field {k:?} (allowed: {allowed:?})");
    }
}

fn one_of(v: &Yaml, what: &str, allowed: &[&str]) {
    let s = v.as_str().unwrap_or_else(|| panic!("{what} must be a string"));
    assert!(allowed.contains(&s), "{what}: {s:?} is not one of {allowed:?}");
}

fn validate_spec(file: &str, spec: &Yaml) {
    keys(spec, &format!("{file}: spec"), &SPEC_FIELDS);
    let url = spec["url"].as_str().unwrap_or_else(|| panic!("{file}: spec.url is required"));
    assert!(["oci://", "http://", "https://", "file://"].iter().any(|s| url.starts_with(s)), "{file}: url scheme");
    if let Some(sel) = spec.get("selector") {
        keys(sel, &format!("{file}: spec.selector"), &["matchLabels"]);
    }
    for (field, allowed) in
        [("imagePullPolicy", &PULL_POLICY[..]), ("phase", &PHASE), ("failStrategy", &FAIL_STRATEGY), ("type", &PLUGIN_TYPE)]
    {
        if let Some(v) = spec.get(field) {
            one_of(v, &format!("{file}: spec.{field}"), allowed);
        }
    }
    if let Some(p) = spec.get("priority") {
        assert!(p.as_i64().is_some_and(|p| i32::try_from(p).is_ok()), "{file}: spec.priority must be an int32");
    }
    if let Some(vm) = spec.get("vmConfig") {
        keys(vm, &format!("{file}: spec.vmConfig"), &["env"]);
        for env in vm["env"].as_sequence().into_iter().flatten() {
            keys(env, &format!("{file}: spec.vmConfig.env[]"), &["name", "value", "valueFrom"]);
            assert!(env["name"].as_str().is_some_and(|n| !n.is_empty()), "{file}: env name is required");
            if let Some(from) = env.get("valueFrom") {
                one_of(from, &format!("{file}: spec.vmConfig.env[].valueFrom"), &ENV_SOURCE);
                assert!(!(from.as_str() == Some("HOST") && env.get("value").is_some()), "{file}: value only with INLINE");
            }
        }
    }
    for m in spec.get("match").and_then(Yaml::as_sequence).into_iter().flatten() {
        keys(m, &format!("{file}: spec.match[]"), &["mode", "ports"]);
        if let Some(mode) = m.get("mode") {
            one_of(mode, &format!("{file}: spec.match[].mode"), &WORKLOAD_MODE);
        }
        for port in m.get("ports").and_then(Yaml::as_sequence).into_iter().flatten() {
            keys(port, &format!("{file}: spec.match[].ports[]"), &["number"]);
            assert!(port["number"].as_u64().is_some_and(|n| (1..=65535).contains(&n)), "{file}: port number");
        }
    }
    assert!(spec["pluginConfig"].is_mapping(), "{file}: spec.pluginConfig must be a mapping");
}

/// What Istio hands the filter: the Struct as JSON, every number a double.
fn as_istio_json(v: &Yaml) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => serde_json::Number::from_f64(n.as_f64().unwrap()).map(Json::Number).unwrap(),
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(s) => Json::Array(s.iter().map(as_istio_json).collect()),
        Yaml::Mapping(m) => Json::Object(m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), as_istio_json(v))).collect()),
        Yaml::Tagged(t) => as_istio_json(&t.value),
    }
}

#[test]
fn wasmplugins_follow_the_api_and_their_configs_load() {
    let mut plugins = 0;
    for (name, doc) in istio_documents("WasmPlugin") {
        assert_eq!(doc["apiVersion"].as_str(), Some("extensions.istio.io/v1alpha1"), "{name}");
        let spec = &doc["spec"];
        validate_spec(&name, spec);
        let config = as_istio_json(&spec["pluginConfig"]);
        if config["role"] == "peer" {
            peer_plugin_loads(&name, spec, &config);
            plugins += 1;
            continue;
        }
        assert_eq!(spec["type"].as_str(), Some("HTTP"), "{name}: the {} role is an HTTP filter", config["role"]);
        let shipped = match config["role"].as_str().unwrap() {
            "app" => "envoy/app.yaml",
            "middleware" => "envoy/middleware.yaml",
            "spawn" => "envoy/spawn.yaml",
            other => panic!("{name}: role {other}"),
        };
        let mut overrides = Overrides::default().plugin(config.clone());
        for env in spec["vmConfig"]["env"].as_sequence().into_iter().flatten() {
            overrides = overrides.env(env["name"].as_str().unwrap(), "istio-example-key-0123456789");
        }
        // Envoy refuses to start when the filter refuses its configuration; once
        // configured, the role has declared its counters.
        let envoy = Envoy::start(shipped, &overrides);
        let role = config["role"].as_str().unwrap();
        let declared = format!("wasmcustom.wsgiproxy.{role}.requests");
        assert!(envoy.stats(&declared).contains_key(&declared), "{name}: the {role} role is not configured");
        plugins += 1;
    }
    assert!(plugins >= 4, "expected a WasmPlugin per role, found {plugins}");
}

/// The `peer` role is a NETWORK plugin; its config, as Istio hands it over, loads
/// into the network filter of the shipped app config and records connections.
fn peer_plugin_loads(name: &str, spec: &Yaml, config: &Json) {
    assert_eq!(spec["type"].as_str(), Some("NETWORK"), "{name}: the peer role is a network filter");
    let text = config.to_string();
    let o = Overrides {
        edit_with: Some(std::sync::Arc::new(move |doc: &mut Yaml| {
            let filter = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
            assert_eq!(filter["name"].as_str(), Some("wsgiproxy-peer"));
            filter["typed_config"]["config"]["configuration"]["value"] = Yaml::String(text.clone());
        })),
        // envoy/app.yaml's own app role signs with this key.
        ..Overrides::default().env("WSGIPROXY_KEY_K1", "istio-example-key-0123456789")
    };
    let envoy = Envoy::start("envoy/app.yaml", &o);
    let before = envoy.stat("wsgiproxy.peer.connections");
    let _ = envoy.get("/", &[]);
    assert_eq!(envoy.stat("wsgiproxy.peer.connections"), before + 1, "{name}");
}

#[test]
fn an_unknown_field_or_value_is_caught() {
    let bad: Yaml = serde_yaml::from_str("url: oci://x/y:1\npluginConfig: {}\nphase: EARLY\n").unwrap();
    assert!(std::panic::catch_unwind(|| validate_spec("bad", &bad)).is_err());
    let bad: Yaml = serde_yaml::from_str("url: oci://x/y:1\npluginConfig: {}\nvmconfig: {}\n").unwrap();
    assert!(std::panic::catch_unwind(|| validate_spec("bad", &bad)).is_err());
}

/// Each EnvoyFilter patch of the connection manager, merged into the shipped
/// config of its role, is accepted by real Envoy.
#[test]
fn envoyfilter_patches_are_valid_envoy_config() {
    let mut patches = 0;
    for (path, doc) in istio_documents("EnvoyFilter") {
        for patch in doc["spec"]["configPatches"].as_sequence().unwrap() {
            assert_eq!(patch["applyTo"].as_str(), Some("NETWORK_FILTER"), "{path}");
            assert_eq!(patch["patch"]["operation"].as_str(), Some("MERGE"), "{path}");
            let value = &patch["patch"]["value"]["typed_config"];
            // The shipped config names target/…/wsgiproxy_filter.wasm: name the one this
            // run built (CARGO_TARGET_DIR may put it elsewhere).
            let shipped = std::fs::read_to_string(repo_root().join("envoy/middleware.yaml")).unwrap();
            let shipped = shipped.replace("target/wasm32-wasip1/release/wsgiproxy_filter.wasm", &wasm_path().to_string_lossy());
            let mut config: Yaml = serde_yaml::from_str(&shipped).unwrap();
            let hcm = hcm(&mut config);
            assert_eq!(hcm["@type"], value["@type"], "{path}");
            for (k, v) in value.as_mapping().unwrap() {
                hcm[k.as_str().unwrap()] = v.clone();
            }
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("patched.yaml");
            std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();
            let out = std::process::Command::new(envoy_bin())
                .args(["--mode", "validate", "--log-level", "error", "-c"])
                .arg(&file)
                .env("WSGIPROXY_KEY_K1", "validate-only-key-0123456789")
                .current_dir(repo_root())
                .output()
                .unwrap();
            assert!(out.status.success(), "{path}: {}", String::from_utf8_lossy(&out.stderr));
            patches += 1;
        }
    }
    assert!(patches >= 1, "no EnvoyFilter patch found");
}

/// Every document of `kind` in deploy/istio/*.yaml, with its file's name, in file order.
fn istio_documents(kind: &str) -> Vec<(String, Yaml)> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("deploy/istio")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut found = Vec::new();
    for path in files.iter().filter(|p| p.extension().and_then(|e| e.to_str()) == Some("yaml")) {
        let text = std::fs::read_to_string(path).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let doc = Yaml::deserialize(document).unwrap();
            if doc["kind"].as_str() == Some(kind) {
                found.push((path.file_name().unwrap().to_string_lossy().into_owned(), doc));
            }
        }
    }
    found
}
