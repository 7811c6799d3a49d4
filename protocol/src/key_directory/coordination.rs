//! Several followers of one directory in one process (the Wasm filter's VMs, which
//! share no memory but Envoy's shared data) acting as one: a lease names the one that
//! fetches; it publishes each good answer as a [`Document`] the others take; an
//! unknown key id anywhere asks the leader for the one refetch the interval allows,
//! through the lease's `asked`; and `answers` tells every follower when a fetch it
//! waits for was answered (well or not). Plain records and decisions here; the
//! loader keeps them in its shared store, written with compare-and-swap.

use sha2::{Digest, Sha256};

use super::{DirectorySource, UnknownKey};
use crate::signature::Algorithm;

/// The name a directory's records go by: after what is fetched and how it is read, so
/// that every follower of the same directory alike shares them.
pub fn record_name(source: &DirectorySource, algorithm: Algorithm) -> String {
    let digest = Sha256::new().chain_update(format!("{source:?} {}", algorithm.name())).finalize();
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("wsgiproxy.key_directory.{hex}")
}

/// How long a leader's lease lasts without renewal (it renews on each tick).
pub const LEASE_MS: u64 = 1000;

/// Who fetches, and what the followers asked of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    /// The leader's id (random per follower; 0: none yet).
    pub leader: u64,
    /// Until when (ms) it leads unless it renews.
    pub until: u64,
    /// When (ms) an unknown key id last asked for a refetch: the interval's gate.
    pub last_refetch: u64,
    /// A refetch asked for and not yet sent (ms when asked; 0: none).
    pub asked: u64,
    /// A refetch asked for and not yet answered (ms when asked; 0: none): requests
    /// naming an unknown key wait for it rather than ask again.
    pub pending: u64,
    /// How many fetches were answered, well or not: followers wake their held requests
    /// when it moves.
    pub answers: u64,
}

const LEASE_LEN: usize = 48;

impl Lease {
    pub fn encode(&self) -> [u8; LEASE_LEN] {
        let mut out = [0u8; LEASE_LEN];
        for (chunk, value) in
            out.chunks_exact_mut(8).zip([self.leader, self.until, self.last_refetch, self.asked, self.pending, self.answers])
        {
            chunk.copy_from_slice(&value.to_le_bytes());
        }
        out
    }

    /// A stored lease; anything else reads as none (the first writer makes it).
    pub fn decode(bytes: &[u8]) -> Lease {
        if bytes.len() != LEASE_LEN {
            return Lease::default();
        }
        let mut words = bytes.chunks_exact(8).map(|c| {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            u64::from_le_bytes(w)
        });
        let mut next = || words.next().unwrap_or_default();
        Lease { leader: next(), until: next(), last_refetch: next(), asked: next(), pending: next(), answers: next() }
    }

    /// Whether `me` leads at `now`, taking the lease if it is free or expired; the
    /// lease to write back (renewed) when it does.
    pub fn lead(&self, me: u64, now: u64) -> Option<Lease> {
        (self.leader == me || self.until <= now).then_some(Lease { leader: me, until: now.saturating_add(LEASE_MS), ..*self })
    }

    /// A request names an unknown key id: wait for the refetch pending (asked, not yet
    /// answered, for at most its timeout and a second), ask for one if the last was an
    /// interval ago, else refuse. `Some` is the lease to write back.
    pub fn unknown_key(&self, now: u64, interval_ms: u64, timeout_ms: u64) -> (UnknownKey, Option<Lease>) {
        if self.pending != 0 && now.saturating_sub(self.pending) <= timeout_ms + 2000 {
            return (UnknownKey::Wait, None);
        }
        if self.last_refetch != 0 && now.saturating_sub(self.last_refetch) < interval_ms {
            return (UnknownKey::Refuse, None);
        }
        (UnknownKey::Wait, Some(Lease { last_refetch: now, asked: now, pending: now, ..*self }))
    }

    /// As [`Lease::unknown_key`], for a follower that has taken `seen` answers: when the
    /// lease counts more, another follower's fetch was answered since this one's last
    /// tick (the first fetch of a process just started, say) and its document may hold
    /// the key, so the request waits for that tick rather than be refused.
    pub fn unknown_key_seen(&self, seen: u64, now: u64, interval_ms: u64, timeout_ms: u64) -> (UnknownKey, Option<Lease>) {
        if self.answers != seen {
            return (UnknownKey::Wait, None);
        }
        self.unknown_key(now, interval_ms, timeout_ms)
    }

