//! The drivers against the host double: what each asks of the host, the edits it
//! makes, what it counts, and the warnings it logs once.

mod app;
mod exact;
mod middleware;
mod spawn;

use crate::config::{parse, Config};
use crate::testing::FakeHost;

fn config(json: &str) -> Config {
    parse(json.as_bytes(), &|_| None).unwrap()
}

/// Every counter the driver counted is one its loader declares (the native module
/// can count no other).
fn assert_declared(host: &FakeHost, role: &str) {
    assert_eq!(host.undeclared_counts(role), Vec::<String>::new(), "counted but not declared for {role}");
}
