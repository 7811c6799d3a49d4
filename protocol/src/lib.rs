#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

//! The WSGIProxy forwarding protocol, free of any proxy-wasm dependency so that
//! `cargo test` exercises it natively.
//!
//! A role ([`app`], [`middleware`], [`exact`]) decides on plain data: a request's
//! headers read into a [`request::RequestHead`] give a [`request::Decision`]. Its
//! [`driver`] reads the request from the loader, asks for the decision, applies it,
//! counts and logs, through the [`host::Host`] trait each loader (the Wasm filter,
//! the native module) implements.

pub mod app;
pub mod asymmetric;
pub mod codec;
pub mod config;
pub mod counters;
pub mod driver;
pub mod exact;
pub mod headers;
pub mod hmac_key;
pub mod host;
pub mod href;
pub mod key_directory;
pub mod key_files;
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
pub mod waiting_page;
