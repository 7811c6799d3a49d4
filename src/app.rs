//! The `app` role's request context.

use std::rc::Rc;

use log::{debug, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};
use wsgiproxy_protocol::app::{decide, AppOutcome, AppRequest};
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::href::Href;
use wsgiproxy_protocol::request::{Decision, LocalReply};
use wsgiproxy_protocol::response::{headers_to_read, rewrite_headers, ClientView};

use crate::host;
use crate::metrics::Metrics;
use crate::root::{Shared, Warning};
use wsgiproxy_protocol::trust::{PEER_UNKNOWN, PEER_UNKNOWN_DETAIL};

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(wsgiproxy_protocol::counters::APP);
}

pub struct AppFilter {
    shared: Rc<Shared>,
    /// Set when the response's Location and cookie paths are to be rewritten.
    client_view: Option<ClientView>,
}

impl AppFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        AppFilter { shared, client_view: None }
    }
}

impl Context for AppFilter {}

impl HttpContext for AppFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::App(config) = &self.shared.config else {
            return Action::Continue;
        };
        let metrics = &self.shared.metrics;
        metrics.inc("app.requests");
        let head = host::request_head();
        let nonce = if config.signing.is_some() {
            match host::random_nonce() {
                Some(n) => n,
                None => {
                    let reply = LocalReply::new(503, "no_randomness", "cannot sign the request: no random source");
                    return host::refuse(&reply, metrics, "app");
                }
            }
        } else {
            [0; 16]
        };
        let request = AppRequest {
            head: &head,
            downstream: host::downstream(config.needs()),
            https: config.https(host::downstream_is_tls),
            // A host call: only when signing needs the time.
            now: if config.signing.is_some() { host::now() } else { std::time::UNIX_EPOCH },
            nonce,
        };
        let mut outcome = AppOutcome::default();
        match decide(config, &request, &mut |path| host::property(path), &mut outcome) {
            Decision::Forward(edits) => {
                host::apply_request_edits(&edits, &head);
                metrics.inc("app.forwarded");
                metrics.add("app.stripped_headers", outcome.stripped as u64);
                metrics.add("app.invalid_keys", outcome.invalid_keys as u64);
                if outcome.signed {
                    metrics.inc("app.signed");
                }
                self.client_view = outcome.client_view.take();
                debug!(
                    "wsgiproxy app: forwarded (stripped {}, invalid keys {}, signed {})",
                    outcome.stripped, outcome.invalid_keys, outcome.signed
                );
                Action::Continue
            }
            Decision::Reply(reply) => {
                if reply.reason == PEER_UNKNOWN && self.shared.warn_once(Warning::PeerUnknown) {
                    warn!("wsgiproxy app: client_address is \"peer\" but the TCP peer is unknown, so requests are refused: {PEER_UNKNOWN_DETAIL}");
                }
                host::refuse(&reply, metrics, "app")
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.rewrite_response_headers();
        Action::Continue
    }
}

impl AppFilter {
    /// Rewrites Location, Content-Location and Set-Cookie paths to the client's view.
    fn rewrite_response_headers(&self) {
        let (Config::App(config), Some(view)) = (&self.shared.config, &self.client_view) else {
            return;
        };
        let headers = read_rewritable_headers(&config.href);
        if headers.is_empty() {
            return;
        }
        let edits = rewrite_headers(&headers, &config.href, view);
        for (name, value) in &edits.locations {
            let _ = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value.as_bytes()));
            self.shared.metrics.inc("app.rewritten_locations");
        }
        if let Some(cookies) = &edits.cookies {
            let _ = hostcalls::remove_map_value(MapType::HttpResponseHeaders, "set-cookie");
            for cookie in cookies {
                let _ = hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, "set-cookie", cookie);
            }
            self.shared.metrics.inc("app.rewritten_cookies");
        }
    }
}

/// The response headers rewriting may change, and only those: one small read per
/// name instead of the whole map. Set-Cookie may repeat, and a single-value read
/// gives only the first, so a response that has one is read whole.
fn read_rewritable_headers(href: &Href) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for name in headers_to_read(href) {
        if let Ok(Some(value)) = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, name) {
            if *name == "set-cookie" {
                let all = hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
                found.extend(all.into_iter().filter(|(n, _)| n == "set-cookie"));
            } else {
                found.push((name.to_string(), value));
            }
        }
    }
    found
}
