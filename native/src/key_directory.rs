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
    /// The streams held for a fetch, and since when (ms). Locked inside `follower`'s
    /// lock only, so that a stream held for a fetch is never missed by its answer.
    waiters: Mutex<Vec<(Arc<StreamScheduler>, u64)>>,
    /// The longest a held stream waits: the longest timeout, two ticks and a second.
    max_wait_ms: u64,
    /// Wakes the configuration on the main thread when a request asks for a refetch.
    poke: Option<Scheduler>,
}

impl NativeDirectories {
    pub fn new(config: &MiddlewareConfig, poke: Option<Scheduler>) -> Option<NativeDirectories> {
        let algorithm = config.verify.as_ref()?.algorithm;
        let max_timeout = config.key_directories.iter().map(|s| s.timeout).max().unwrap_or_default();
        let max_wait_ms = u64::try_from(max_timeout.as_millis()).unwrap_or(u64::MAX).saturating_add(1500);
        (!config.key_directories.is_empty()).then(|| NativeDirectories {
            follower: Mutex::new(Follower::new(algorithm, &config.key_directories)),
            calls: Mutex::default(),
            waiters: Mutex::default(),
            poke,
            max_wait_ms,
        })
    }

    pub fn followed(&self) -> Arc<Followed> {
        lock(&self.follower).followed()
    }

    /// A request names an unknown key id: true when it is to wait, its stream then
    /// woken through `scheduler` once the fetch is answered.
    pub fn hold(&self, scheduler: &Arc<StreamScheduler>, count: &mut dyn FnMut(&'static str)) -> bool {
        let now = millis(std::time::SystemTime::now());
        let wait = {
            let mut follower = lock(&self.follower);
            let wait = driver::unknown_key(&mut follower, now, count);
            if wait {
                lock(&self.waiters).push((scheduler.clone(), now));
            }
            wait
        };
        if wait {
            if let Some(poke) = &self.poke {
                poke.commit(POKE_EVENT);
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

    /// Wakes the held streams, each on its worker: all of them once no fetch is under
    /// way or asked for, else those that waited too long.
    fn wake(&self) {
        let now = millis(std::time::SystemTime::now());
        let due: Vec<Arc<StreamScheduler>> = {
            let follower = lock(&self.follower);
            let idle = !follower.busy();
            let mut waiters = lock(&self.waiters);
            let (due, kept): (Vec<_>, Vec<_>) =
                waiters.drain(..).partition(|(_, since)| idle || now.saturating_sub(*since) > self.max_wait_ms);
            *waiters = kept;
            due.into_iter().map(|(scheduler, _)| scheduler).collect()
        };
        for scheduler in due {
            scheduler.commit(0);
        }
    }
}

/// The scheduler event that asks the main thread to send a refetch at once (any
/// event but the key files' ticks the directories).
pub const POKE_EVENT: u64 = 2;
const _: () = assert!(POKE_EVENT != crate::key_files::EVENT);

/// The thread that ticks a configuration that follows key directories.
pub fn ticker(handle: &ConfigHandle) -> Option<Ticker> {
    handle.scheduler().and_then(|s| Ticker::start(s, crate::spawn::TICK))
}
