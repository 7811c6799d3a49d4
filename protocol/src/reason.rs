//! Why a role answered a request itself instead of forwarding it. Each reason is
//! sent as the reply's `x-wsgiproxy-error` header and counted as
//! `{role}.rejected.{reason}`; both loaders declare those counters from [`Reason::ALL`],
//! so a reason one of them cannot count cannot be written.

use std::fmt;

/// Declares the reasons once: the enum, its wire names, and the list of them all.
macro_rules! reasons {
    ($($(#[$doc:meta])* $variant:ident => $text:literal,)*) => {
        /// A stable, short reason code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $variant,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// The reason as sent and counted (`bad_host`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$variant => $text,)*
                }
            }
        }
    };
}

reasons! {
    // The request itself.
    NoPath => "no_path",
    UnsupportedTarget => "unsupported_target",
    UnsafePath => "unsafe_path",
    BadHost => "bad_host",
    /// A header the role would write holds a control character.
    ControlCharacter => "control_character",
    // The app role.
    OutsideMount => "outside_mount",
    /// `client_address` is `peer` and the TCP peer is unknown.
    PeerUnknown => "peer_unknown",
    /// Signing needs a nonce and the host gave no random bytes.
    NoRandomness => "no_randomness",
    /// A value sent cannot stand in an RFC 9421 signature base.
    Unsignable => "unsignable",
    /// `bind_endpoint`: the cluster's upstream filter got a request the role's
    /// pre-routing pass did not prepare (a listener or route without it), so its
    /// protocol headers may be a client's: it is not signed.
    Unprepared => "unprepared",
    // The middleware role: trust and signatures.
    UntrustedPeer => "untrusted_peer",
    SignatureMissing => "signature_missing",
    SignatureBad => "signature_bad",
    SignatureStale => "signature_stale",
    /// Dated further ahead of this proxy's clock than `max_future_seconds`.
    SignatureDatedAhead => "signature_dated_ahead",
    SignatureReplayed => "signature_replayed",
    ReplayStoreUnavailable => "replay_store_unavailable",
    /// Signed at or before the second this Envoy's replay memory began (425).
    SignedBeforeRestart => "signed_before_restart",
    /// `key_directories`: the signature's key id is in no key, even after a refetch.
    SignatureKeyUnknown => "signature_key_unknown",
    /// `key_directories`: no directory has a usable key (never fetched, or stale past
    /// `max_stale_seconds`), and no inline key names the signature's: fail closed (503).
    KeyDirectoryUnavailable => "key_directory_unavailable",
    /// `bind_endpoint`: the signature names no endpoint.
    EndpointMissing => "endpoint_missing",
    /// `bind_endpoint`: the signature was made for another endpoint (a replica).
    WrongEndpoint => "wrong_endpoint",
    // The middleware role: the protocol headers.
    DuplicateHeader => "duplicate_header",
    OversizedHeader => "oversized_header",
    TooManyPayloads => "too_many_payloads",
    UnsupportedVersion => "unsupported_version",
    BadForwardedFor => "bad_forwarded_for",
    BadForwardedServer => "bad_forwarded_server",
    BadForwardedScheme => "bad_forwarded_scheme",
    ConflictingScriptName => "conflicting_script_name",
    BadScriptName => "bad_script_name",
    BadTraversalPath => "bad_traversal_path",
    OutsideTraversalPath => "outside_traversal_path",
    OutsidePopPrefix => "outside_pop_prefix",
    BadPayloadIndex => "bad_payload_index",
    BadPayload => "bad_payload",
    DuplicateKey => "duplicate_key",
    UndecodablePayload => "undecodable_payload",
    UndeliverableValue => "undeliverable_value",
    // The exact role.
    DestinationNotAllowed => "destination_not_allowed",
    // The spawn role.
    SidecarUnreachable => "sidecar_unreachable",
    AppUnavailable => "app_unavailable",
    AppStarting => "app_starting",
    /// Envoy did not take the destination the role chose (its filter state): the
    /// request is answered rather than left to a cluster that might obey a client.
    UpstreamUnset => "upstream_unset",
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_lowercase_name() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let name = reason.as_str();
            assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
            assert!(seen.insert(name), "{name} twice");
        }
        assert_eq!(Reason::Unsignable.to_string(), "unsignable");
    }
}
