//! An HMAC key (SHA-1 or SHA-256) with its padded key hashed once, when the
//! configuration is read, so that each request hashes only its own message.
//!
//! Two backends, one behaviour (the same MACs, checked in constant time):
//! - RustCrypto's `hmac` and `sha2`/`sha1` (the default): portable Rust, which the
//!   Wasm filter needs. On x86_64 it uses SHA-NI where the CPU has it and portable
//!   code otherwise.
//! - ring's (feature `ring`, which the native module enables): BoringSSL's SHA
//!   assembly, with SHA-NI, AVX2 and SSSE3 paths. On CPUs without SHA-NI (Intel server
//!   CPUs before Ice Lake) it costs about 0.6× the instructions of the portable code
//!   (BENCHMARKS.md, issue #20); with SHA-NI the two are alike.

/// The hash an HMAC key uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacHash {
    Sha1,
    Sha256,
}

pub use backend::HmacKey;

#[cfg(not(feature = "ring"))]
mod backend {
    use super::HmacHash;
    use hmac::{Hmac, Mac};
    use sha1::Sha1;
    use sha2::Sha256;

    /// A keyed HMAC state, cloned per message.
    #[derive(Clone)]
    pub enum HmacKey {
        Sha1(Hmac<Sha1>),
        Sha256(Hmac<Sha256>),
    }

    impl HmacKey {
        pub fn new(hash: HmacHash, secret: &[u8]) -> Result<Self, String> {
            let bad = |_| "the key cannot be used as an HMAC key".to_string();
            Ok(match hash {
                HmacHash::Sha1 => HmacKey::Sha1(Hmac::new_from_slice(secret).map_err(bad)?),
                HmacHash::Sha256 => HmacKey::Sha256(Hmac::new_from_slice(secret).map_err(bad)?),
            })
        }

        pub fn mac(&self, message: &[u8]) -> Vec<u8> {
            match self.clone() {
                HmacKey::Sha1(mut m) => {
                    m.update(message);
                    m.finalize().into_bytes().to_vec()
                }
                HmacKey::Sha256(mut m) => {
                    m.update(message);
                    m.finalize().into_bytes().to_vec()
                }
            }
        }

        /// Whether `mac` is this key's MAC of `message`, compared in constant time.
        pub fn verify(&self, message: &[u8], mac: &[u8]) -> bool {
            match self.clone() {
                HmacKey::Sha1(mut m) => {
                    m.update(message);
                    m.verify_slice(mac).is_ok()
                }
                HmacKey::Sha256(mut m) => {
                    m.update(message);
                    m.verify_slice(mac).is_ok()
                }
            }
        }
    }
}

#[cfg(feature = "ring")]
mod backend {
    use super::HmacHash;
    use ring::hmac;

    /// ring's key: the inner and outer hash states, copied per message.
    #[derive(Clone)]
    pub struct HmacKey(hmac::Key);

    impl HmacKey {
        pub fn new(hash: HmacHash, secret: &[u8]) -> Result<Self, String> {
            let algorithm = match hash {
                HmacHash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                HmacHash::Sha256 => hmac::HMAC_SHA256,
            };
            Ok(HmacKey(hmac::Key::new(algorithm, secret)))
        }

        pub fn mac(&self, message: &[u8]) -> Vec<u8> {
            hmac::sign(&self.0, message).as_ref().to_vec()
        }

        /// Whether `mac` is this key's MAC of `message`, compared in constant time.
        pub fn verify(&self, message: &[u8], mac: &[u8]) -> bool {
            hmac::verify(&self.0, message, mac).is_ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    // RFC 4231 test case 2 (HMAC-SHA256) and RFC 2202 test case 2 (HMAC-SHA1): the
    // same figures from either backend.
    const KEY: &[u8] = b"Jefe";
    const DATA: &[u8] = b"what do ya want for nothing?";
    const SHA256: &str = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    const SHA1: &str = "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79";

    #[test]
    fn known_answers() {
        let key = HmacKey::new(HmacHash::Sha256, KEY).unwrap();
        assert_eq!(hex(&key.mac(DATA)), SHA256);
        let key = HmacKey::new(HmacHash::Sha1, KEY).unwrap();
        assert_eq!(hex(&key.mac(DATA)), SHA1);
    }

    #[test]
    fn verify_accepts_only_the_exact_mac() {
        for hash in [HmacHash::Sha1, HmacHash::Sha256] {
            let key = HmacKey::new(hash, KEY).unwrap();
            let mac = key.mac(DATA);
            assert!(key.verify(DATA, &mac));
            assert!(!key.verify(b"what do ya want for nothing!", &mac));
            let mut flipped = mac.clone();
            flipped[0] ^= 1;
            assert!(!key.verify(DATA, &flipped));
            assert!(!key.verify(DATA, &mac[..mac.len() - 1]), "a truncated MAC is refused");
            assert!(!key.verify(DATA, &[]));
            let other = HmacKey::new(hash, b"Jefe2").unwrap();
            assert!(!other.verify(DATA, &mac));
        }
    }

    #[test]
    fn empty_and_long_secrets_are_keys_too() {
        // A secret longer than the block is hashed first (RFC 2104); an empty one is zeros.
        let long = [0xaa; 131];
        let key = HmacKey::new(HmacHash::Sha256, &long).unwrap();
        // RFC 4231 test case 6.
        assert_eq!(
            hex(&key.mac(b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        let empty = HmacKey::new(HmacHash::Sha256, b"").unwrap();
        assert_eq!(empty.mac(b"").len(), 32);
    }
}
