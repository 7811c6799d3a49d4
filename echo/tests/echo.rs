//! The echo backend, run as the binary and spoken to with raw HTTP/1.1 over TcpStream.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wsgiproxy-echo");

/// A running echo; killed when dropped.
struct Echo {
    child: Child,
    port: u16,
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Echo {
    /// Waits for the process to exit on its own.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "echo did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").args([&format!("-{name}"), &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The first stdout line, or None when it does not come within `timeout`.
fn first_line(stdout: ChildStdout, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(timeout).ok()
}

/// Starts echo with `--port` (or the PORT variable when `env_port`) and waits for its
/// "listening" line. Returns it with the time the line took.
fn start_timed(args: &[&str], env_port: bool) -> (Echo, Duration) {
    let port = free_port();
    let mut cmd = Command::new(BIN);
    cmd.env_remove("PORT");
    if env_port {
        cmd.env("PORT", port.to_string());
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    let began = Instant::now();
    let mut child = cmd.args(args).stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let echo = Echo { child, port };
    let line = first_line(stdout, Duration::from_secs(10)).expect("echo did not print its listening line");
    let took = began.elapsed();
    assert!(line.starts_with("wsgiproxy-echo ") && line.trim_end().ends_with(&format!(" listening on 127.0.0.1:{port}")), "{line:?}");
    (echo, took)
}

fn start(args: &[&str]) -> Echo {
    start_timed(args, false).0
}

struct Reply {
    status: u16,
    /// Lowercased names, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let at = raw.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..at]).unwrap().trim(), 16).unwrap();
        raw = &raw[at + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

fn parse(raw: &[u8]) -> Reply {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no head: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let body = &raw[at + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked");
    Reply { status, body: if chunked { dechunk(body) } else { body.to_vec() }, headers }
}

/// Sends raw bytes on a new connection and reads until the server closes it.
fn send(port: u16, raw: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    parse(&out)
}

fn get(port: u16, target: &str) -> Reply {
    send(port, format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").as_bytes())
}

#[test]
fn describes_a_get_with_query_and_repeated_headers() {
    let echo = start(&["--name", "e1"]);
    let r =
        send(echo.port, b"GET /a/b?x=1&y=%2F HTTP/1.1\r\nHost: h\r\nX-Rep: one\r\nX-Other: o\r\nX-Rep: two\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-echo-name"), Some("e1"));
    let v = r.json();
    assert_eq!(v["name"], "e1");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "x=1&y=%2F");
    assert_eq!(v["uri"], "/a/b?x=1&y=%2F");
    assert_eq!(v["body"], "");
    assert_eq!(v["body_len"], 0);
    let headers: Vec<(&str, &str)> =
        v["headers"].as_array().unwrap().iter().map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap())).collect();
    let reps: Vec<&str> = headers.iter().filter(|h| h.0 == "x-rep").map(|h| h.1).collect();
    assert_eq!(reps, ["one", "two"], "repeated headers are separate entries, in order");
    assert!(headers.contains(&("x-other", "o")) && headers.contains(&("host", "h")), "{headers:?}");
    assert_eq!(headers.len(), 5, "{headers:?}");

    let v = get(echo.port, "/no/query").json();
    assert_eq!(v["query"], serde_json::Value::Null);
    assert_eq!(get(echo.port, "/empty?").json()["query"], "");
}

#[test]
fn describes_a_post_body_and_non_utf8_bytes() {
    let echo = start(&[]);
    let r = send(echo.port, b"POST /form HTTP/1.1\r\nHost: h\r\nX-Name: Jos\xc3\xa9\r\nX-Bin: \xff\xfe\r\nContent-Length: 9\r\nConnection: close\r\n\r\nhello \"x\"");
    let v = r.json();
    assert_eq!(v["name"], "echo");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body"], "hello \"x\"");
    assert_eq!(v["body_len"], 9);
    let headers = v["headers"].as_array().unwrap();
    let value = |name: &str| headers.iter().find(|h| h[0] == name).unwrap()[1].clone();
    assert_eq!(value("x-name"), "Jos\u{e9}");
    assert_eq!(value("x-bin"), "b64://4=");
    assert_eq!(value("content-length"), "9");

    let v = send(echo.port, b"PUT /bin HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: close\r\n\r\na\x00\xff").json();
    assert_eq!(v["body"], "b64:YQD/");
    assert_eq!(v["body_len"], 3);
}

#[test]
fn keeps_the_connection_alive() {
    let echo = start(&[]);
    let mut s = TcpStream::connect(("127.0.0.1", echo.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    // Read exactly one response: the head, then content-length bytes.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let first = loop {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed after the first response");
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let r = parse(&raw);
            let len: usize = r.header("content-length").unwrap().parse().unwrap();
            if raw.len() >= at + 4 + len {
                break r;
            }
        }
    };
    assert_eq!(first.json()["path"], "/one");
    s.write_all(b"GET /two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(parse(&rest).json()["path"], "/two");
}

#[test]
fn status_redirect_cookie_and_headers() {
    let echo = start(&[]);
    let r = get(echo.port, "/__status/418");
    assert_eq!(r.status, 418);
    assert_eq!(r.json()["path"], "/__status/418");
    assert_eq!(get(echo.port, "/deep/prefix/__status/503").status, 503, "special paths work under a prefix");
    assert_eq!(get(echo.port, "/__status/abc").status, 400);
    assert_eq!(get(echo.port, "/plain?x=/__status/418").status, 200, "only the path counts");

    let r = get(echo.port, "/__redirect?to=http%3A%2F%2Fb.example%2Fx%3Fy%3D1");
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://b.example/x?y=1"));
    assert_eq!(r.header("content-location"), Some("http://b.example/x?y=1"));
    assert!(r.body.is_empty());

    let r = get(echo.port, "/app/__cookie?c=sid%3D1%3B%20Path%3D%2Fapp&c=b%3D2");
    assert_eq!(r.status, 200);
    assert_eq!(r.all("set-cookie"), ["sid=1; Path=/app", "b=2"]);

    let r = get(echo.port, "/__headers?h=x-one%3A1&h=content-type:text%2Fx&h=x-one:%202");
    assert_eq!(r.status, 200);
    assert_eq!(r.all("x-one"), ["1", "2"]);
    assert_eq!(r.all("content-type"), ["text/x"]);
    assert_eq!(r.json()["path"], "/__headers");
}

#[test]
fn sleep_and_stream() {
    let echo = start(&[]);
    let began = Instant::now();
    assert_eq!(get(echo.port, "/__sleep/300").json()["path"], "/__sleep/300");
    assert!(began.elapsed() >= Duration::from_millis(300));

    let began = Instant::now();
    let r = get(echo.port, "/__stream/3/100");
    assert!(began.elapsed() >= Duration::from_millis(200));
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.text(), "chunk 0\nchunk 1\nchunk 2\n");
}

#[test]
fn fixed_body() {
    let echo = start(&["--fixed-body", "--name", "bench"]);
    let r = get(echo.port, "/anything?x=1");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_eq!(r.header("x-echo-name"), Some("bench"));
    let r = send(echo.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    assert_eq!(r.text(), "ok\n");
    assert_eq!(get(echo.port, "/__status/201").status, 201, "special paths still work");
}

#[test]
fn ready_delay_postpones_listening() {
    let (echo, took) = start_timed(&["--ready-delay-ms", "700"], false);
    assert!(took >= Duration::from_millis(700), "listening after {took:?}");
    assert_eq!(get(echo.port, "/").status, 200);

    let port = free_port();
    let _slow = Echo {
        child: Command::new(BIN).args(["--port", &port.to_string(), "--ready-delay-ms", "2000"]).stdout(Stdio::null()).spawn().unwrap(),
        port,
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "not listening yet");
}

#[test]
fn port_from_the_environment() {
    let (echo, _) = start_timed(&[], true);
    assert_eq!(get(echo.port, "/").json()["path"], "/");
}

#[test]
fn listen_address() {
    let port = free_port();
    let mut child =
        Command::new(BIN).args(["--listen", &format!("127.0.0.1:{port}")]).env("PORT", "1").stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let echo = Echo { child, port };
    let line = first_line(stdout, Duration::from_secs(10)).unwrap();
    assert_eq!(line, format!("wsgiproxy-echo echo listening on 127.0.0.1:{port}\n"));
    assert_eq!(get(echo.port, "/").status, 200);
}

#[test]
fn no_address_is_a_usage_error() {
    let out = Command::new(BIN).env_remove("PORT").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new(BIN).env("PORT", "eighty").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn bind_failure_exits_98() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN).args(["--port", &port.to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(98));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
}

#[test]
fn signals_and_exit_path() {
    for signal in ["TERM", "INT"] {
        let mut echo = start(&[]);
        echo.signal(signal);
        assert_eq!(echo.wait_exit(Duration::from_secs(5)).code(), Some(0), "SIG{signal}");
    }
    let mut exiting = start(&[]);
    // A stop during --ready-delay-ms is clean too.
    let port = free_port();
    let mut delayed = Echo {
        child: Command::new(BIN).args(["--port", &port.to_string(), "--ready-delay-ms", "5000"]).stdout(Stdio::null()).spawn().unwrap(),
        port,
    };
    std::thread::sleep(Duration::from_millis(200));
    delayed.signal("TERM");
    assert_eq!(delayed.wait_exit(Duration::from_secs(2)).code(), Some(0));

    let r = get(exiting.port, "/x/__exit/7");
    assert_eq!(r.text(), "bye\n");
    assert_eq!(exiting.wait_exit(Duration::from_secs(5)).code(), Some(7));
}
