//! The proxy-wasm glue of the WSGIProxy filter: it reads what the host knows about
//! a request, asks the protocol crate what to do, and applies the answer. All the
//! protocol logic lives in `wsgiproxy-protocol`, tested natively.

mod app;
mod exact;
mod host;
mod key_directory;
mod metrics;
mod middleware;
mod peer;
mod replay;
mod root;
mod shared;
mod spawn;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Also installs a panic hook that logs at critical level: a panic kills this
    // worker's VM, so the code is written (and linted) not to.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::new(id))
    });
}}
