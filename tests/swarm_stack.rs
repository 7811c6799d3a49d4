//! The stack on Docker Swarm (deploy/swarm/stack.yml), deployed for real with
//! `docker stack deploy` by `scripts/compose.sh swarm-up`, with the image that
//! script builds: from the client service's container, a request through the edge is
//! believed by the backend and a forgery sent straight to the backend is not, the
//! on-demand Swarm service is scaled up by a request and back to 0 when idle, and
//! `swarm-down` removes the stack without a trace. The swarm: see
//! `tests/support/swarm.rs`. Says SKIPPED and passes when `docker info` fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/docker.rs"]
mod docker_support;
mod support;
#[path = "support/swarm.rs"]
mod swarm_support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use docker_support::*;
use serde_json::Value as Json;
use support::*;
use swarm_support::{swarm, SwarmGuard};

/// Its own stack name: the test never touches a stack a user deployed.
const STACK: &str = "wsgiproxy-swarm-test";
/// The signing key the edge and the backend share in the test's stack.
const KEY: &str = "swarm-test-key-0123456789abcdef";

fn script(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo_root().join("scripts/compose.sh"))
        .args(args)
        .current_dir(repo_root())
        .env("WSGIPROXY_STACK", STACK)
        // The image is assembled from what scripts/test.sh built (cargo's lock is ours).
        .env("WSGIPROXY_COMPOSE_PROFILE", "debug")
        .env("WSGIPROXY_COMPOSE_SKIP_CARGO", "1")
        .env("CARGO_TARGET_DIR", target_dir())
        .env("WSGIPROXY_KEY_K1", KEY)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn script_ok(args: &[&str]) {
    let out = script(args);
    assert!(
        out.status.success(),
        "compose.sh {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the stack left in the engine: services, networks, containers.
fn leftovers() -> Vec<String> {
    let label = format!("label=com.docker.stack.namespace={STACK}");
    let mut found = Vec::new();
    for what in [&["service", "ls"][..], &["network", "ls"], &["ps", "-a"]] {
        let out = Command::new("docker").args(what).args(["-q", "--filter", &label]).output().unwrap();
        found.extend(String::from_utf8_lossy(&out.stdout).lines().map(|id| format!("{} {id}", what[0])));
    }
    found
}

/// The stack, removed when dropped (also when the test fails half-way).
struct Stack {
    _swarm: Arc<SwarmGuard>,
}

impl Stack {
    fn up(swarm: Arc<SwarmGuard>) -> Stack {
        // Built artifacts the image is assembled from (with how to build them).
        let _ = (wasm_path(), bin_path("wsgiproxy-echo"), bin_path("wsgiproxy-sidecar"), envoy_bin());
        let _ = script(&["swarm-down"]);
        let stack = Stack { _swarm: swarm };
        script_ok(&["swarm-up"]);
        stack
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = script(&["swarm-down"]);
    }
}

/// The container of a service's one task.
fn container(service: &str) -> String {
    docker(&["ps", "-q", "--filter", &format!("label=com.docker.swarm.service.name={STACK}_{service}")])
}

fn exec(service: &str, args: &[&str]) -> Output {
    let id = container(service);
    Command::new("docker").args(["exec", &id]).args(args).output().unwrap()
}

/// One request with curl from the client's container (`--raw`: the body as sent).
fn from_client(url: &str, headers: &[&str]) -> Response {
    let mut args = vec!["curl", "-sS", "-i", "--raw", "--max-time", "40"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.push(url);
    let out = exec("client", &args);
    assert!(out.status.success(), "curl {url}: {}", String::from_utf8_lossy(&out.stderr));
    read_response(&mut &out.stdout[..])
}

fn replicas() -> u64 {
    docker(&["service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", &format!("{STACK}_blog-service")]).parse().unwrap()
}

fn sidecar_status() -> Json {
    let out = exec("sidecar", &["curl", "-sS", "--max-time", "10", "http://127.0.0.1:9090/v1/status"]);
    serde_json::from_slice::<Json>(&out.stdout).unwrap()["apps"]["blog-service"].clone()
}

#[test]
fn the_stack_on_swarm_scales_its_on_demand_service_refuses_forgeries_and_goes_away_cleanly() {
    let Some(swarm) = swarm("the_stack_on_swarm_scales_its_on_demand_service_refuses_forgeries_and_goes_away_cleanly") else { return };
    let stack = Stack::up(swarm);
    assert_eq!(replicas(), 0, "deployed at 0 replicas");
    let client_ip = docker(&[
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"{STACK}_client\").IPAddress}}}}"),
        &container("client"),
    ]);
    assert!(client_ip.starts_with("10.214.1."), "the client is on the client network: {client_ip}");

    // Through the edge: the backend believes the edge (its network, its signature),
    // and the app receives the user and the client's own address.
    let r = from_client("http://edge:10000/hello?x=1", &["X-Demo-User: alice", "X-Forwarded-For: 6.6.6.6"]);
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.received();
    assert_eq!(got.0["name"], "demo-app");
    assert_eq!(got.header("x-remote-user").as_deref(), Some("alice"), "{:?}", got.0);
    assert_eq!(got.header("x-forwarded-for"), Some(client_ip.clone()), "the client's own address, not its claim");
    // From the client network straight to the backend: not believed, whatever it claims.
    let r = from_client(
        "http://backend:10001/hello",
        &["X-WSGIProxy-Str-0: REMOTE_USER root", "X-Forwarded-For: 10.214.2.2", "X-Remote-User: root"],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = r.received();
    assert_eq!(got.header("x-remote-user"), None, "a forgery from the client network was believed: {:?}", got.0);
    assert_eq!(got.header("x-forwarded-for"), Some(client_ip.clone()));

    // The first request scales the service up; what the app gets is the client's own
    // address, whatever the client claimed, and no destination or Envoy header.
    let began = Instant::now();
    let r = from_client(
        "http://spawn:10005/hello",
        &["X-Forwarded-For: 6.6.6.6", "X-Envoy-Original-Dst-Host: sidecar:9090", "X-WSGIProxy-Str-0: REMOTE_USER root"],
    );
    eprintln!("scaled up and answered in {:?}", began.elapsed());
    let idle = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-wsgiproxy-cold-start-ms").is_some(), "it waited for the scale-up");
    let got = r.received();
    assert_eq!(got.0["name"], "blog-service", "the on-demand service answered");
    assert_eq!(got.header("x-forwarded-for"), Some(client_ip.clone()), "the client's own address, not its claim");
    for absent in ["x-envoy-original-dst-host", "x-envoy-external-address", "x-remote-user"] {
        assert_eq!(got.header(absent), None, "{absent} reached the app: {:?}", got.names());
    }
    assert!(!got.0["headers"].to_string().contains("REMOTE_USER root"), "the forged claim reached the app: {}", got.0);
    assert_eq!(replicas(), 1);
    let status = sidecar_status();
    assert_eq!((status["state"].as_str(), status["started_by_sidecar"].as_bool()), (Some("ready"), Some(true)), "{status}");
    assert!(status["upstream"].as_str().unwrap().starts_with("10.214.4."), "a task's own address on ondemand: {status}");
    // The sidecar's control API is not on the client network: nothing to forge there.
    let reach = exec("client", &["curl", "-sS", "--max-time", "5", "-X", "POST", "http://sidecar:9090/v1/activity/blog-service"]);
    assert!(!reach.status.success(), "the client reached the sidecar: {}", String::from_utf8_lossy(&reach.stdout));

    // Idle for 5 s: back to 0; the next request scales it up again.
    let deadline = idle + Duration::from_secs(30);
    while replicas() != 0 {
        assert!(Instant::now() < deadline, "not scaled down when idle: {}", sidecar_status());
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("scaled down {:?} after the last request", idle.elapsed());
    assert!(idle.elapsed() >= Duration::from_secs(5));
    let again = from_client("http://spawn:10005/again", &[]);
    assert_eq!(again.status, 200, "{}", again.text());
    assert!(again.header("x-wsgiproxy-cold-start-ms").is_some());

    // Removed without a trace.
    drop(stack);
    assert_eq!(leftovers(), Vec::<String>::new(), "left behind by swarm-down");
}

/// The Swarm stack's Envoys run the shipped chains: its spawn Envoy envoy/spawn.yaml's,
/// its edge and backend the compose stack's (which tests/compose.rs holds to
/// envoy/app.yaml and envoy/middleware.yaml) without their metrics listener. Only the
/// places differ: the .wasm's path, addresses and how they are found, the app, its
/// network, the trusted range, the stat prefix.
#[test]
fn the_swarm_stack_runs_the_shipped_chains() {
    use serde_yaml::Value as Yaml;
    fn places_out(v: &mut Yaml) {
        match v {
            Yaml::Mapping(m) => {
                for (k, v) in m.iter_mut() {
                    match k.as_str() {
                        Some("filename" | "stat_prefix" | "socket_address") => *v = Yaml::Null,
                        Some("type") if v.as_str() == Some("STRICT_DNS") => *v = Yaml::from("STATIC"),
                        Some("value") if v.as_str().is_some_and(|s| s.trim_start().starts_with('{')) => {
                            let mut config: Json = serde_json::from_str(v.as_str().unwrap()).unwrap();
                            for place in ["app", "upstream_networks", "trust_ips"] {
                                config.as_object_mut().unwrap().remove(place);
                            }
                            *v = Yaml::from(config.to_string());
                        }
                        _ => places_out(v),
                    }
                }
            }
            Yaml::Sequence(s) => s.iter_mut().for_each(places_out),
            _ => {}
        }
    }
    let load = |file: &str| -> Yaml {
        let mut doc: Yaml = serde_yaml::from_str(&std::fs::read_to_string(repo_root().join(file)).unwrap()).unwrap();
        places_out(&mut doc);
        for cluster in doc["static_resources"]["clusters"].as_sequence_mut().unwrap() {
            let cluster = cluster.as_mapping_mut().unwrap();
            cluster.remove("dns_lookup_family");
            cluster.remove("dns_refresh_rate");
        }
        doc
    };
    for name in ["edge", "backend"] {
        let swarm = load(&format!("deploy/swarm/{name}.yaml"));
        let mut compose = load(&format!("deploy/compose/{name}.yaml"));
        for (list, item) in [("listeners", "metrics"), ("clusters", "envoy_admin")] {
            let items = compose["static_resources"][list].as_sequence_mut().unwrap();
            items.retain(|i| i["name"].as_str() != Some(item));
        }
        assert!(swarm == compose, "deploy/swarm/{name}.yaml differs from deploy/compose/{name}.yaml beyond places");
    }
    let (swarm, shipped) = (load("deploy/swarm/spawn.yaml"), load("envoy/spawn.yaml"));
    let chains = |doc: &Yaml| doc["static_resources"]["listeners"][0]["filter_chains"].clone();
    assert_eq!(swarm["static_resources"]["listeners"].as_sequence().map(Vec::len), Some(1));
    assert!(chains(&swarm) == chains(&shipped), "deploy/swarm/spawn.yaml's chain differs from envoy/spawn.yaml's");
    let cluster = |doc: &Yaml, name: &str| {
        doc["static_resources"]["clusters"].as_sequence().unwrap().iter().find(|c| c["name"].as_str() == Some(name)).cloned().unwrap()
    };
    assert!(cluster(&swarm, "spawned") == cluster(&shipped, "spawned"), "the on-demand cluster differs");
}
