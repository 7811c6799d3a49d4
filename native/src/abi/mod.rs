//! The binding to Envoy's dynamic-module ABI, and the only module with `unsafe`.
//!
//! Written from Envoy 1.40.0's `source/extensions/dynamic_modules/abi/abi.h` (no file
//! of Envoy's is vendored): the few callbacks the roles use, declared as Envoy
//! exports them, behind safe wrappers; and the event hooks Envoy looks up, each of
//! which catches panics so that none crosses into Envoy.
//!
//! Envoy only promises compatibility with a module built for its exact ABI: this one
//! reports [`ABI_VERSION`], the string Envoy 1.40.0 expects, and is pinned to it.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::ffi::CStr;

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` of Envoy 1.40.0.
pub const ABI_VERSION: &CStr = c"v0.2.0";

mod handles;
mod hooks;
mod network;
mod raw;
mod slot;
#[cfg(test)]
mod tests;
mod traits;

pub use handles::*;
pub use network::{Connection, ConnectionFilterFactory, NetworkConfigHandle};
pub use raw::{Attribute, BodyStatus, HeaderMap, HeadersStatus, LogLevel, TrailersStatus};
pub use traits::{FilterFactory, HttpFilter};
