//! The `middleware` role's stream filter (as `src/middleware.rs` of the Wasm filter).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::middleware::{decide, MiddlewareOutcome, MiddlewareRequest};
use wsgiproxy_protocol::request::Decision;

use wsgiproxy_protocol::trust::PEER_UNKNOWN_DETAIL;

use crate::abi::{log, HeadersStatus, HttpFilter, LogLevel, Stream};
use crate::filter::{Shared, Warning};
use crate::host;
use crate::replay::ProcessNonces;

pub fn metric_names() -> Vec<String> {
    crate::metrics::with_rejections("middleware", wsgiproxy_protocol::counters::MIDDLEWARE)
}

pub struct MiddlewareFilter {
    shared: Arc<Shared>,
}

impl MiddlewareFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        MiddlewareFilter { shared }
    }
}

impl HttpFilter for MiddlewareFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::Middleware(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        let metrics = &self.shared.metrics;
        metrics.inc(stream, "middleware.requests");
        let head = host::request_head(stream);
        let request = MiddlewareRequest {
            head: &head,
            downstream: host::downstream(stream, config.needs()),
            https: host::downstream_is_tls(stream),
            now: if config.verify.is_some() { SystemTime::now() } else { UNIX_EPOCH },
        };
        let mut outcome = MiddlewareOutcome::default();
        let decision = decide(config, &request, &mut ProcessNonces, &mut outcome);
        metrics.inc(stream, if outcome.trusted { "middleware.trusted" } else { "middleware.untrusted" });
        if outcome.verified {
            metrics.inc(stream, "middleware.verified");
        }
        metrics.add(stream, "middleware.stripped_headers", outcome.stripped as u64);
        metrics.add(stream, "middleware.dropped_keys", outcome.dropped_keys as u64);
        if outcome.unsigned {
            metrics.inc(stream, "middleware.signature_missing");
        }
        if outcome.peer_unknown {
            metrics.inc(stream, "middleware.peer_unknown");
            if self.shared.warn_once(Warning::PeerUnknown) {
                log(LogLevel::Warn, &format!("wsgiproxy middleware: trust_ips is configured but the TCP peer is unknown, so no request is trusted by address: {PEER_UNKNOWN_DETAIL}"));
            }
        }
        if config.trust_principals.is_some() && !request.https && self.shared.warn_once(Warning::PrincipalsWithoutTls) {
            log(LogLevel::Warn, "wsgiproxy middleware: trust_principals is configured but this connection has no TLS: principals match only mTLS peers, so nothing on this listener is trusted by identity");
        }
        match decision {
            Decision::Forward(edits) => {
                host::apply_request_edits(stream, &edits, &head);
                host::debug(|| {
                    format!(
                        "wsgiproxy middleware: forwarded (trusted {}, verified {}, stripped {}, dropped keys {})",
                        outcome.trusted, outcome.verified, outcome.stripped, outcome.dropped_keys
                    )
                });
                HeadersStatus::Continue
            }
            Decision::Reply(reply) => host::refuse(stream, &reply, metrics, "middleware"),
        }
    }
}
