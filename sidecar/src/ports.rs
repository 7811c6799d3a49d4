//! Ports for apps without a fixed one: the first free from 10000, as WSGIProxy did.

use std::net::{Ipv4Addr, TcpListener};

pub const FIRST_PORT: u16 = 10000;

/// True when nothing listens on the port (checked by binding it).
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The first free port at or above 10000 not in `taken`.
pub fn allocate(taken: &[u16]) -> Option<u16> {
    (FIRST_PORT..=u16::MAX).find(|p| !taken.contains(p) && is_free(*p))
}
