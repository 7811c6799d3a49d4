//! The `exact` role's request context.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::exact::decide;
use wsgiproxy_protocol::request::Decision;

use crate::host;
use crate::metrics::Metrics;
use crate::root::Shared;

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(&["exact.requests", "exact.forwarded", "exact.rejected.destination_not_allowed"]);
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
        metrics.inc("exact.requests");
        let head = host::request_head();
        match decide(config, &head) {
            Decision::Forward(edits) => {
                host::apply_request_edits(&edits);
                metrics.inc("exact.forwarded");
                Action::Continue
            }
            Decision::Reply(reply) => host::refuse(&reply, metrics, "exact"),
        }
    }
}
