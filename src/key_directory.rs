//! The middleware role's key directories in the Wasm filter: each worker's VM follows
//! them on its own (a VM shares no memory with the others), from its root context —
//! fetches sent on the tick and answered there; requests that name an unknown key id
//! wait, paused, until the fetch they asked for is answered, then are decided again
//! in their own context ([`hostcalls::set_effective_context`]) and resumed or refused.

use std::cell::RefCell;
use std::sync::Arc;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use wsgiproxy_protocol::config::{Config, MiddlewareConfig};
use wsgiproxy_protocol::driver::key_directory::{self as driver, millis, DirectoryAnswer};
use wsgiproxy_protocol::driver::middleware::on_request_headers_following;
use wsgiproxy_protocol::driver::Flow;
use wsgiproxy_protocol::key_directory::{Followed, Follower};

use crate::host::{WasmHost, WasmReportHost};
use crate::shared::Shared;

pub struct WasmDirectories {
    follower: RefCell<Follower>,
    /// Fetches under way: (call token, directory index).
    calls: RefCell<Vec<(u32, usize)>>,
    /// The request contexts held for a fetch.
    waiters: RefCell<Vec<u32>>,
}

impl WasmDirectories {
    pub fn new(config: &MiddlewareConfig) -> Option<WasmDirectories> {
        let algorithm = config.verify.as_ref()?.algorithm;
        (!config.key_directories.is_empty()).then(|| WasmDirectories {
            follower: RefCell::new(Follower::new(algorithm, &config.key_directories)),
            calls: RefCell::default(),
            waiters: RefCell::default(),
        })
    }

    pub fn followed(&self) -> Arc<Followed> {
        self.follower.borrow().followed()
    }

    /// A request names an unknown key id: true when it is to wait (it is then held
    /// until [`WasmDirectories::wake`]).
    pub fn hold(&self, shared: &Shared, context_id: u32) -> bool {
        let now = millis(crate::host::now());
        let wait = driver::unknown_key(&mut self.follower.borrow_mut(), now, &mut |name| shared.metrics.add(name, 1));
        if wait {
            self.waiters.borrow_mut().push(context_id);
        }
        wait
    }

    /// Whether the request context is held for a fetch.
    pub fn holds(&self, context_id: u32) -> bool {
        self.waiters.borrow().contains(&context_id)
    }

    /// On the root's tick: sends the fetches that are due.
    pub fn tick(&self, shared: &Shared, root_id: u32) {
        let now = millis(crate::host::now());
        let host = &mut WasmReportHost::new(&shared.metrics);
        let due = driver::due(&mut self.follower.borrow_mut(), now, host);
        for i in due {
            let sent = driver::send(&self.follower.borrow(), i, host);
            match sent.map(u32::try_from) {
                Ok(Ok(token)) => self.calls.borrow_mut().push((token, i)),
                _ => driver::answered(&mut self.follower.borrow_mut(), i, now, None, host),
            }
        }
        self.wake(shared, root_id);
    }

    /// A call's answer, read while its callback runs; false when it is not a directory's.
    pub fn on_answer(&self, shared: &Shared, root_id: u32, token: u32, body_size: usize) -> bool {
        let index = {
            let mut calls = self.calls.borrow_mut();
            let Some(at) = calls.iter().position(|(t, _)| *t == token) else { return false };
            calls.swap_remove(at).1
        };
        let now = millis(crate::host::now());
        let max_bytes = self.follower.borrow().directories.get(index).map_or(0, |d| d.source.max_bytes);
        let header = |name: &str| hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name).ok().flatten();
        let answer = header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok()).map(|status| DirectoryAnswer {
            status,
            cache_control: header("cache-control"),
            body: if body_size <= max_bytes {
                hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size).ok().flatten().unwrap_or_default()
            } else {
                Vec::new()
            },
            body_size,
        });
        driver::answered(&mut self.follower.borrow_mut(), index, now, answer.as_ref(), &mut WasmReportHost::new(&shared.metrics));
        self.wake(shared, root_id);
        true
    }

    /// Once no fetch is under way or asked for: decides every held request again, with
    /// the keys as they are now, in its own context; resumes it or refuses it.
    fn wake(&self, shared: &Shared, root_id: u32) {
        if self.follower.borrow().busy() || self.waiters.borrow().is_empty() {
            return;
        }
        let Config::Middleware(config) = &shared.config else { return };
        let followed = self.followed();
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for context_id in waiters {
            // A request that ended meanwhile is no longer known to the host.
            if hostcalls::set_effective_context(context_id).is_err() {
                continue;
            }
            if on_request_headers_following(config, &mut WasmHost::new(shared), Some(&followed)) == Flow::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(root_id);
    }
}
