//! The `exact` role's stream filter (as `src/exact.rs` of the Wasm filter). Placed
//! both before routing and as an upstream filter of the forward-proxy cluster.

use std::sync::Arc;

use wsgiproxy_protocol::config::Config;
use wsgiproxy_protocol::exact::{decide, decide_resolved};
use wsgiproxy_protocol::request::{parse_peer_address, Decision};

use crate::abi::{Attribute, HeadersStatus, HttpFilter, Stream};
use crate::filter::Shared;
use crate::host;

pub fn metric_names() -> Vec<String> {
    crate::metrics::with_rejections("exact", &["exact.requests", "exact.forwarded", "exact.resolved_checks"])
}

pub struct ExactFilter {
    shared: Arc<Shared>,
}

impl ExactFilter {
    pub fn new(shared: Arc<Shared>) -> Self {
        ExactFilter { shared }
    }
}

impl HttpFilter for ExactFilter {
    fn on_request_headers(&mut self, stream: &Stream, _end_of_stream: bool) -> HeadersStatus {
        let Config::Exact(config) = &self.shared.config else {
            return HeadersStatus::Continue;
        };
        let metrics = &self.shared.metrics;
        let head = host::request_head(stream);
        // As an upstream filter of the forward-proxy cluster, the address DNS gave is
        // known: check it. Before routing it is not, and the Host is checked by name.
        let resolved = stream.attribute_bytes(Attribute::UpstreamAddress).and_then(|a| parse_peer_address(&a));
        let decision = match resolved {
            Some(resolved) => {
                metrics.inc(stream, "exact.resolved_checks");
                decide_resolved(config, &head, resolved)
            }
            None => {
                metrics.inc(stream, "exact.requests");
                decide(config, &head)
            }
        };
        match decision {
            Decision::Forward(edits) => {
                host::apply_request_edits(stream, &edits, &head);
                if resolved.is_none() {
                    metrics.inc(stream, "exact.forwarded");
                }
                HeadersStatus::Continue
            }
            Decision::Reply(reply) => host::refuse(stream, &reply, metrics, "exact"),
        }
    }
}
