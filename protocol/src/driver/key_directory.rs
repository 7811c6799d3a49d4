//! A receiver's key directories, driven from the configuration's own context (the
//! Wasm filter's root context on its tick, the native module's configuration on
//! Envoy's main thread): send the fetches that are due, take their answers, count
//! and log what changed (each failure streak once), and keep the merged keys
//! requests read ([`Follower::followed`]).

use std::time::{SystemTime, UNIX_EPOCH};

use crate::counters::middleware::*;
use crate::host::ReportHost;
use crate::key_directory::{Answered, Follower, UnknownKey};

/// Milliseconds since the epoch: the directories' clock.
pub fn millis(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or_default()
}

/// What a directory's fetch was answered with, as the loader read it.
pub struct DirectoryAnswer {
    pub status: u16,
    pub cache_control: Option<Vec<u8>>,
    /// The body, unless it is larger than the directory's `max_bytes` (then not read).
    pub body: Vec<u8>,
    /// The body's size as it came.
    pub body_size: usize,
}

/// On each tick: fails fetches that outlived their timeout, drops keys stale past
/// their bound, and returns the directories (by index) whose fetch is due now, each
/// then under way: the loader sends them with [`send`] (outside any lock it holds).
/// Only the directories `leads` names are fetched (and their dropped keys counted and
/// logged); the others' keys come from the one that leads ([`crate::key_directory::coordination`]).
pub fn due<H: ReportHost>(follower: &mut Follower, now: u64, host: &mut H, leads: &dyn Fn(usize) -> bool) -> Vec<usize> {
    let mut changed = false;
    for i in 0..follower.directories.len() {
        if !leads(i) {
            changed |= follower.directories[i].drop_expired(now);
            continue;
        }
        if follower.directories[i].overdue(now) {
            answered(follower, i, now, None, host);
        }
        let directory = &mut follower.directories[i];
        if directory.drop_expired(now) {
            host.count(DIRECTORY_KEYS_DROPPED, 1);
            host.warn(format_args!(
                "wsgiproxy middleware: key directory {} ({}{}): its last good keys are older than max_stale_seconds and were dropped: signatures by them are refused until it answers",
                i, directory.source.authority, directory.source.path
            ));
            changed = true;
        }
    }
    if changed {
        follower.remerge(now);
    }
    (0..follower.directories.len()).filter(|&i| leads(i) && follower.directories[i].due(now)).collect()
}

/// Sends directory `i`'s fetch; `None` (and the fetch counted as failed) when the host
/// did not send it.
pub fn send<H: ReportHost>(follower: &Follower, i: usize, host: &mut H) -> Result<u64, String> {
    let source = &follower.directories.get(i).ok_or("no such directory")?.source;
    host.http_callout(&source.cluster, &source.request_headers(), source.timeout)
}

/// Directory `i`'s answer (`None`: none came): new keys in, or the last good ones
/// kept; counted, and a failure streak logged once. True when new keys came in.
pub fn answered<H: ReportHost>(follower: &mut Follower, i: usize, now: u64, answer: Option<&DirectoryAnswer>, host: &mut H) -> bool {
    let algorithm = follower.algorithm;
    let Some(directory) = follower.directories.get_mut(i) else { return false };
    let answered = match answer {
        Some(a) if a.body_size > directory.source.max_bytes => {
            directory.on_result(now, Err(crate::key_directory::FetchError::TooLarge(a.body_size)))
        }
        _ => directory.on_answer(now, algorithm, answer.map(|a| (a.status, a.cache_control.as_deref(), a.body.as_slice()))),
    };
    let fetched = matches!(answered, Answered::Fetched { .. });
    match answered {
        Answered::Fetched { keys, recovered } => {
            host.count(DIRECTORY_FETCHES, 1);
            if recovered {
                host.info(format_args!(
                    "wsgiproxy middleware: key directory {i} ({}{}) answers again: {keys} keys",
                    directory.source.authority, directory.source.path
                ));
            } else {
                host.debug(format_args!("wsgiproxy middleware: key directory {i} fetched: {keys} keys"));
            }
        }
        Answered::Failed { error, first } => {
            host.count(DIRECTORY_FETCH_FAILURES, 1);
            if first {
                host.warn(format_args!(
                    "wsgiproxy middleware: key directory {i} (cluster {}, {}{}) {error}; its last good keys stay for max_stale_seconds past their freshness (logged once until it answers again)",
                    directory.source.cluster, directory.source.authority, directory.source.path
                ));
            }
        }
    }
    follower.remerge(now);
    fetched
}

/// A document another follower fetched (see [`crate::key_directory::coordination`]):
/// its keys in, fresh from when it was fetched. Neither counted nor logged here: the
/// one that fetched it did.
pub fn take_document(follower: &mut Follower, i: usize, now: u64, document: &crate::key_directory::coordination::Document) {
    let algorithm = follower.algorithm;
    let Some(directory) = follower.directories.get_mut(i) else { return };
    let answer = (200, document.cache_control.as_deref(), document.body.as_slice());
    directory.on_answer(document.fetched_at.min(now), algorithm, Some(answer));
    follower.remerge(now);
}

/// A request names a key id no key holds: whether it is to wait for a fetch. Counts
/// (with `count`, from the request's own context) the fetch asked for, and the wait.
pub fn unknown_key(follower: &mut Follower, now: u64, count: &mut dyn FnMut(&'static str)) -> bool {
    let (verdict, asked) = follower.unknown_key(now);
    if asked {
        count(DIRECTORY_REFETCHES);
    }
    if verdict == UnknownKey::Wait {
        count(DIRECTORY_WAITS);
    }
    verdict == UnknownKey::Wait
}
