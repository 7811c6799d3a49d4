//! The `app` role's request and response path.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use super::{apply_request_edits, downstream, refuse, Flow};
use crate::app::{decide, sign_for_endpoint, AppOutcome, AppRequest};
use crate::config::AppConfig;
use crate::counters::app::*;
use crate::host::{HeaderMap, Host, Warning};
use crate::reason::Reason;
use crate::request::{Decision, LocalReply};
use crate::response::{headers_to_read, rewrite_headers, ClientView};
use crate::trust::PEER_UNKNOWN_DETAIL;

const ROLE: &str = "app";
/// Left by the pre-routing pass of a `bind_endpoint` sender on each request it
/// prepared (client's protocol headers stripped, the sender's written), for the
/// cluster's upstream pass: it signs only such a request. Envoy's filter state, so
/// no client can set it.
pub const PREPARED_MARK: &str = "wsgiproxy_app_prepared";
/// The one response header rewriting reads that may repeat.
const SET_COOKIE: &str = "set-cookie";

/// `publish_key_directory`: a GET or HEAD of its path is answered with the sender's
/// key directory (the public half of each of its keys), and goes no further.
fn serve_key_directory<H: Host>(config: &AppConfig, directory: &crate::config::PublishedDirectory, host: &mut H) -> bool {
    let path = host.header(HeaderMap::Request, ":path").unwrap_or_default();
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    if path != directory.path.as_bytes() {
        return false;
    }
    let method = host.header(HeaderMap::Request, ":method").unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return false;
    }
    host.count(KEY_DIRECTORY_SERVED, 1);
    let headers = [("content-type", crate::key_directory::DIRECTORY_MEDIA_TYPE), ("cache-control", directory.cache_control.as_str())];
    // Keys read from files may have changed since the configuration loaded.
    let current = config.signing.as_ref().and_then(|keys| crate::key_directory::published_key_set(&keys.ring()));
    let body = if method == b"HEAD" { &b""[..] } else { current.as_deref().unwrap_or(&directory.body).as_bytes() };
    host.send_document(&headers, body);
    true
}

/// One stream of the `app` role: what its request leaves for its response.
#[derive(Debug, Default)]
pub struct AppStream {
    /// Set when the response's Location and cookie paths are to be rewritten.
    client_view: Option<ClientView>,
}

impl AppStream {
    /// Strips, rewrites and signs the request for the backend, or refuses it. With
    /// `bind_endpoint`, the role runs twice: before routing it does all but sign, and
    /// as the cluster's upstream filter, where the endpoint is known, it signs what
    /// the first pass prepared, and nothing else.
    pub fn on_request_headers<H: Host>(&mut self, config: &AppConfig, host: &mut H) -> Flow {
        if config.bind_endpoint {
            if let Some(endpoint) = host.upstream_address().and_then(|a| std::str::from_utf8(&a).ok()?.parse::<SocketAddr>().ok()) {
                if !host.stream_marked(PREPARED_MARK) {
                    return refuse_unprepared(host);
                }
                return sign_for_the_endpoint(config, host, endpoint);
            }
        }
        host.count(REQUESTS, 1);
        if let Some(directory) = &config.key_directory {
            if serve_key_directory(config, directory, host) {
                return Flow::Replied;
            }
        }
        let head = host.request_head();
        let signing = config.signing.is_some();
        let nonce = if signing {
            match host.random_nonce() {
                Some(nonce) => nonce,
                None => {
                    let reply = LocalReply::new(503, Reason::NoRandomness, "cannot sign the request: no random source");
                    return refuse(host, ROLE, &reply);
                }
            }
        } else {
            [0; 16]
        };
        let request = AppRequest {
            head: &head,
            downstream: downstream(host, config.needs()),
            https: config.https(|| host.connection_is_tls()),
            // Only when signing needs the time (a host call in the Wasm filter).
            now: if signing { host.now() } else { UNIX_EPOCH },
            nonce,
        };
        let mut outcome = AppOutcome::default();
        match decide(config, &request, &mut |path| host.property(path), &mut outcome) {
            Decision::Forward(edits) => {
                apply_request_edits(host, &edits, |name| head.contains(name));
                if config.bind_endpoint {
                    host.mark_stream(PREPARED_MARK);
                }
                host.count(FORWARDED, 1);
                host.count(STRIPPED_HEADERS, outcome.stripped as u64);
                host.count(INVALID_KEYS, outcome.invalid_keys as u64);
                if outcome.signed {
                    host.count(SIGNED, 1);
                }
                self.client_view = outcome.client_view.take();
                host.debug(format_args!(
                    "wsgiproxy app: forwarded (stripped {}, invalid keys {}, signed {})",
                    outcome.stripped, outcome.invalid_keys, outcome.signed
                ));
                Flow::Continue
            }
            Decision::Reply(reply) => {
                if reply.reason == Reason::PeerUnknown && host.first_time(Warning::PeerUnknown) {
                    host.warn(format_args!(
                        "wsgiproxy app: client_address is \"peer\" but the TCP peer is unknown, so requests are refused: {PEER_UNKNOWN_DETAIL}"
                    ));
                }
                refuse(host, ROLE, &reply)
            }
        }
    }

