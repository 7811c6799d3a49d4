//! The echo backend describes exactly what it received.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Echo(Child, u16);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(args: &[&str], env_port: bool) -> Echo {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgiproxy-echo"));
    if env_port {
        cmd.env("PORT", port.to_string());
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    let child = cmd.args(args).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "echo did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    Echo(child, port)
}

fn send(port: u16, raw: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn describes_the_request() {
    let echo = start(&["--name", "e1"], false);
    let (head, body) = send(
        echo.1,
        b"POST /a/b?x=1&y=2 HTTP/1.1\r\nHost: h\r\nX-Rep: one\r\nX-Rep: two\r\nX-Bin: \xff\xfe\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody",
    );
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(head.to_ascii_lowercase().contains("x-echo-name: e1"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(v["uri"], "/a/b?x=1&y=2");
    assert_eq!(v["body"], "body");
    let headers = v["headers"].as_array().unwrap();
    let reps: Vec<&str> = headers.iter().filter(|h| h[0] == "x-rep").map(|h| h[1].as_str().unwrap()).collect();
    assert_eq!(reps, ["one", "two"]);
    assert_eq!(headers.iter().find(|h| h[0] == "x-bin").unwrap()[1], "b64://4=");
}

#[test]
fn special_paths() {
    let echo = start(&[], true);
    let (head, _) = send(echo.1, b"GET /deep/__status/418 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 418"), "{head}");
    let (head, _) = send(echo.1, b"GET /__redirect?to=%2Fx%3Fy HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 302") && head.contains("location: /x?y"), "{head}");
    let (head, _) = send(echo.1, b"GET /__cookie?c=a%3D1&c=b%3D2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert!(head.contains("set-cookie: a=1") && head.contains("set-cookie: b=2"), "{head}");
}

#[test]
fn fixed_body_and_bind_failure() {
    let echo = start(&["--fixed-body"], false);
    let (_, body) = send(echo.1, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_eq!(body, "ok\n");
    let status = Command::new(env!("CARGO_BIN_EXE_wsgiproxy-echo"))
        .args(["--port", &echo.1.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(98));
}
