//! Prometheus metrics, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Store {
    /// (metric, labels) → value
    counters: BTreeMap<(&'static str, String), u64>,
    histograms: BTreeMap<(&'static str, String), Histogram>,
    states: BTreeMap<String, &'static str>,
}

#[derive(Default)]
pub struct Metrics {
    store: Mutex<Store>,
}

pub const STATES: [&str; 5] = ["stopped", "starting", "ready", "stopping", "failed"];

fn labels(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))).collect::<Vec<_>>().join(",")
}

impl Metrics {
    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        if let Ok(mut s) = self.store.lock() {
            *s.counters.entry((name, labels(pairs))).or_default() += 1;
        }
    }

    pub fn observe(&self, name: &'static str, app: &str, value: Duration) {
        if let Ok(mut s) = self.store.lock() {
            let h = s.histograms.entry((name, labels(&[("app", app)]))).or_default();
            let secs = value.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += secs;
        }
    }

    pub fn set_state(&self, app: &str, state: &'static str) {
        if let Ok(mut s) = self.store.lock() {
            s.states.insert(app.to_string(), state);
        }
    }

    pub fn render(&self) -> String {
        let Ok(s) = self.store.lock() else { return String::new() };
        let mut out = String::new();
        let mut last = "";
        for ((name, labels), value) in &s.counters {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} counter");
                last = name;
            }
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
        for ((name, labels), h) in &s.histograms {
            if *name != last {
                let _ = writeln!(out, "# TYPE {name} histogram");
                last = name;
            }
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
        }
        let _ = writeln!(out, "# TYPE wsgiproxy_sidecar_app_state gauge");
        for (app, current) in &s.states {
            for state in STATES {
                let _ = writeln!(out, "wsgiproxy_sidecar_app_state{{app=\"{app}\",state=\"{state}\"}} {}", u8::from(state == *current));
            }
        }
        out
    }
}
