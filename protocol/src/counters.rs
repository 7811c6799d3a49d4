//! The counters each role declares, under `wsgiproxy.`: one list for both loaders,
//! so that the Wasm filter and the native module report the same names. A role's
//! `{role}.rejected.{reason}` counters come on top, one per refusal reason.

pub const APP: &[&str] = &[
    "app.requests",
    "app.forwarded",
    "app.signed",
    "app.stripped_headers",
    "app.invalid_keys",
    "app.rewritten_locations",
    "app.rewritten_cookies",
];

pub const MIDDLEWARE: &[&str] = &[
    "middleware.requests",
    "middleware.trusted",
    "middleware.untrusted",
    "middleware.verified",
    "middleware.stripped_headers",
    "middleware.dropped_keys",
    "middleware.signature_missing",
    "middleware.peer_unknown",
];
