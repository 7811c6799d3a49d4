//! Envoy counters, all under the `wsgiproxy.` prefix (Envoy shows them on
//! `/stats` and `/stats/prometheus`). Ids are defined once per VM and cached.

use std::cell::RefCell;
use std::collections::HashMap;

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

#[derive(Default)]
pub struct Metrics {
    ids: RefCell<HashMap<String, u32>>,
}

impl Metrics {
    /// Adds `by` to the counter `wsgiproxy.{name}`, defining it on first use.
    pub fn add(&self, name: &str, by: u64) {
        if by == 0 {
            return;
        }
        let id = {
            let mut ids = self.ids.borrow_mut();
            match ids.get(name) {
                Some(id) => *id,
                None => {
                    let Ok(id) = hostcalls::define_metric(MetricType::Counter, &format!("wsgiproxy.{name}")) else {
                        return;
                    };
                    ids.insert(name.to_string(), id);
                    id
                }
            }
        };
        let _ = hostcalls::increment_metric(id, by as i64);
    }

    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    /// Defines counters up front, so that they show as 0 before anything happens.
    pub fn declare(&self, names: &[&str]) {
        for name in names {
            let mut ids = self.ids.borrow_mut();
            if ids.contains_key(*name) {
                continue;
            }
            if let Ok(id) = hostcalls::define_metric(MetricType::Counter, &format!("wsgiproxy.{name}")) {
                ids.insert((*name).to_string(), id);
            }
        }
    }
}
