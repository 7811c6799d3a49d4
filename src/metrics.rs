//! Envoy counters, all under the `wsgiproxy.` prefix (Envoy shows them on
//! `/stats` and `/stats/prometheus`, as `wasmcustom.wsgiproxy.*`).
//!
//! Requests only add to counts kept inside the VM; the root context's tick sends
//! them to Envoy (every [`FLUSH_EVERY`]), so that no request pays a host call per
//! counter. Ids are defined once per VM and cached.

use std::cell::RefCell;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use wsgiproxy_protocol::counters::NameMap;

/// How often counts reach Envoy's stats.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Metrics {
    /// name → (Envoy metric id, count not yet sent)
    counters: RefCell<NameMap<(Option<u32>, u64)>>,
    /// name → Envoy metric id
    gauges: RefCell<NameMap<u32>>,
}

fn define(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, &format!("wsgiproxy.{name}")).ok()
}

impl Metrics {
    /// Adds `by` to the counter `wsgiproxy.{name}`.
    pub fn add(&self, name: &str, by: u64) {
        if by == 0 {
            return;
        }
        let mut counters = self.counters.borrow_mut();
        match counters.get_mut(name) {
            Some((_, pending)) => *pending += by,
            None => {
                counters.insert(name.to_string(), (None, by));
            }
        }
    }

    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    /// Defines counters up front, so that they show as 0 before anything happens.
    pub fn declare(&self, names: &[impl AsRef<str>]) {
        let mut counters = self.counters.borrow_mut();
        for name in names.iter().map(AsRef::as_ref) {
            counters.entry(name.to_string()).or_insert((None, 0)).0 = define(name);
        }
    }

    /// Defines counters that requests rarely count (a role's refusals), so that they
    /// show as 0 too, without keeping them among the counts: each is defined again
    /// the first time it is counted. Keeping their names in the VM was measured to
    /// add about 3,000 Envoy instructions to each middleware request (through the
    /// heap's layout: the lookups cost the same).
    pub fn declare_rare(&self, names: impl Iterator<Item = String>) {
        for name in names {
            let _ = define(&name);
        }
    }

    /// Sets the gauge `wsgiproxy.{name}` (a host call: from the root context's tick).
    pub fn set_gauge(&self, name: &str, value: u64) {
        let mut gauges = self.gauges.borrow_mut();
        let id = match gauges.get(name) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Gauge, &format!("wsgiproxy.{name}")) {
                Ok(id) => *gauges.entry(name.to_string()).or_insert(id),
                Err(_) => return,
            },
        };
        let _ = hostcalls::record_metric(id, value);
    }

    /// Sends the pending counts to Envoy.
    pub fn flush(&self) {
        for (name, (id, pending)) in self.counters.borrow_mut().iter_mut() {
            if *pending == 0 {
                continue;
            }
            if id.is_none() {
                *id = define(name);
            }
            if let Some(id) = id {
                if hostcalls::increment_metric(*id, *pending as i64).is_ok() {
                    *pending = 0;
                }
            }
        }
    }
}
