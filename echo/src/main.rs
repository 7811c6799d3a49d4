//! wsgiproxy-echo: a small HTTP/1.1 backend that answers with a JSON description of
//! the request it received. Used by the demo, by the tests through real Envoy, as an
//! on-demand child of the sidecar, and as the upstream of the benchmarks.
//!
//! Special paths (recognised on the path only, also under a prefix such as
//! `/blog/__redirect`, as a backend mounted deeper sees them):
//!
//! * `/__sleep/{ms}`: wait, then answer the JSON description.
//! * `/__stream/{chunks}/{ms}`: a chunked body of `chunk i\n` lines, one every `ms`.
//! * `/__status/{code}`: the JSON description with that status.
//! * `/__exit/{code}`: answer `bye\n`, then exit with that code ~50 ms later.
//! * `/__redirect?to=URL`: 302 with `location` and `content-location` set to URL.
//! * `/__cookie?c=COOKIE&c=...`: one `set-cookie` per `c`, and the JSON description.
//! * `/__headers?h=name:value&h=...`: each `h` becomes a response header, and the JSON description.

use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::{Instant, Sleep};

/// Exit code when no address to listen on was given (same as clap's usage errors).
const EXIT_USAGE: i32 = 2;
/// Exit code when the address cannot be bound (EADDRINUSE on Linux is 98).
const EXIT_BIND: i32 = 98;

#[derive(Parser, Debug)]
#[command(name = "wsgiproxy-echo", about = "An HTTP/1.1 backend that answers with what it received")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Port on 127.0.0.1 (when --listen is not given); else the PORT environment variable.
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Name included in every answer (JSON field `name`, header `x-echo-name`).
    #[arg(long, default_value = "echo")]
    name: String,
    /// Wait this long before listening (a slow start).
    #[arg(long, value_name = "N", default_value_t = 0)]
    ready_delay_ms: u64,
    /// Answer `ok\n` without describing the request (benchmarks); special paths still work.
    #[arg(long)]
    fixed_body: bool,
}

/// What every connection shares.
struct State {
    name: String,
    name_header: HeaderValue,
    fixed_body: bool,
}

type Body = Either<Full<Bytes>, Chunks>;

fn full(body: impl Into<Bytes>) -> Body {
    Either::Left(Full::new(body.into()))
}

static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
static X_ECHO_NAME: HeaderName = HeaderName::from_static("x-echo-name");

/// A plain-text response.
fn text_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN.clone());
    r
}

/// A request echo cannot answer as asked: sent back as a short text answer.
struct Refusal {
    status: StatusCode,
    why: String,
}

fn bad_request(why: String) -> Refusal {
    Refusal { status: StatusCode::BAD_REQUEST, why }
}

/// The body of `/__stream/{chunks}/{ms}`: `chunk i\n` at `i * every` after the start.
/// Its size is unknown to hyper, so it goes out with chunked transfer encoding.
struct Chunks {
    next: u64,
    total: u64,
    every: Duration,
    start: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if this.next >= this.total {
            return Poll::Ready(None);
        }
        if this.next > 0 {
            let at = u32::try_from(this.next).ok().and_then(|n| this.every.checked_mul(n)).and_then(|d| this.start.checked_add(d));
            let Some(at) = at else { return Poll::Ready(None) };
            let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        let line = format!("chunk {}\n", this.next);
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(line)))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.total
    }
}

/// Writes `bytes` as a JSON string: the text itself when UTF-8, otherwise `b64:` + base64.
fn write_text(out: &mut Vec<u8>, bytes: &[u8]) -> serde_json::Result<()> {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::to_writer(out, s),
        Err(_) => {
            let encoded = format!("b64:{}", base64::engine::general_purpose::STANDARD.encode(bytes));
            serde_json::to_writer(out, &encoded)
        }
    }
}

