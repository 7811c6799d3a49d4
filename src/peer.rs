//! The `peer` role: loaded as a network filter (`envoy.filters.network.wasm`)
//! before the HTTP connection manager, it records each connection's TCP peer in
//! the connection's filter state, where the `app` and `middleware` roles read it.
//! A network filter sees the connection's own remote address: the connection
//! manager rewrites only each HTTP stream's copy (from X-Forwarded-For).

use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::counters::peer::{CONNECTIONS, UNRECORDED};
use wsgiproxy_protocol::host::Warning;
use wsgiproxy_protocol::trust::PEER_RECORD;

use crate::shared::Shared;

pub struct PeerRecorder {
    shared: Rc<Shared>,
}

impl PeerRecorder {
    pub fn new(shared: Rc<Shared>) -> Self {
        PeerRecorder { shared }
    }
}

impl Context for PeerRecorder {}

impl StreamContext for PeerRecorder {
    fn on_new_connection(&mut self) -> Action {
        let metrics = &self.shared.metrics;
        metrics.inc(CONNECTIONS);
        let recorded = hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()
            .filter(|address| !address.is_empty())
            .map(|address| hostcalls::set_property(vec![PEER_RECORD], Some(&address)));
        if !matches!(recorded, Some(Ok(()))) {
            // The HTTP roles then find no record and trust nobody by address.
            metrics.inc(UNRECORDED);
            if self.shared.warn_once(Warning::PeerUnrecorded) {
                warn!("wsgiproxy peer: could not record a connection's TCP peer ({recorded:?})");
            }
        }
        Action::Continue
    }
}