    /// A fetch was answered: one more answer, and no refetch pending.
    pub fn answered(&self) -> Lease {
        Lease { answers: self.answers.wrapping_add(1), pending: 0, ..*self }
    }
}

/// A good answer, as the leader publishes it for the followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// When (ms) it was fetched: its freshness counts from then, in every follower.
    pub fetched_at: u64,
    pub cache_control: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

impl Document {
    /// `fetched_at`, the `Cache-Control`'s length (u32, `u32::MAX`: none), then both.
    pub fn encode(&self) -> Vec<u8> {
        let cache_control = self.cache_control.as_deref().unwrap_or_default();
        let mut out = Vec::with_capacity(12 + cache_control.len() + self.body.len());
        out.extend_from_slice(&self.fetched_at.to_le_bytes());
        let len = if self.cache_control.is_some() { u32::try_from(cache_control.len()).unwrap_or(0) } else { u32::MAX };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(cache_control);
        out.extend_from_slice(&self.body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Document> {
        let fetched_at = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let len = u32::from_le_bytes(bytes.get(8..12)?.try_into().ok()?);
        let (cache_control, body) = if len == u32::MAX {
            (None, bytes.get(12..)?)
        } else {
            let end = 12usize.checked_add(usize::try_from(len).ok()?)?;
            (Some(bytes.get(12..end)?.to_vec()), bytes.get(end..)?)
        };
        Some(Document { fetched_at, cache_control, body: body.to_vec() })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn records_round_trip() {
        let lease = Lease { leader: 7, until: 8, last_refetch: 9, asked: 10, pending: 12, answers: 11 };
        assert_eq!(Lease::decode(&lease.encode()), lease);
        assert_eq!(Lease::decode(b"short"), Lease::default());
        for cache_control in [None, Some(b"max-age=5".to_vec()), Some(Vec::new())] {
            let doc = Document { fetched_at: 5, cache_control, body: b"{\"keys\":[]}".to_vec() };
            assert_eq!(Document::decode(&doc.encode()), Some(doc));
        }
        assert_eq!(Document::decode(b"\x01\x02"), None);
        assert_eq!(Document::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, b'x']), None);
    }

    #[test]
    fn one_leader_at_a_time_until_its_lease_expires() {
        let free = Lease::default();
        let a = free.lead(1, 100).unwrap();
        assert_eq!(a.lead(2, 500), None, "b waits while a leads");
        assert!(a.lead(1, 500).is_some(), "a renews");
        assert_eq!(a.lead(2, 100 + LEASE_MS).unwrap().leader, 2, "b takes an expired lease");
    }

    #[test]
    fn unknown_keys_anywhere_ask_once_per_interval() {
        let (interval, timeout) = (30_000, 2_000);
        let lease = Lease::default();
        let (verdict, asked) = lease.unknown_key(1_000, interval, timeout);
        let asked = asked.unwrap();
        assert_eq!((verdict, asked.asked, asked.last_refetch), (UnknownKey::Wait, 1_000, 1_000));
        // Others, while it is pending: wait for it, ask nothing.
        assert_eq!(asked.unknown_key(2_500, interval, timeout), (UnknownKey::Wait, None));
        // Answered: refused at once within the interval.
        let answered = asked.answered();
        assert_eq!(answered.answers, 1);
        assert_eq!(answered.unknown_key(2_600, interval, timeout), (UnknownKey::Refuse, None));
        // Never answered (a leader gone): refused once it is past its timeout.
        assert_eq!(asked.unknown_key(5_001, interval, timeout), (UnknownKey::Refuse, None));
        // An interval on: asked again.
        assert!(matches!(answered.unknown_key(31_000, interval, timeout), (UnknownKey::Wait, Some(_))));
    }

    /// A follower that has not yet taken the answer another follower's fetch got
    /// (a hot-restarted Envoy's second worker, before its first tick) waits for its
    /// tick instead of being refused within the interval; once it has taken it, the
    /// interval's gate applies.
    #[test]
    fn an_answer_a_follower_has_not_taken_yet_is_waited_for() {
        let (interval, timeout) = (30_000, 2_000);
        let (_, asked) = Lease::default().unknown_key(1_000, interval, timeout);
        let answered = asked.unwrap().answered();
        assert_eq!(answered.unknown_key_seen(0, 1_100, interval, timeout), (UnknownKey::Wait, None));
        assert_eq!(answered.unknown_key_seen(1, 1_100, interval, timeout), (UnknownKey::Refuse, None));
        assert!(matches!(Lease::default().unknown_key_seen(0, 1_000, interval, timeout), (UnknownKey::Wait, Some(_))));
    }
}
