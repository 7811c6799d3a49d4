//! wsgiproxy-echo: a small HTTP/1.1 backend that answers with a JSON description of
//! the request it received. Used by the demo, by the tests through real Envoy, as an
//! on-demand child of the sidecar, and as the upstream of the benchmarks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(about = "An HTTP backend that answers with what it received")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Port on 127.0.0.1 (when --listen is not given); else the PORT environment variable.
    #[arg(long)]
    port: Option<u16>,
    /// Name included in every answer.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Wait this long before listening (a slow start).
    #[arg(long, default_value_t = 0)]
    ready_delay_ms: u64,
    /// Answer `ok` without describing the request (benchmarks).
    #[arg(long)]
    fixed_body: bool,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

/// A string for JSON: the text itself when UTF-8, otherwise `b64:` + base64.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        Err(_) => format!("b64:{}", base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

fn query_values<'a>(query: &'a str, key: &'a str) -> impl Iterator<Item = String> + 'a {
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode_str(v).decode_utf8_lossy().into_owned())
    })
}

fn describe(name: &str, parts: &hyper::http::request::Parts, body: &[u8]) -> Bytes {
    let headers: Vec<serde_json::Value> = parts
        .headers
        .iter()
        .map(|(n, v)| serde_json::json!([n.as_str(), text(v.as_bytes())]))
        .collect();
    let uri = &parts.uri;
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    serde_json::json!({
        "name": name,
        "method": parts.method.as_str(),
        "path": uri.path(),
        "query": uri.query(),
        "uri": target,
        "headers": headers,
        "body": text(body),
        "body_len": body.len(),
    })
    .to_string()
    .into()
}

async fn handle(args: Arc<Args>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = incoming.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    // Special paths work under any prefix (`/myapp/__redirect`), as a backend mounted deeper sees them.
    let special = path.find("/__").map(|at| &path[at + 1..]).unwrap_or("");
    let segments: Vec<&str> = special.split('/').collect();
    let json = |status: StatusCode| {
        let mut r = Response::new(full(describe(&args.name, &parts, &body)));
        *r.status_mut() = status;
        r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
        r
    };
    let mut response = match segments.as_slice() {
        ["__sleep", ms] => {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            json(StatusCode::OK)
        }
        ["__status", code] => json(code.parse::<u16>().ok().and_then(|c| StatusCode::from_u16(c).ok()).unwrap_or(StatusCode::BAD_REQUEST)),
        ["__stream", chunks, ms] => {
            let chunks: usize = chunks.parse().unwrap_or(1);
            let every = Duration::from_millis(ms.parse().unwrap_or(0));
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                for i in 0..chunks {
                    if tx.send(Ok(Frame::data(Bytes::from(format!("chunk {i}\n"))))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(every).await;
                }
            });
            Response::new(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed())
        }
        ["__exit", code] => {
            let code: i32 = code.parse().unwrap_or(1);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                std::process::exit(code);
            });
            Response::new(full("bye\n"))
        }
        ["__redirect"] => {
            let to = query_values(&query, "to").next().unwrap_or_else(|| "/".into());
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = StatusCode::FOUND;
            if let Ok(v) = hyper::header::HeaderValue::from_str(&to) {
                r.headers_mut().insert("location", v.clone());
                r.headers_mut().insert("content-location", v);
            }
            r
        }
        ["__cookie"] => {
            let mut r = json(StatusCode::OK);
            for c in query_values(&query, "c") {
                if let Ok(v) = hyper::header::HeaderValue::from_str(&c) {
                    r.headers_mut().append("set-cookie", v);
                }
            }
            r
        }
        ["__headers"] => {
            let mut r = json(StatusCode::OK);
            for h in query_values(&query, "h") {
                if let Some((n, v)) = h.split_once(':') {
                    if let (Ok(n), Ok(v)) = (hyper::header::HeaderName::from_bytes(n.trim().as_bytes()), hyper::header::HeaderValue::from_str(v.trim())) {
                        r.headers_mut().append(n, v);
                    }
                }
            }
            r
        }
        _ if args.fixed_body => Response::new(full("ok\n")),
        _ => json(StatusCode::OK),
    };
    if let Ok(v) = hyper::header::HeaderValue::from_str(&args.name) {
        response.headers_mut().insert("x-echo-name", v);
    }
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let addr = match (args.listen, args.port, std::env::var("PORT").ok()) {
        (Some(addr), _, _) => addr,
        (None, Some(port), _) => SocketAddr::from(([127, 0, 0, 1], port)),
        (None, None, Some(port)) => SocketAddr::from(([127, 0, 0, 1], port.parse()?)),
        (None, None, None) => {
            eprintln!("wsgiproxy-echo: give --listen ADDR, --port N, or the PORT environment variable");
            std::process::exit(2);
        }
    };
    if args.ready_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(args.ready_delay_ms)).await;
    }
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("wsgiproxy-echo: cannot listen on {addr}: {e}");
            std::process::exit(98);
        }
    };
    println!("wsgiproxy-echo {} listening on {}", args.name, listener.local_addr()?);
    let args = Arc::new(args);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let args = Arc::clone(&args);
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(Arc::clone(&args), req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
            _ = terminate.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
