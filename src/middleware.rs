//! The `middleware` role's request context.

use std::rc::Rc;

use log::{debug, warn};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::middleware::{decide, MiddlewareOutcome, MiddlewareRequest};
use wsgiproxy_protocol::replay::WARN_PERCENT;
use wsgiproxy_protocol::request::Decision;

use crate::host;
use crate::metrics::Metrics;
use crate::replay::SharedNonces;
use crate::root::{Shared, Warning};
use wsgiproxy_protocol::trust::PEER_UNKNOWN_DETAIL;

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(wsgiproxy_protocol::counters::MIDDLEWARE);
}

/// Sets the replay memory's gauge to the fullest key this VM wrote since the last
/// flush, and warns once when it passes [`WARN_PERCENT`].
pub fn report_replay_fullness(shared: &Shared) {
    let Some(percent) = shared.replay_fullest.take() else { return };
    shared.metrics.set_gauge(REPLAY_GAUGE, percent);
    if percent < WARN_PERCENT {
        shared.rearm(Warning::ReplayMemoryFilling);
    } else if shared.warn_once(Warning::ReplayMemoryFilling) {
        warn!(
            "wsgiproxy middleware: a replay memory key is {percent}% full (past {WARN_PERCENT}%); at 100% its signed requests \
             are refused with 503: raise replay_memory_mb"
        );
    }
}

/// The fullest replay memory key a VM wrote lately, in percent.
const REPLAY_GAUGE: &str = "middleware.replay_memory_percent";

pub struct MiddlewareFilter {
    shared: Rc<Shared>,
}

impl MiddlewareFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        MiddlewareFilter { shared }
    }
}

impl Context for MiddlewareFilter {}

impl HttpContext for MiddlewareFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::Middleware(config) = &self.shared.config else {
            return Action::Continue;
        };
        let metrics = &self.shared.metrics;
        metrics.inc("middleware.requests");
        let head = host::request_head();
        let request = MiddlewareRequest {
            head: &head,
            downstream: host::downstream(config.needs()),
            https: host::downstream_is_tls(),
            // A host call: only when verifying needs the time.
            now: if config.verify.is_some() { host::now() } else { std::time::UNIX_EPOCH },
        };
        let mut outcome = MiddlewareOutcome::default();
        let mut nonces = SharedNonces { memory: self.shared.replay.as_ref(), fullest: &self.shared.replay_fullest };
        let decision = decide(config, &request, &mut nonces, &mut outcome);
        metrics.inc(if outcome.trusted { "middleware.trusted" } else { "middleware.untrusted" });
        if outcome.verified {
            metrics.inc("middleware.verified");
        }
        metrics.add("middleware.stripped_headers", outcome.stripped as u64);
        metrics.add("middleware.dropped_keys", outcome.dropped_keys as u64);
        if outcome.unsigned {
            metrics.inc("middleware.signature_missing");
        }
        if outcome.peer_unknown {
            metrics.inc("middleware.peer_unknown");
            if self.shared.warn_once(Warning::PeerUnknown) {
                warn!("wsgiproxy middleware: trust_ips is configured but the TCP peer is unknown, so no request is trusted by address: {PEER_UNKNOWN_DETAIL}");
            }
        }
        if config.trust_principals.is_some() && !request.https && self.shared.warn_once(Warning::PrincipalsWithoutTls) {
            warn!("wsgiproxy middleware: trust_principals is configured but this connection has no TLS: principals match only mTLS peers, so nothing on this listener is trusted by identity");
        }
        match decision {
            Decision::Forward(edits) => {
                host::apply_request_edits(&edits, &head);
                debug!(
                    "wsgiproxy middleware: forwarded (trusted {}, verified {}, stripped {}, dropped keys {})",
                    outcome.trusted, outcome.verified, outcome.stripped, outcome.dropped_keys
                );
                Action::Continue
            }
            Decision::Reply(reply) => host::refuse(&reply, metrics, "middleware"),
        }
    }
}
