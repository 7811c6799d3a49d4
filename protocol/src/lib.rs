#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

//! The WSGIProxy forwarding protocol, free of any proxy-wasm dependency so that
//! `cargo test` exercises it natively.
//!
//! The filter crate reads a request's headers once into a [`request::RequestHead`],
//! asks a role ([`app`], [`middleware`]) for a [`request::Decision`], and applies it.

pub mod app;
pub mod codec;
pub mod config;
pub mod counters;
pub mod driver;
pub mod exact;
pub mod headers;
pub mod host;
pub mod href;
pub mod middleware;
pub mod paths;
pub mod reason;
pub mod replay;
pub mod request;
pub mod response;
pub mod rfc9421;
pub mod signature;
pub mod spawn;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trust;
