//! The control API the filter calls through Envoy (loopback only).
//!
//! - `POST /v1/ensure/{app}`: make sure the app is up; long-polls through a start
//!   (or for `x-wsgiproxy-wait-ms` at most, then answers `202`: still starting).
//! - `POST /v1/activity/{app}`: a worker's activity report; renews its lease.
//! - `GET /v1/status`, `GET /healthz`, `GET /metrics`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::app::{App, Ensured, Granted};
use crate::context::Context;

pub struct Api {
    pub apps: BTreeMap<String, Arc<App>>,
    pub ctx: Arc<Context>,
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert("content-type", v);
    }
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{}\n", body.into()))
}

fn header(name: &str, value: impl ToString, r: &mut Reply) {
    if let Ok(v) = value.to_string().parse() {
        if let Ok(n) = hyper::header::HeaderName::from_bytes(name.as_bytes()) {
            r.headers_mut().insert(n, v);
        }
    }
}

fn granted(app: &str, g: &Granted) -> Reply {
    let upstream = g.upstream.to_string();
    let lease_ms = g.lease.as_millis() as u64;
    let waited_ms = g.waited.map(|w| w.as_millis() as u64);
    let body = serde_json::json!({
        "app": app, "state": "ready", "upstream": upstream, "port": g.upstream.port(),
        "lease_ms": lease_ms, "waited_ms": waited_ms.unwrap_or(0), "cold_start": waited_ms.is_some(),
    });
    let mut r = reply(StatusCode::OK, "application/json", body.to_string());
    header("x-wsgiproxy-upstream", upstream, &mut r);
    header("x-wsgiproxy-lease-ms", lease_ms, &mut r);
    if let Some(ms) = waited_ms {
        header("x-wsgiproxy-cold-start-ms", ms, &mut r);
    }
    r
}

fn number(req: &Request<Incoming>, name: &str) -> u64 {
    req.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// How long an ensure call may wait for a start (`x-wsgiproxy-wait-ms`, at most
/// ten minutes), when it would rather hear that the start goes on (a browser's
/// request, given a waiting page); none: as long as the start takes.
fn patience(req: &Request<Incoming>) -> Option<Duration> {
    let ms = req.headers().get("x-wsgiproxy-wait-ms")?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_millis(ms.min(600_000)))
}

impl Api {
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Result<Reply, Infallible> {
        let path = req.uri().path().to_string();
        let route: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let response = match (req.method(), route.as_slice()) {
            (&Method::POST | &Method::GET, ["v1", "ensure", name]) => match self.apps.get(*name) {
                None => text(StatusCode::NOT_FOUND, format!("no app named {name:?} is configured")),
                Some(app) => match app.ensure(patience(&req)).await {
                    Ok(Ensured::Ready(g)) => granted(name, &g),
                    Ok(Ensured::StillStarting) => {
                        let body = serde_json::json!({ "app": name, "state": "starting" });
                        let mut r = reply(StatusCode::ACCEPTED, "application/json", body.to_string());
                        header("retry-after", 1, &mut r);
                        r
                    }
                    Err(e) => {
                        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, format!("app {name:?} is not available: {}", e.reason));
                        header("retry-after", e.retry_after.as_secs().max(1), &mut r);
                        r
                    }
                },
            },
            (&Method::POST, ["v1", "activity", name]) => match self.apps.get(*name) {
                None => text(StatusCode::NOT_FOUND, format!("no app named {name:?} is configured")),
                Some(app) => {
                    let reporter = req.headers().get("x-wsgiproxy-reporter").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
                    let started = number(&req, "x-wsgiproxy-started");
                    let in_flight = number(&req, "x-wsgiproxy-in-flight");
                    match app.activity(&reporter, started, in_flight) {
                        Ok(g) => granted(name, &g),
                        Err(phase) => text(StatusCode::CONFLICT, phase.name()),
                    }
                }
            },
            (&Method::GET, ["v1", "status"]) => {
                let apps: serde_json::Map<String, serde_json::Value> = self.apps.iter().map(|(n, a)| (n.clone(), a.status())).collect();
                reply(StatusCode::OK, "application/json", serde_json::json!({ "apps": apps }).to_string())
            }
            (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
            (&Method::GET, ["metrics"]) => reply(StatusCode::OK, crate::metrics::CONTENT_TYPE, self.ctx.metrics.render()),
            _ => text(StatusCode::NOT_FOUND, "not found"),
        };
        let mut response = response;
        // Tells the filter this answer is the sidecar's own, not Envoy's (a 503 for
        // an unreachable sidecar would otherwise look like one of ours).
        header("x-wsgiproxy-sidecar", "1", &mut response);
        Ok(response)
    }
}
