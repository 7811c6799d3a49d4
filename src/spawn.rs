//! The `spawn` role's request context: the shared driver
//! (`wsgiproxy_protocol::driver::spawn`) over proxy-wasm, with one lease per worker
//! VM. The root context sends the worker's activity reports on its tick.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use wsgiproxy_protocol::config::{Config, SpawnConfig};
use wsgiproxy_protocol::driver::spawn::{LeaseHolder, SpawnStream};
use wsgiproxy_protocol::spawn::{reporter_id, CallHealth, LeaseState};

use crate::host::{self, spawn_action, WasmCallAnswer, WasmHost};
use crate::metrics::Metrics;
use crate::shared::Shared;

/// One worker VM's lease and activity counts, shared by its root and request
/// contexts (one thread: a `RefCell` is enough).
pub struct SpawnRuntime {
    lease: RefCell<LeaseState>,
    /// Identifies this worker's VM to the sidecar, which tracks in-flight counts per reporter.
    reporter: String,
    /// Calls to the sidecar failing: logged when that begins and ends, not per request.
    health: RefCell<CallHealth>,
}

impl SpawnRuntime {
    pub fn new() -> Self {
        SpawnRuntime {
            // Reports are sent from the root's tick.
            lease: RefCell::new(LeaseState::new(crate::metrics::FLUSH_EVERY)),
            reporter: reporter_id(&host::random_nonce().unwrap_or_default()),
            health: RefCell::new(CallHealth::default()),
        }
    }
}

impl LeaseHolder for SpawnRuntime {
    fn with_lease<R>(&self, f: impl FnOnce(&mut LeaseState) -> R) -> R {
        f(&mut self.lease.borrow_mut())
    }

    fn with_health<R>(&self, f: impl FnOnce(&mut CallHealth) -> R) -> R {
        f(&mut self.health.borrow_mut())
    }

    fn reporter(&self) -> &str {
        &self.reporter
    }
}

pub fn declare_metrics(metrics: &Metrics) {
    metrics.declare(wsgiproxy_protocol::counters::spawn::ALL);
}

/// The role's configuration and this worker's lease, when the plugin is a spawn role.
pub fn parts(shared: &Shared) -> Option<(&SpawnConfig, &SpawnRuntime)> {
    match (&shared.config, &shared.spawn) {
        (Config::Spawn(c), Some(r)) => Some((c, r)),
        _ => None,
    }
}

pub struct SpawnFilter {
    shared: Rc<Shared>,
    stream: SpawnStream,
}

impl SpawnFilter {
    pub fn new(shared: Rc<Shared>) -> Self {
        SpawnFilter { shared, stream: SpawnStream::default() }
    }
}

impl Context for SpawnFilter {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let Some((config, runtime)) = parts(&self.shared) else { return };
        let answer = WasmCallAnswer { body_size };
        self.stream.on_callout_done(config, runtime, &mut WasmHost::new(&self.shared), u64::from(token), Some(&answer));
    }

    fn on_done(&mut self) -> bool {
        if let Some((_, runtime)) = parts(&self.shared) {
            self.stream.on_done(runtime);
        }
        true
    }
}

impl HttpContext for SpawnFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some((config, runtime)) = parts(&self.shared) else { return Action::Continue };
        spawn_action(self.stream.on_request_headers(config, runtime, &mut WasmHost::new(&self.shared)))
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        // Held by the host while the request waits; should it come anyway, it waits too.
        if self.stream.holds_request() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        if self.stream.holds_request() {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some((_, runtime)) = parts(&self.shared) {
            self.stream.on_response_headers(runtime, &mut WasmHost::new(&self.shared));
        }
        Action::Continue
    }
}
