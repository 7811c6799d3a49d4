//! The middleware role's key directories in the Wasm filter. Envoy runs one VM per
//! worker (and one on its main thread), which share no memory: they act as one
//! through Envoy's shared data ([`coordination`]). One VM at a time holds a
//! directory's lease and fetches it from its root context's tick, publishing each good
//! answer for the others; a request naming an unknown key id, in any VM, asks the
//! leader for the one refetch the interval allows, and waits, paused, until a fetch is
//! answered: then it is decided again in its own context
//! ([`hostcalls::set_effective_context`]) and resumed or refused.

use std::cell::RefCell;
use std::sync::Arc;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use wsgiproxy_protocol::config::{Config, MiddlewareConfig};
use wsgiproxy_protocol::counters::middleware::{DIRECTORY_REFETCHES, DIRECTORY_WAITS};
use wsgiproxy_protocol::driver::key_directory::{self as driver, millis, DirectoryAnswer};
use wsgiproxy_protocol::driver::middleware::on_request_headers_following;
use wsgiproxy_protocol::driver::Flow;
use wsgiproxy_protocol::key_directory::coordination::{record_name, Document, Lease};
use wsgiproxy_protocol::key_directory::{Followed, Follower, UnknownKey};

use crate::host::{WasmHost, WasmReportHost};
use crate::shared::Shared;

/// One directory's records in shared data, and what this VM last saw of them.
struct SharedRecords {
    lease_key: String,
    document_key: String,
    leading: bool,
    /// The document's compare-and-swap value last taken.
    document_cas: Option<u32>,
    answers: u64,
}

pub struct WasmDirectories {
    /// This VM's id in the leases.
    me: u64,
    follower: RefCell<Follower>,
    records: RefCell<Vec<SharedRecords>>,
    /// Fetches under way: (call token, directory index).
    calls: RefCell<Vec<(u32, usize)>>,
    /// The request contexts held for a fetch, and since when (ms).
    waiters: RefCell<Vec<(u32, u64)>>,
    /// The longest a held request waits: the longest timeout, plus two ticks and a second.
    max_wait_ms: u64,
}

