//! The `peer` role: loaded as a network filter (`envoy.filters.network.wasm`)
//! before the HTTP connection manager, it records each connection's TCP peer in
//! the connection's filter state, where the `app` and `middleware` roles read it.
//! A network filter sees the connection's own remote address (after the listener
//! filters: behind a PROXY-protocol listener filter, the address the PROXY header
//! gives): the connection manager rewrites only each HTTP stream's copy (from
//! X-Forwarded-For). The native module's `peer` role (`native/src/peer.rs`) records
//! the same address.

use std::rc::Rc;

use log::warn;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, StreamContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::counters::peer::{CONNECTIONS, UNRECORDED};
use wsgiproxy_protocol::host::Warning;
use wsgiproxy_protocol::trust::{peer_record, PEER_RECORD};

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
        // The connection's address as the listener filters left it (a PROXY header's
        // source, for one); only an IP address is recorded: an internal listener's
        // `envoy://…` or a Unix socket's path is no peer to trust.
        let address = hostcalls::get_property(vec!["source", "address"]).ok().flatten();
        let record = address.as_deref().and_then(|address| peer_record(address, None));
        let recorded = record.map(|record| hostcalls::set_property(vec![PEER_RECORD], Some(record.as_bytes())));
        if !matches!(recorded, Some(Ok(()))) {
            // The HTTP roles then find no record and trust nobody by address.
            metrics.inc(UNRECORDED);
            if self.shared.warn_once(Warning::PeerUnrecorded) {
                let seen = address.map(|a| String::from_utf8_lossy(&a).into_owned());
                warn!(
                    "wsgiproxy peer: a connection has no IP peer to record ({}): nothing is trusted by address on it",
                    match (&seen, &recorded) {
                        (_, Some(Err(e))) => format!("{e:?}"),
                        (Some(seen), _) => seen.clone(),
                        (None, _) => "no source.address".to_string(),
                    }
                );
            }
        }
        Action::Continue
    }
}