/// The JSON description of a request. Headers come in hyper's `HeaderMap` order: names in
/// the order first received, every value of a repeated name in order, as separate entries.
fn describe(name: &str, parts: &Parts, body: &[u8], trailers: Option<&HeaderMap>) -> serde_json::Result<Vec<u8>> {
    let uri = &parts.uri;
    let mut out = Vec::with_capacity(256 + body.len() + parts.headers.len() * 48);
    out.extend_from_slice(b"{\"name\":");
    serde_json::to_writer(&mut out, name)?;
    out.extend_from_slice(b",\"method\":");
    serde_json::to_writer(&mut out, parts.method.as_str())?;
    out.extend_from_slice(b",\"path\":");
    serde_json::to_writer(&mut out, uri.path())?;
    out.extend_from_slice(b",\"query\":");
    serde_json::to_writer(&mut out, &uri.query())?;
    out.extend_from_slice(b",\"uri\":");
    // The request target as sent: origin form (`/a?b`) or, from a forward proxy, absolute form.
    match (uri.scheme(), uri.authority(), uri.path_and_query()) {
        (None, None, Some(target)) => serde_json::to_writer(&mut out, target.as_str())?,
        _ => serde_json::to_writer(&mut out, &uri.to_string())?,
    }
    out.extend_from_slice(b",\"headers\":");
    write_header_list(&mut out, &parts.headers)?;
    out.extend_from_slice(b",\"body\":");
    write_text(&mut out, body)?;
    out.extend_from_slice(b",\"body_len\":");
    out.extend_from_slice(body.len().to_string().as_bytes());
    // Only a request that had trailers says so (the other descriptions stay as they were).
    if let Some(trailers) = trailers.filter(|t| !t.is_empty()) {
        out.extend_from_slice(b",\"trailers\":");
        write_header_list(&mut out, trailers)?;
    }
    out.push(b'}');
    Ok(out)
}

/// A header map as a JSON list of `[name, value]` pairs, in the map's order.
fn write_header_list(out: &mut Vec<u8>, headers: &HeaderMap) -> serde_json::Result<()> {
    out.push(b'[');
    for (i, (n, v)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        serde_json::to_writer(&mut *out, n.as_str())?;
        out.push(b',');
        write_text(out, v.as_bytes())?;
        out.push(b']');
    }
    out.push(b']');
    Ok(())
}

/// The percent-decoded values of `key` in a query string, in order.
fn query_values<'a>(query: &'a str, key: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode_str(k).eq(key.bytes())).then(|| percent_decode_str(v).collect())
    })
}

/// The special part of a path: from the first segment naming a special path to the end.
fn special(path: &str) -> Option<Vec<&str>> {
    const NAMES: [&str; 7] = ["__sleep", "__stream", "__status", "__exit", "__redirect", "__cookie", "__headers"];
    if !path.contains("/__") {
        return None;
    }
    let segments: Vec<&str> = path.split('/').collect();
    let at = segments.iter().position(|s| NAMES.contains(s))?;
    Some(segments[at..].to_vec())
}

fn number<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, Refusal> {
    s.parse().map_err(|_| bad_request(format!("{what} is not a number: {s:?}")))
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut response = match respond(&state, req).await {
        Ok(r) => r,
        Err(Refusal { status, why }) => text_response(status, format!("wsgiproxy-echo: {why}\n")),
    };
    response.headers_mut().entry(X_ECHO_NAME.clone()).or_insert_with(|| state.name_header.clone());
    Ok(response)
}

