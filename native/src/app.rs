//! The `app` role's stream filter (as `src/app.rs` of the Wasm filter).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wsgiproxy_protocol::app::{decide, AppOutcome, AppRequest};
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::request::{Decision, LocalReply};
use wsgiproxy_protocol::response::{headers_to_read, rewrite_headers, ClientView};

use wsgiproxy_protocol::trust::{PEER_UNKNOWN, PEER_UNKNOWN_DETAIL};

use crate::abi::{log, HeaderMap, HeadersStatus, HttpFilter, LogLevel, Stream};
use crate::filter::{Shared, Warning};
use crate::host;

pub fn metric_names() -> Vec<String> {
    crate::metrics::with_rejections("app", wsgiproxy_protocol::counters::APP)
}

pub struct AppFilter {
    shared: Arc<Shared>,
    /// Set when the response's Location and cookie paths are to be rewritten.
    client_view: Option<ClientView>,
}

impl AppFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        AppFilter { shared, client_view: None }
    }
}

impl HttpFilter for AppFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::App(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        let metrics = &self.shared.metrics;
        metrics.inc(stream, "app.requests");
        let head = host::request_head(stream);
        let nonce = if config.signing.is_some() {
            match host::random_nonce() {
                Some(n) => n,
                None => {
                    let reply = LocalReply::new(503, "no_randomness", "cannot sign the request: no random source");
                    return host::refuse(stream, &reply, metrics, "app");
                }
            }
        } else {
            [0; 16]
        };
        let request = AppRequest {
            head: &head,
            downstream: host::downstream(stream, config.needs()),
            https: config.https(|| host::downstream_is_tls(stream)),
            now: if config.signing.is_some() { SystemTime::now() } else { UNIX_EPOCH },
            nonce,
        };
        let mut outcome = AppOutcome::default();
        match decide(config, &request, &mut |path| host::property(stream, path), &mut outcome) {
            Decision::Forward(edits) => {
                host::apply_request_edits(stream, &edits, &head);
                metrics.inc(stream, "app.forwarded");
                metrics.add(stream, "app.stripped_headers", outcome.stripped as u64);
                metrics.add(stream, "app.invalid_keys", outcome.invalid_keys as u64);
                if outcome.signed {
                    metrics.inc(stream, "app.signed");
                }
                self.client_view = outcome.client_view.take();
                host::debug(|| {
                    format!(
                        "wsgiproxy app: forwarded (stripped {}, invalid keys {}, signed {})",
                        outcome.stripped, outcome.invalid_keys, outcome.signed
                    )
                });
                HeadersStatus::Continue
            }
            Decision::Reply(reply) => {
                if reply.reason == PEER_UNKNOWN && self.shared.warn_once(Warning::PeerUnknown) {
                    // Only when Envoy gives no direct remote address (not a TCP listener).
                    log(LogLevel::Warn, &format!("wsgiproxy app: client_address is \"peer\" but the TCP peer is unknown, so requests are refused: {PEER_UNKNOWN_DETAIL}"));
                }
                host::refuse(stream, &reply, metrics, "app")
            }
        }
    }

    fn on_response_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let (Config::App(config), Some(view)) = (&self.shared.config, &self.client_view) else {
            return HeadersStatus::Continue;
        };
        // Location, Content-Location and Set-Cookie paths back to the client's view:
        // only the headers rewriting may change are read, by name.
        let headers: Vec<(String, Vec<u8>)> = headers_to_read(&config.href)
            .iter()
            .flat_map(|name| stream.header_values(HeaderMap::Response, name).into_iter().map(|v| ((*name).to_string(), v)))
            .collect();
        let edits = rewrite_headers(&headers, &config.href, view);
        let metrics = &self.shared.metrics;
        for (name, value) in &edits.locations {
            stream.set_header(HeaderMap::Response, name, value.as_bytes());
            metrics.inc(stream, "app.rewritten_locations");
        }
        if let Some(cookies) = &edits.cookies {
            stream.remove_header(HeaderMap::Response, "set-cookie");
            for cookie in cookies {
                stream.add_header(HeaderMap::Response, "set-cookie", cookie);
            }
            metrics.inc(stream, "app.rewritten_cookies");
        }
        HeadersStatus::Continue
    }
}
