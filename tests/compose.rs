//! docker-compose.yml runs the official Envoy image of the version the tests use,
//! with the very envoy/*.yaml files the tests run, and is a valid compose file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_yaml::Value;
use support::*;

#[test]
fn compose_uses_the_tested_envoy_and_configs() {
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    let doc: Value = serde_yaml::from_str(&text).unwrap();
    let version = std::process::Command::new(envoy_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).to_string();
    // `{binary path} version: {commit}/{version}/Clean/RELEASE/BoringSSL`
    let tested = version
        .split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .expect("envoy --version names its version")
        .to_string();
    let mut envoys = 0;
    for (name, service) in doc["services"].as_mapping().unwrap() {
        let command: Vec<String> = service["command"].as_sequence().into_iter().flatten().filter_map(|c| c.as_str().map(str::to_string)).collect();
        if command.first().map(String::as_str) != Some("envoy") {
            continue;
        }
        envoys += 1;
        // The anchor merges the image in: serde_yaml keeps `<<` as a key.
        let image = service["image"].as_str().or_else(|| service["<<"]["image"].as_str()).or_else(|| doc["x-envoy"]["image"].as_str()).unwrap();
        assert_eq!(image, format!("envoyproxy/envoy:v{tested}"), "{name:?}");
        let config = &command[command.iter().position(|c| c == "-c").unwrap() + 1];
        assert!(config.starts_with("envoy/") && repo_root().join(config).exists(), "{name:?} runs {config}");
    }
    assert_eq!(envoys, 4, "one Envoy per shipped config");
    // The same files the tests run, every one of them but the native module's
    // (envoy/native-*.yaml load a libwsgiproxy.so built on the host for its Envoy).
    let shipped = std::fs::read_dir(repo_root().join("envoy"))
        .unwrap()
        .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with("native-"))
        .count();
    assert_eq!(shipped, envoys);
}

#[test]
fn compose_file_is_valid() {
    let Ok(out) = std::process::Command::new("docker-compose").args(["-f", "docker-compose.yml", "config", "-q"]).current_dir(repo_root()).output() else {
        panic!("docker-compose is not installed: run scripts/setup.sh");
    };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