async fn respond(state: &State, req: Request<Incoming>) -> Result<Response<Body>, Refusal> {
    let (parts, incoming) = req.into_parts();
    let segments = special(parts.uri.path()).unwrap_or_default();

    if state.fixed_body && segments.is_empty() {
        // The benchmark path: read and drop the body (so the connection stays reusable), build nothing.
        let mut incoming = incoming;
        while let Some(frame) = incoming.frame().await {
            if frame.is_err() {
                break;
            }
        }
        return Ok(text_response(StatusCode::OK, Bytes::from_static(b"ok\n")));
    }

    let (body, trailers) = match incoming.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (collected.to_bytes(), trailers)
        }
        Err(e) => return Err(bad_request(format!("cannot read the request body: {e}"))),
    };
    let json = |status: StatusCode| -> Result<Response<Body>, Refusal> {
        let description = describe(&state.name, &parts, &body, trailers.as_ref())
            .map_err(|e| Refusal { status: StatusCode::INTERNAL_SERVER_ERROR, why: e.to_string() })?;
        let mut r = Response::new(full(description));
        *r.status_mut() = status;
        r.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON.clone());
        Ok(r)
    };
    let query = parts.uri.query().unwrap_or("");
    match segments.as_slice() {
        [] => json(StatusCode::OK),
        ["__sleep", ms] => {
            tokio::time::sleep(Duration::from_millis(number("__sleep milliseconds", ms)?)).await;
            json(StatusCode::OK)
        }
        ["__status", code] => {
            let code: u16 = number("__status code", code)?;
            match StatusCode::from_u16(code) {
                // 1xx are not final answers: hyper would send a broken response.
                Ok(status) if code >= 200 => json(status),
                _ => Err(bad_request(format!("__status code out of range: {code}"))),
            }
        }
        ["__stream", chunks, ms] => {
            let body = Chunks {
                next: 0,
                total: number("__stream chunks", chunks)?,
                every: Duration::from_millis(number("__stream milliseconds", ms)?),
                start: Instant::now(),
                timer: None,
            };
            let mut r = Response::new(Either::Right(body));
            r.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN.clone());
            Ok(r)
        }
        ["__exit", code] => {
            let code: i32 = number("__exit code", code)?;
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            let mut r = text_response(StatusCode::OK, Bytes::from_static(b"bye\n"));
            r.headers_mut().insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
            Ok(r)
        }
        ["__redirect"] => {
            let Some(to) = query_values(query, "to").next() else {
                return Err(bad_request("__redirect needs ?to=URL".into()));
            };
            let to = HeaderValue::from_bytes(&to).map_err(|_| bad_request("__redirect: to is not a valid header value".into()))?;
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            r.headers_mut().insert(hyper::header::LOCATION, to.clone());
            r.headers_mut().insert(hyper::header::CONTENT_LOCATION, to);
            Ok(r)
        }
        ["__cookie"] => {
            let mut cookies = Vec::new();
            for c in query_values(query, "c") {
                cookies.push(HeaderValue::from_bytes(&c).map_err(|_| bad_request("__cookie: c is not a valid header value".into()))?);
            }
            let mut r = json(StatusCode::OK)?;
            for c in cookies {
                r.headers_mut().append(hyper::header::SET_COOKIE, c);
            }
            Ok(r)
        }
        ["__headers"] => {
            let mut headers = Vec::new();
            for h in query_values(query, "h") {
                let invalid = || bad_request(format!("__headers: not name:value: {:?}", String::from_utf8_lossy(&h)));
                let colon = h.iter().position(|&b| b == b':').ok_or_else(invalid)?;
                let name = HeaderName::from_bytes(h[..colon].trim_ascii()).map_err(|_| invalid())?;
                let value = HeaderValue::from_bytes(h[colon + 1..].trim_ascii()).map_err(|_| invalid())?;
                headers.push((name, value));
            }
            let mut r = json(StatusCode::OK)?;
            // The first value of a name replaces a default (content-type, x-echo-name), later ones add to it.
            let mut seen: Vec<HeaderName> = Vec::new();
            for (name, value) in headers {
                if seen.contains(&name) {
                    r.headers_mut().append(name, value);
                } else {
                    r.headers_mut().insert(name.clone(), value);
                    seen.push(name);
                }
            }
            Ok(r)
        }
        _ => Err(bad_request(format!("unknown special path {:?}", parts.uri.path()))),
    }
}

/// Where to listen: --listen, else --port, else $PORT, on 127.0.0.1.
fn listen_addr(args: &Args) -> Result<SocketAddr, String> {
    if let Some(addr) = args.listen {
        return Ok(addr);
    }
    let port = match (args.port, std::env::var("PORT")) {
        (Some(port), _) => port,
        (None, Ok(port)) if !port.trim().is_empty() => port.trim().parse().map_err(|_| format!("PORT is not a port number: {port:?}"))?,
        _ => return Err("give --listen ADDR, --port N, or the PORT environment variable".into()),
    };
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let addr = match listen_addr(&args) {
        Ok(addr) => addr,
        Err(why) => {
            eprintln!("wsgiproxy-echo: {why}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let Ok(name_header) = HeaderValue::from_bytes(args.name.as_bytes()) else {
        eprintln!("wsgiproxy-echo: --name cannot be sent as a header: {:?}", args.name);
        std::process::exit(EXIT_USAGE);
    };

    // Signals are handled from the start, so a stop during --ready-delay-ms is clean too.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };
    tokio::pin!(shutdown);

    if args.ready_delay_ms > 0 {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(args.ready_delay_ms)) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wsgiproxy-echo: cannot listen on {addr}: {e}");
            std::process::exit(EXIT_BIND);
        }
    };
    let bound = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        // A closed stdout must not stop the server.
        let _ = writeln!(out, "wsgiproxy-echo {} listening on {bound}", args.name);
        let _ = out.flush();
    }

    let state = Arc::new(State { name: args.name, name_header, fixed_body: args.fixed_body });
    let builder = http1::Builder::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors and the like: do not spin.
                        eprintln!("wsgiproxy-echo: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&state);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&state), req));
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        }
    }
}