    /// Rewrites Location, Content-Location and Set-Cookie paths back to the client's
    /// view, when the request asked for it. Reads only the headers rewriting may change.
    pub fn on_response_headers<H: Host>(&self, config: &AppConfig, host: &mut H) {
        let Some(view) = &self.client_view else { return };
        let mut headers = Vec::new();
        host.headers_named(HeaderMap::Response, headers_to_read(&config.href), SET_COOKIE, &mut headers);
        if headers.is_empty() {
            return;
        }
        let edits = rewrite_headers(&headers, &config.href, view);
        for (name, value) in &edits.locations {
            host.set_header(HeaderMap::Response, name, value.as_bytes());
            host.count(REWRITTEN_LOCATIONS, 1);
        }
        if let Some(cookies) = &edits.cookies {
            host.remove_header(HeaderMap::Response, SET_COOKIE);
            for cookie in cookies {
                host.add_header(HeaderMap::Response, SET_COOKIE, cookie);
            }
            host.count(REWRITTEN_COOKIES, 1);
        }
    }
}

/// The upstream pass of a `bind_endpoint` sender, on a request the pre-routing pass
/// never saw: whatever protocol headers it holds came from the client, and signing
/// them would vouch for a forgery. Refused, counted, and said once.
fn refuse_unprepared<H: Host>(host: &mut H) -> Flow {
    if host.first_time(Warning::Unprepared) {
        host.warn(format_args!(
            "wsgiproxy app: the cluster's upstream filter (bind_endpoint) got a request the app role did not prepare before routing \
             (a listener or route that reaches this cluster without the pre-routing app filter): refused with 500 unprepared, never signed"
        ));
    }
    let reply = LocalReply::new(
        500,
        Reason::Unprepared,
        "this request did not pass the app role before routing; its protocol headers are not signed",
    );
    refuse(host, ROLE, &reply)
}

/// Signs one attempt of the request for the endpoint the load balancer chose.
fn sign_for_the_endpoint<H: Host>(config: &AppConfig, host: &mut H, endpoint: SocketAddr) -> Flow {
    let Some(nonce) = host.random_nonce() else {
        return refuse(host, ROLE, &LocalReply::new(503, Reason::NoRandomness, "cannot sign the request: no random source"));
    };
    let head = host.request_head();
    let now = host.now();
    match sign_for_endpoint(config, &head, endpoint, now, &nonce) {
        Decision::Forward(edits) => {
            apply_request_edits(host, &edits, |name| head.contains(name));
            host.count(SIGNED, 1);
            host.debug(format_args!("wsgiproxy app: signed for the endpoint {endpoint}"));
            Flow::Continue
        }
        Decision::Reply(reply) => refuse(host, ROLE, &reply),
    }
}
