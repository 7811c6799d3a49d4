//! Docker helpers shared by the tests that run containers and Swarm services
//! (`containers.rs`, `swarm.rs`): the echo image, built FROM scratch and `docker
//! import`ed (nothing is pulled), names of the test's own, and `docker` calls.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use super::support::bin_path;

/// True when a Docker engine answers; says SKIPPED once when not.
pub fn docker_available(test: &str) -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    let available = *AVAILABLE.get_or_init(|| {
        let status = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status();
        status.is_ok_and(|s| s.success())
    });
    if !available {
        eprintln!("SKIPPED {test}: `docker info` fails (no Docker engine to run container apps in)");
    }
    available
}

/// `docker ARGS`, failing the test with what Docker said; its output, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn quietly(args: &[&str]) -> bool {
    Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A name no other test (or test run) uses.
pub fn unique(what: &str) -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("wsgiproxy-test-{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Copies an executable into `root` at `dest`, with every library `ldd` lists for
/// it (at the same path) and the loader.
pub fn add_executable(root: &Path, src: &Path, dest: &str) {
    use std::os::unix::fs::PermissionsExt;
    let place = |from: &Path, to: &str| {
        let target = root.join(to.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(std::fs::canonicalize(from).unwrap(), &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    place(src, dest);
    let ldd = Command::new("ldd").arg(src).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=> ") {
            Some((_, after)) => after.split(' ').next().unwrap_or_default(),
            None => line.trim().split(' ').next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            place(Path::new(path), path);
        }
    }
}

/// The echo image (built once per test run, and once per echo binary).
pub fn echo_image() -> &'static str {
    static IMAGE: OnceLock<String> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let echo = bin_path("wsgiproxy-echo");
        // FNV-1a of the binary: a rebuilt echo gets an image of its own.
        let hash = std::fs::read(&echo).unwrap().iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100000001b3));
        let image = format!("wsgiproxy-test/echo:{hash:016x}");
        if quietly(&["image", "inspect", &image]) {
            return image;
        }
        let root = tempfile::tempdir().unwrap();
        add_executable(root.path(), &echo, "/echo");
        add_executable(root.path(), Path::new("/bin/sh"), "/bin/sh");
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        let mut tar = Command::new("tar").arg("-C").arg(root.path()).args(["-c", "."]).stdout(Stdio::piped()).spawn().unwrap();
        let imported = Command::new("docker")
            .args(["import", "--change", "ENTRYPOINT [\"/echo\"]", "--message", "wsgiproxy echo for tests", "-", &image])
            .stdin(Stdio::from(tar.stdout.take().unwrap()))
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success(), "tar of the image's files failed");
        assert!(imported.status.success(), "docker import: {}", String::from_utf8_lossy(&imported.stderr));
        // Images of earlier echo builds go, once no container uses them.
        for old in docker(&["image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "wsgiproxy-test/echo"]).lines() {
            if old != image {
                quietly(&["image", "rm", old]);
            }
        }
        image
    })
}
