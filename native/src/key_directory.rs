//! The middleware role's key directories in the native module: one follower per
//! configuration, shared by every worker (a `.so` is loaded once per process), so a
//! directory is fetched once per process, however many workers. Fetches go from the
//! configuration's context on Envoy's main thread, woken by a module thread every
//! [`crate::spawn::TICK`] and at once when a request asks for a refetch; a request
//! naming an unknown key id is held, and its stream woken on its own worker thread
//! ([`StreamScheduler`]) once the fetch is answered, to be decided again.

use std::sync::{Arc, Mutex, MutexGuard};

use wsgiproxy_protocol::config::MiddlewareConfig;
use wsgiproxy_protocol::driver::key_directory::{self as driver, millis, DirectoryAnswer};
use wsgiproxy_protocol::key_directory::{Followed, Follower};

use crate::abi::{CalloutResponse, ConfigHandle, Scheduler, StreamScheduler};
use crate::host::NativeReportHost;
use crate::shared::Shared;
use crate::spawn::Ticker;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub struct NativeDirectories {
    follower: Mutex<Follower>,
    /// The fetches under way: (callout id, directory index).
    calls: Mutex<Vec<(u64, usize)>>,
    /// The streams held for a fetch.
    waiters: Mutex<Vec<Arc<StreamScheduler>>>,
    /// Wakes the configuration on the main thread when a request asks for a refetch.
    poke: Option<Scheduler>,
}

impl NativeDirectories {
    pub fn new(config: &MiddlewareConfig, poke: Option<Scheduler>) -> Option<NativeDirectories> {
        let algorithm = config.verify.as_ref()?.algorithm;
        (!config.key_directories.is_empty()).then(|| NativeDirectories {
            follower: Mutex::new(Follower::new(algorithm, &config.key_directories)),
            calls: Mutex::default(),
            waiters: Mutex::default(),
            poke,
        })
    }

    pub fn followed(&self) -> Arc<Followed> {
        lock(&self.follower).followed()
    }

    /// A request names an unknown key id: true when it is to wait, its stream then
    /// woken through `scheduler` once the fetch is answered.
    pub fn hold(&self, scheduler: &Arc<StreamScheduler>, count: &mut dyn FnMut(&'static str)) -> bool {
        let now = millis(std::time::SystemTime::now());
        let wait = driver::unknown_key(&mut lock(&self.follower), now, count);
        if wait {
            lock(&self.waiters).push(scheduler.clone());
            if let Some(poke) = &self.poke {
                poke.commit(1);
            }
        }
        wait
    }

    /// On the main thread, on each tick and poke: sends the fetches that are due (no
    /// lock held while Envoy takes them).
    pub fn tick(&self, handle: &ConfigHandle, shared: &Shared) {
        let now = millis(std::time::SystemTime::now());
        let host = &mut NativeReportHost::new(handle, shared);
        let due = driver::due(&mut lock(&self.follower), now, host, &|_| true);
        for i in due {
            let source = lock(&self.follower).directories.get(i).map(|d| d.source.clone());
            let Some(source) = source else { continue };
            match handle.http_callout(&source.cluster, &source.request_headers(), source.timeout) {
                Ok(id) => lock(&self.calls).push((id, i)),
                Err(_) => {
                    let _ = driver::answered(&mut lock(&self.follower), i, now, None, host);
                }
            }
        }
        self.wake();
    }

    /// Whether callout `id` is a directory's fetch.
    pub fn owns(&self, id: u64) -> bool {
        lock(&self.calls).iter().any(|(c, _)| *c == id)
    }

    /// A directory's fetch was answered, on the main thread.
    pub fn on_answer(&self, handle: &ConfigHandle, shared: &Shared, id: u64, response: Option<CalloutResponse>) {
        let index = {
            let mut calls = lock(&self.calls);
            let Some(at) = calls.iter().position(|(c, _)| *c == id) else { return };
            calls.swap_remove(at).1
        };
        let now = millis(std::time::SystemTime::now());
        let answer = response.and_then(|r| {
            let status = r.header(":status").and_then(|s| std::str::from_utf8(&s).ok()?.parse::<u16>().ok())?;
            let body_size = r.body.len();
            Some(DirectoryAnswer { status, cache_control: r.header("cache-control"), body: r.body, body_size })
        });
        let _ = driver::answered(&mut lock(&self.follower), index, now, answer.as_ref(), &mut NativeReportHost::new(handle, shared));
        self.wake();
    }

    /// Once no fetch is under way or asked for: wakes every held stream, on its worker.
    fn wake(&self) {
        if lock(&self.follower).busy() {
            return;
        }
        for scheduler in std::mem::take(&mut *lock(&self.waiters)) {
            scheduler.commit(0);
        }
    }
}

/// The thread that ticks a configuration that follows key directories.
pub fn ticker(handle: &ConfigHandle) -> Option<Ticker> {
    handle.scheduler().and_then(|s| Ticker::start(s, crate::spawn::TICK))
}