fn read(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

fn write(key: &str, value: &[u8], cas: Option<u32>) -> bool {
    hostcalls::set_shared_data(key, Some(value), cas).is_ok()
}

impl WasmDirectories {
    pub fn new(config: &MiddlewareConfig) -> Option<WasmDirectories> {
        let algorithm = config.verify.as_ref()?.algorithm;
        if config.key_directories.is_empty() {
            return None;
        }
        let records = config
            .key_directories
            .iter()
            .map(|source| {
                let name = record_name(source, algorithm);
                // Made at load (the main thread's VM loads first): compare-and-swap
                // holds only for a key that exists.
                if read(&format!("{name}.lease")).0.is_none() {
                    let _ = write(&format!("{name}.lease"), &Lease::default().encode(), None);
                }
                SharedRecords {
                    lease_key: format!("{name}.lease"),
                    document_key: format!("{name}.document"),
                    leading: false,
                    document_cas: None,
                    answers: 0,
                }
            })
            .collect();
        let max_timeout = config.key_directories.iter().map(|s| s.timeout).max().unwrap_or_default();
        let max_wait_ms = u64::try_from(max_timeout.as_millis()).unwrap_or(u64::MAX).saturating_add(1000 + 2 * 250);
        let me = crate::host::random_nonce().map_or(1, |n| u64::from_le_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]]) | 1);
        Some(WasmDirectories {
            me,
            follower: RefCell::new(Follower::new(algorithm, &config.key_directories)),
            records: RefCell::new(records),
            calls: RefCell::default(),
            waiters: RefCell::default(),
            max_wait_ms,
        })
    }

    pub fn followed(&self) -> Arc<Followed> {
        self.follower.borrow().followed()
    }

    /// Whether the request context is held for a fetch.
    pub fn holds(&self, context_id: u32) -> bool {
        self.waiters.borrow().iter().any(|(id, _)| *id == context_id)
    }

    /// A request names an unknown key id: true when it is to wait (it is then held
    /// until a fetch is answered, in whichever VM leads). The interval's gate is the
    /// lease's, shared by every VM.
    pub fn hold(&self, shared: &Shared, context_id: u32) -> bool {
        let now = millis(crate::host::now());
        let mut wait = false;
        let mut asked = false;
        let follower = self.follower.borrow();
        for (record, directory) in self.records.borrow().iter().zip(&follower.directories) {
            let interval = u64::try_from(directory.source.unknown_key_interval.as_millis()).unwrap_or(u64::MAX);
            let timeout = u64::try_from(directory.source.timeout.as_millis()).unwrap_or(u64::MAX);
            // Twice at most: another VM may write the lease between the read and the write.
            for _ in 0..2 {
                let (value, cas) = read(&record.lease_key);
                let lease = Lease::decode(value.as_deref().unwrap_or_default());
                match lease.unknown_key_seen(record.answers, now, interval, timeout) {
                    (UnknownKey::Refuse, _) => break,
                    (UnknownKey::Wait, None) => {
                        wait = true;
                        break;
                    }
                    (UnknownKey::Wait, Some(new)) => {
                        if write(&record.lease_key, &new.encode(), cas) {
                            wait = true;
                            asked = true;
                            break;
                        }
                    }
                }
            }
        }
        if asked {
            shared.metrics.add(DIRECTORY_REFETCHES, 1);
        }
        if wait {
            shared.metrics.add(DIRECTORY_WAITS, 1);
            self.waiters.borrow_mut().push((context_id, now));
        }
        wait
    }

    /// On the root's tick: takes or renews each directory's lease; the leader sends the
    /// fetches that are due, the others take the documents it published. Wakes the held
    /// requests when a fetch was answered (anywhere), or they waited too long.
    pub fn tick(&self, shared: &Shared, root_id: u32) {
        let now = millis(crate::host::now());
        let mut answered = false;
        {
            let mut records = self.records.borrow_mut();
            let mut follower = self.follower.borrow_mut();
            for (i, record) in records.iter_mut().enumerate() {
                let (value, cas) = read(&record.lease_key);
                let lease = Lease::decode(value.as_deref().unwrap_or_default());
                record.leading = false;
                if let Some(mut renewed) = lease.lead(self.me, now) {
                    let asked = renewed.asked != 0;
                    renewed.asked = 0;
                    if write(&record.lease_key, &renewed.encode(), cas) {
                        record.leading = true;
                        if asked {
                            if let Some(directory) = follower.directories.get_mut(i) {
                                directory.ask();
                            }
                        }
                    }
                }
                if lease.answers != record.answers {
                    record.answers = lease.answers;
                    answered = true;
                }
                // Also when this VM has just taken the lease: it may never have taken
                // the last leader's document, and its held requests wake on this tick.
                if !record.leading || lease.leader != self.me {
                    // Read after the lease: a leader publishes the document first.
                    let (document, document_cas) = read(&record.document_key);
                    if document_cas.is_some() && document_cas != record.document_cas {
                        record.document_cas = document_cas;
                        if let Some(document) = document.as_deref().and_then(Document::decode) {
                            driver::take_document(&mut follower, i, now, &document);
                        }
                    }
                }
            }
        }
        let host = &mut WasmReportHost::new(&shared.metrics);
        let leading: Vec<bool> = self.records.borrow().iter().map(|r| r.leading).collect();
        let due = driver::due(&mut self.follower.borrow_mut(), now, host, &|i| leading.get(i).copied().unwrap_or(false));
        for i in due {
            let sent = driver::send(&self.follower.borrow(), i, host);
            match sent.map(u32::try_from) {
                Ok(Ok(token)) => self.calls.borrow_mut().push((token, i)),
                _ => {
                    let _ = driver::answered(&mut self.follower.borrow_mut(), i, now, None, host);
                    self.publish_answer(i, None, now);
                    answered = true;
                }
            }
        }
        self.wake(shared, root_id, now, answered);
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
        let fetched =
            driver::answered(&mut self.follower.borrow_mut(), index, now, answer.as_ref(), &mut WasmReportHost::new(&shared.metrics));
        self.publish_answer(index, answer.filter(|_| fetched), now);
        self.wake(shared, root_id, now, true);
        true
    }

    /// The leader's answer, for the other VMs: the document when it was good, and in
    /// any case one more answer (their held requests are decided again).
    fn publish_answer(&self, i: usize, good: Option<DirectoryAnswer>, now: u64) {
        let records = self.records.borrow();
        let Some(record) = records.get(i) else { return };
        if let Some(answer) = good {
            let document = Document { fetched_at: now, cache_control: answer.cache_control, body: answer.body };
            let _ = write(&record.document_key, &document.encode(), None);
        }
        for _ in 0..4 {
            let (value, cas) = read(&record.lease_key);
            let lease = Lease::decode(value.as_deref().unwrap_or_default()).answered();
            if write(&record.lease_key, &lease.encode(), cas) {
                break;
            }
        }
    }

    /// Decides the held requests again, with the keys as they are now, in their own
    /// contexts: all of them when a fetch was answered, else those that waited too long.
    fn wake(&self, shared: &Shared, root_id: u32, now: u64, answered: bool) {
        let Config::Middleware(config) = &shared.config else { return };
        let due: Vec<u32> = {
            let mut waiters = self.waiters.borrow_mut();
            let (due, kept): (Vec<_>, Vec<_>) =
                waiters.drain(..).partition(|(_, since)| answered || now.saturating_sub(*since) > self.max_wait_ms);
            *waiters = kept;
            due.into_iter().map(|(id, _)| id).collect()
        };
        if due.is_empty() {
            return;
        }
        let followed = self.followed();
        for context_id in due {
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
