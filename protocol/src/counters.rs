//! The counters each role reports, under `wsgiproxy.`: one list for both loaders,
//! so that the Wasm filter and the native module report the same names. The drivers
//! count by these constants; a loader declares [`declared`] for its role.
//!
//! The roles that answer requests themselves (`app`, `middleware`, `exact`) also
//! count each refusal as `{role}.rejected.{reason}` ([`refused`]), one counter per
//! [`Reason`]: the native module can define no counter once configured, so it
//! declares them all up front.

use crate::reason::Reason;

/// The hasher of the loaders' counter tables: a multiply per eight bytes (FNV-1a's
/// form, a word at a time), several times cheaper than the standard SipHash for a
/// short name. The names are the filter's own (this module's), never a client's, so
/// flooding one bucket is not a concern.
#[derive(Debug, Clone, Copy)]
pub struct NameHasher(u64);

impl Default for NameHasher {
    fn default() -> Self {
        NameHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl NameHasher {
    fn mix(&mut self, word: u64) {
        // The rotation brings the product's well-mixed high bits down to the low
        // ones, from which the table takes a bucket.
        self.0 = (self.0 ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

impl std::hash::Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.mix(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            // The length marks the last word apart from a shorter one's zero padding.
            let last = rest.iter().enumerate().fold(rest.len() as u64, |w, (i, b)| w | u64::from(*b) << (8 * i + 8));
            self.mix(last);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by counter name, hashed with [`NameHasher`].
pub type NameMap<V> = std::collections::HashMap<String, V, std::hash::BuildHasherDefault<NameHasher>>;

pub mod app {
    pub const REQUESTS: &str = "app.requests";
    pub const FORWARDED: &str = "app.forwarded";
    pub const SIGNED: &str = "app.signed";
    pub const STRIPPED_HEADERS: &str = "app.stripped_headers";
    pub const INVALID_KEYS: &str = "app.invalid_keys";
    pub const REWRITTEN_LOCATIONS: &str = "app.rewritten_locations";
    pub const REWRITTEN_COOKIES: &str = "app.rewritten_cookies";
    /// A key file changed and its keys are in use (native module: `secret.keys[i].file`).
    pub const KEY_FILE_RELOADS: &str = "app.key_file_reloads";
    /// A key file turned unreadable or invalid: the last good keys stay.
    pub const KEY_FILE_ERRORS: &str = "app.key_file_errors";
    /// `publish_key_directory`: requests answered with the sender's key directory.
    pub const KEY_DIRECTORY_SERVED: &str = "app.key_directory_served";
    pub const ALL: &[&str] = &[
        REQUESTS,
        FORWARDED,
        SIGNED,
        STRIPPED_HEADERS,
        INVALID_KEYS,
        REWRITTEN_LOCATIONS,
        REWRITTEN_COOKIES,
        KEY_FILE_RELOADS,
        KEY_FILE_ERRORS,
        KEY_DIRECTORY_SERVED,
    ];
}

pub mod middleware {
    pub const REQUESTS: &str = "middleware.requests";
    pub const TRUSTED: &str = "middleware.trusted";
    pub const UNTRUSTED: &str = "middleware.untrusted";
    pub const VERIFIED: &str = "middleware.verified";
    pub const STRIPPED_HEADERS: &str = "middleware.stripped_headers";
    pub const DROPPED_KEYS: &str = "middleware.dropped_keys";
    pub const SIGNATURE_MISSING: &str = "middleware.signature_missing";
    pub const PEER_UNKNOWN: &str = "middleware.peer_unknown";
    /// The native module found a replay memory file it could not trust (foreign,
    /// damaged, another boot's) or could map none: a new memory began (425 rule).
    pub const REPLAY_MEMORY_UNTRUSTED: &str = "middleware.replay_memory_untrusted";
    /// A key file changed and its keys are in use (native module: `secret.keys[i].file`).
    pub const KEY_FILE_RELOADS: &str = "middleware.key_file_reloads";
    /// A key file turned unreadable or invalid: the last good keys stay.
    pub const KEY_FILE_ERRORS: &str = "middleware.key_file_errors";
    /// `key_directories`: answers taken (new keys in).
    pub const DIRECTORY_FETCHES: &str = "middleware.directory_fetches";
    /// `key_directories`: fetches that failed (the last good keys stay).
    pub const DIRECTORY_FETCH_FAILURES: &str = "middleware.directory_fetch_failures";
    /// `key_directories`: fetches a signature's unknown key id asked for.
    pub const DIRECTORY_REFETCHES: &str = "middleware.directory_refetches";
    /// `key_directories`: requests held for a fetch.
    pub const DIRECTORY_WAITS: &str = "middleware.directory_waits";
    /// `key_directories`: a directory's last good keys dropped, stale past `max_stale_seconds`.
    pub const DIRECTORY_KEYS_DROPPED: &str = "middleware.directory_keys_dropped";
    pub const ALL: &[&str] = &[
        REQUESTS,
        TRUSTED,
        UNTRUSTED,
        VERIFIED,
        STRIPPED_HEADERS,
        DROPPED_KEYS,
        SIGNATURE_MISSING,
        PEER_UNKNOWN,
        REPLAY_MEMORY_UNTRUSTED,
        KEY_FILE_RELOADS,
        KEY_FILE_ERRORS,
        DIRECTORY_FETCHES,
        DIRECTORY_FETCH_FAILURES,
        DIRECTORY_REFETCHES,
        DIRECTORY_WAITS,
        DIRECTORY_KEYS_DROPPED,
    ];
}

pub mod exact {
    /// Requests checked by name, before routing.
    pub const REQUESTS: &str = "exact.requests";
    pub const FORWARDED: &str = "exact.forwarded";
    /// Requests checked by the resolved address, as the cluster's upstream filter.
    pub const RESOLVED_CHECKS: &str = "exact.resolved_checks";
    pub const ALL: &[&str] = &[REQUESTS, FORWARDED, RESOLVED_CHECKS];
}

/// Counted by the spawn driver (`driver/spawn.rs`), declared by both loaders from this list.
pub mod spawn {
    pub const ALL: &[&str] = &[
        "spawn.requests",
        "spawn.lease_hits",
        "spawn.ensure_calls",
        "spawn.cold_starts",
        "spawn.unavailable",
        "spawn.reports",
        "spawn.connect_failures",
        "spawn.waiting_pages",
        "spawn.upstream_unset",
    ];
}

/// The `peer` network filter (the Wasm filter's and the native module's).
pub mod peer {
    pub const CONNECTIONS: &str = "peer.connections";
    pub const UNRECORDED: &str = "peer.unrecorded";
    pub const ALL: &[&str] = &[CONNECTIONS, UNRECORDED];
}

/// The counter of `role`'s refusals for `reason`: `{role}.rejected.{reason}`.
pub fn refused(role: &str, reason: Reason) -> String {
    format!("{role}.rejected.{reason}")
}

/// Whether `role` answers requests itself, and so counts its refusals.
pub fn refuses(role: &str) -> bool {
    matches!(role, "app" | "middleware" | "exact")
}

/// The role's own counters (as [`crate::config::Config::role`] names the role).
pub fn of_role(role: &str) -> &'static [&'static str] {
    match role {
        "app" => app::ALL,
        "middleware" => middleware::ALL,
        "exact" => exact::ALL,
        "spawn" => spawn::ALL,
        "peer" => peer::ALL,
        _ => &[],
    }
}

/// The refusal counters of `role`: one per reason, none for a role that refuses nothing.
pub fn refusals(role: &str) -> impl Iterator<Item = String> + '_ {
    Reason::ALL.iter().filter(move |_| refuses(role)).map(move |reason| refused(role, *reason))
}

/// Every counter `role` may count: its own and, when it refuses requests, one per reason.
pub fn declared(role: &str) -> Vec<String> {
    of_role(role).iter().map(|name| (*name).to_string()).chain(refusals(role)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_declares_its_counters_under_its_own_name() {
        for role in ["app", "middleware", "exact", "spawn", "peer"] {
            let names = declared(role);
            assert!(!names.is_empty(), "{role}");
            assert!(names.iter().all(|n| n.starts_with(&format!("{role}."))), "{role}: {names:?}");
            let unique: std::collections::HashSet<&String> = names.iter().collect();
            assert_eq!(unique.len(), names.len(), "{role}: a name twice");
        }
    }

    #[test]
    fn every_counter_name_hashes_apart() {
        use std::hash::BuildHasher;
        let hasher = std::hash::BuildHasherDefault::<NameHasher>::default();
        let mut names: Vec<String> = ["app", "middleware", "exact", "spawn", "peer"].iter().flat_map(|role| declared(role)).collect();
        names.extend(["", "a", "a\0", "abcdefgh", "abcdefgh\0", "abcdefghi"].map(String::from));
        let hashes: std::collections::HashSet<u64> = names.iter().map(|n| hasher.hash_one(n)).collect();
        assert_eq!(hashes.len(), names.len());
        let map: NameMap<usize> = names.iter().cloned().zip(0..).collect();
        assert!(names.iter().enumerate().all(|(i, n)| map.get(n) == Some(&i)));
    }

    #[test]
    fn the_refusing_roles_declare_every_reason() {
        for role in ["app", "middleware", "exact"] {
            let names = declared(role);
            for reason in Reason::ALL {
                assert!(names.contains(&refused(role, *reason)), "{role}: {reason}");
            }
        }
        assert!(declared("app").contains(&"app.rejected.unsignable".to_string()));
        assert!(!declared("spawn").iter().any(|n| n.contains(".rejected.")));
    }
}
