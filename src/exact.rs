//! The `exact` role's request context.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::exact::{decide, decide_resolved};
use wsgiproxy_protocol::request::{parse_peer_address, Decision};

use crate::host;
use crate::metrics::Metrics;
use crate::root::Shared;

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(&["exact.requests", "exact.forwarded", "exact.resolved_checks", "exact.rejected.destination_not_allowed"]);
}

pub struct ExactFilter {
    shared: Rc<Shared>,
}

impl ExactFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        ExactFilter { shared }
    }
}

impl Context for ExactFilter {}

impl HttpContext for ExactFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Config::Exact(config) = &self.shared.config else {
            return Action::Continue;
        };
        let metrics = &self.shared.metrics;
        let head = host::request_head();
        // As an upstream filter of the forward-proxy cluster, the address DNS gave is
        // known: check it. Before routing it is not, and the Host is checked by name.
        let resolved = hostcalls::get_property(vec!["upstream", "address"]).ok().flatten().and_then(|a| parse_peer_address(&a));
        let decision = match resolved {
            Some(resolved) => {
                metrics.inc("exact.resolved_checks");
                decide_resolved(config, &head, resolved)
            }
            None => {
                metrics.inc("exact.requests");
                decide(config, &head)
            }
        };
        match decision {
            Decision::Forward(edits) => {
                host::apply_request_edits(&edits, &head);
                if resolved.is_none() {
                    metrics.inc("exact.forwarded");
                }
                Action::Continue
            }
            Decision::Reply(reply) => host::refuse(&reply, metrics, "exact"),
        }
    }
}
