//! WSGIProxy as a native Envoy dynamic module: the same roles and configuration as the
//! Wasm filter, every decision made by the `wsgiproxy-protocol` crate. Envoy 1.40 loads
//! it with `envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter`.
//!
//! `abi` is the binding to Envoy's C ABI and holds every `unsafe` block; the rest is
//! safe glue, shaped like the Wasm filter's.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod abi;
mod app;
mod attributes;
mod exact;
mod filter;
mod host;
mod key_directory;
mod key_files;
mod metrics;
mod middleware;
mod peer;
mod replay;
mod shared;
mod spawn;
