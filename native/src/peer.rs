//! The `peer` role: loaded as a network filter (`DynamicModuleNetworkFilter`) before
//! the HTTP connection manager, it records each connection's remote address in the
//! connection's filter state, where the `app` and `middleware` roles read it, as the
//! Wasm filter's `peer` role does. That address is the one the listener filters left
//! (a PROXY protocol header's source behind a load balancer), which an HTTP filter
//! cannot read itself: it sees only the socket's peer (the balancer) and the
//! connection manager's X-Forwarded-For choice.

use wsgiproxy_protocol::config::{self, Config};
use wsgiproxy_protocol::counters::peer::{ALL, CONNECTIONS, UNRECORDED};
use wsgiproxy_protocol::counters::NameMap;
use wsgiproxy_protocol::host::{Warned, Warning};
use wsgiproxy_protocol::trust::{peer_record, PEER_RECORD};

use crate::abi::{log, Connection, ConnectionFilterFactory, LogLevel, NetworkConfigHandle};

struct PeerRecorder {
    counters: NameMap<usize>,
    warned: Warned,
}

impl PeerRecorder {
    fn count(&self, connection: &Connection, name: &str) {
        if let Some(id) = self.counters.get(name) {
            connection.increment_counter(*id, 1);
        }
    }
}

impl ConnectionFilterFactory for PeerRecorder {
    fn on_new_connection(&self, connection: &Connection) {
        self.count(connection, CONNECTIONS);
        let address = connection.remote_address();
        let record = address.as_ref().and_then(|(ip, port)| peer_record(ip, u16::try_from(*port).ok()));
        let recorded = record.as_ref().is_some_and(|record| connection.set_filter_state(PEER_RECORD, record.as_bytes()));
        if !recorded {
            // The HTTP roles then find no record and trust nobody by address.
            self.count(connection, UNRECORDED);
            if self.warned.first_time(Warning::PeerUnrecorded) {
                let seen = address.map(|(ip, _)| String::from_utf8_lossy(&ip).into_owned());
                log(
                    LogLevel::Warn,
                    &format!(
                        "wsgiproxy peer: a connection has no IP peer to record ({}): nothing is trusted by address on it",
                        seen.as_deref().unwrap_or("not an IP address: an internal listener or a Unix socket?")
                    ),
                );
            }
        }
    }
}

/// Parses a network filter's configuration; `None` refuses it. Only the `peer` role
/// is a network filter.
pub fn new_factory(handle: &NetworkConfigHandle, _filter_name: &[u8], raw: &[u8]) -> Option<Box<dyn ConnectionFilterFactory>> {
    let env = |name: &str| std::env::var(name).ok();
    match config::parse(raw, &env) {
        Ok(Config::Peer) => {
            let counters =
                ALL.iter().filter_map(|name| handle.define_counter(&format!("wsgiproxy.{name}")).map(|id| (name.to_string(), id)));
            log(LogLevel::Info, "wsgiproxy: configured as role \"peer\" (network filter)");
            Some(Box::new(PeerRecorder { counters: counters.collect(), warned: Warned::default() }))
        }
        Ok(other) => {
            log(
                LogLevel::Error,
                &format!(
                    "wsgiproxy: the role {:?} is an HTTP filter (DynamicModuleFilter); as a network filter the module takes only \
                     {{\"role\": \"peer\"}}",
                    other.role()
                ),
            );
            None
        }
        Err(e) => {
            log(LogLevel::Error, &format!("wsgiproxy: {e}"));
            None
        }
    }
}
