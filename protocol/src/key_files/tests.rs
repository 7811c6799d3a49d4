use super::*;
use crate::config::{parse_with_files, Config, ConfigError};
use serde_json::json;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A file system in memory. A path may be a symlink to another (as Kubernetes
/// mounts a Secret: `key -> ..data/key`, `..data -> ..2026_12_07_…`); writing a
/// file in place keeps its inode, a new file gets a new one.
#[derive(Default)]
struct FakeFiles {
    files: RefCell<BTreeMap<String, (FileStamp, Vec<u8>)>>,
    links: RefCell<BTreeMap<String, String>>,
    reads: RefCell<u32>,
    next_inode: RefCell<u64>,
    unreadable: RefCell<bool>,
}

impl FakeFiles {
    fn resolve(&self, path: &str) -> String {
        let mut path = path.to_string();
        // Every symlinked prefix, as the kernel resolves it.
        for _ in 0..8 {
            let links = self.links.borrow();
            let Some((from, to)) = links.iter().find(|(from, _)| path == **from || path.starts_with(&format!("{from}/"))) else { break };
            path = format!("{to}{}", &path[from.len()..]);
        }
        path
    }

    /// A new file (a new inode) at `path`.
    fn create(&self, path: &str, content: &[u8]) {
        let mut inode = self.next_inode.borrow_mut();
        *inode += 1;
        let stamp = FileStamp { device: 1, inode: *inode, len: content.len() as u64, modified_ns: 1, changed_ns: 1 };
        self.files.borrow_mut().insert(path.to_string(), (stamp, content.to_vec()));
    }

    /// Rewrites the file in place: same inode, new times.
    fn write_in_place(&self, path: &str, content: &[u8]) {
        let path = self.resolve(path);
        let mut files = self.files.borrow_mut();
        let (stamp, old) = files.get_mut(&path).unwrap();
        stamp.len = content.len() as u64;
        stamp.modified_ns += 1;
        stamp.changed_ns += 1;
        *old = content.to_vec();
    }

    fn link(&self, from: &str, to: &str) {
        self.links.borrow_mut().insert(from.to_string(), to.to_string());
    }

    fn remove(&self, path: &str) {
        self.files.borrow_mut().remove(&self.resolve(path));
    }

    /// A Kubernetes Secret volume at `/secret` whose version `version` holds `key`:
    /// `/secret/key -> ..data/key`, `..data -> ..{version}` (swapped atomically).
    fn secret_version(&self, version: &str, key: &[u8]) {
        self.create(&format!("/secret/..{version}/key"), key);
        self.link("/secret/..data", &format!("/secret/..{version}"));
        self.link("/secret/key", "/secret/..data/key");
    }

    fn reads(&self) -> u32 {
        *self.reads.borrow()
    }
}

impl KeyFiles for FakeFiles {
    fn stamp(&self, path: &str) -> std::io::Result<FileStamp> {
        if *self.unreadable.borrow() {
            return Err(std::io::ErrorKind::PermissionDenied.into());
        }
        self.files.borrow().get(&self.resolve(path)).map(|f| f.0).ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }

    fn read(&self, path: &str, limit: usize) -> std::io::Result<(FileStamp, Zeroizing<Vec<u8>>)> {
        *self.reads.borrow_mut() += 1;
        let (stamp, content) = self.files.borrow().get(&self.resolve(path)).cloned().ok_or(std::io::ErrorKind::NotFound)?;
        if content.len() > limit {
            return Err(std::io::Error::other("larger than the limit"));
        }
        Ok((stamp, Zeroizing::new(content)))
    }
}

const OLD: &str = "the-old-shared-key-0123456789";
const NEW: &str = "the-new-shared-key-0123456789";

fn config(value: serde_json::Value, files: &FakeFiles) -> Result<Config, ConfigError> {
    parse_with_files(
        value.to_string().as_bytes(),
        &|name| (name == "K_ENV").then(|| "an-environment-key-0123456789".to_string()),
        Some(files),
    )
}

fn middleware(secret: serde_json::Value, files: &FakeFiles) -> Keys {
    match config(json!({"role": "middleware", "trust_ips": ["0.0.0.0/0"], "secret": secret}), files) {
        Ok(Config::Middleware(m)) => m.verify.unwrap(),
        other => panic!("{other:?}"),
    }
}

fn error(secret: serde_json::Value, files: &FakeFiles) -> ConfigError {
    config(json!({"role": "middleware", "trust_ips": ["0.0.0.0/0"], "secret": secret}), files).err().unwrap()
}

/// Whether the ring holds key `id` with the HMAC secret `secret`.
fn holds(keys: &Keys, id: &str, secret: &str) -> bool {
    let expected = KeyRing::new(keys.algorithm, &[(id.to_string(), secret.as_bytes().to_vec())]).unwrap();
    let ring = keys.ring();
    ring.key(id).is_some_and(|k| k.mac_of(b"message") == expected.key(id).unwrap().mac_of(b"message"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn a_key_file_is_read_at_start_its_trailing_line_break_aside() {
    let files = FakeFiles::default();
    files.create("/keys/k1", format!("{OLD}\n").as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/keys/k1"}, {"id": "k2", "env": "K_ENV"}]}), &files);
    assert!(holds(&keys, "k1", OLD));
    assert!(holds(&keys, "k2", "an-environment-key-0123456789"));
    assert!(keys.watches_files());
    assert_eq!(keys.check_every(), DEFAULT_FILE_CHECK);
}

#[test]
fn inline_and_environment_keys_are_not_watched() {
    let files = FakeFiles::default();
    let keys = middleware(json!({"keys": [{"id": "k1", "value": OLD}]}), &files);
    assert!(!keys.watches_files());
    assert!(keys.poll(&files, secs(100)).is_empty());
}

#[test]
fn a_missing_or_invalid_file_at_start_is_a_config_error_naming_the_field() {
    let files = FakeFiles::default();
    let e = error(json!({"keys": [{"id": "k0", "value": OLD}, {"id": "k1", "file": "/nowhere"}]}), &files);
    assert_eq!(e.field, "secret.keys[1].file");
    assert!(e.message.contains("\"/nowhere\" cannot be read: no such file"), "{e}");

    files.create("/short", b"short\n");
    let e = error(json!({"keys": [{"id": "k1", "file": "/short"}]}), &files);
    assert_eq!(e.field, "secret.keys");
    assert!(e.message.contains("shorter than 16 bytes"), "{e}");

    files.create("/empty", b"\n");
    assert_eq!(error(json!({"keys": [{"id": "k1", "file": "/empty"}]}), &files).field, "secret.keys[0].file");

    let e = error(json!({"keys": [{"id": "k1", "file": "/short", "value": OLD}]}), &files);
    assert_eq!((e.field.as_str(), e.message.as_str()), ("secret.keys[0]", "takes exactly one of \"env\", \"value\" or \"file\""));
    assert_eq!(error(json!({"keys": [{"value": OLD}]}), &files).field, "secret.keys[0].id");
    for bad in [0, 99, 3_600_001] {
        files.create("/k", OLD.as_bytes());
        assert_eq!(error(json!({"keys": [{"id": "k1", "file": "/k"}], "file_check_ms": bad}), &files).field, "secret.file_check_ms");
    }
}

#[test]
fn without_file_access_a_file_key_is_refused_naming_the_field() {
    let json = json!({"role": "middleware", "trust_ips": ["0.0.0.0/0"], "secret": {"keys": [{"id": "k1", "file": "/keys/k1"}]}});
    let e = crate::config::parse(json.to_string().as_bytes(), &|_| None).err().unwrap();
    assert_eq!(e.field, "secret.keys[0].file");
    assert!(e.message.contains("Wasm filter"), "{e}");
}

#[test]
fn a_kubernetes_style_symlink_swap_is_followed_once_the_interval_is_past() {
    let files = FakeFiles::default();
    files.secret_version("2026_12_07_01", OLD.as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/secret/key"}], "file_check_ms": 500}), &files);
    assert!(holds(&keys, "k1", OLD));
    assert!(keys.poll(&files, secs(10)).is_empty(), "nothing changed");
    let held = keys.ring();

    files.secret_version("2026_12_07_02", NEW.as_bytes());
    assert!(keys.poll(&files, secs(10) + Duration::from_millis(499)).is_empty(), "checked at most every 500 ms");
    assert!(holds(&keys, "k1", OLD));
    let events = keys.poll(&files, secs(10) + Duration::from_millis(500));
    assert_eq!(events, vec![KeyFileEvent::Reloaded { field: "secret.keys[0].file".into(), path: "/secret/key".into(), recovered: false }]);
    assert!(holds(&keys, "k1", NEW) && !holds(&keys, "k1", OLD));
    // A request that began before the swap finishes with the ring it had.
    assert!(held.key("k1").is_some_and(
        |k| k.mac_of(b"m") == KeyRing::new(keys.algorithm, &[("k1".into(), OLD.into())]).unwrap().key("k1").unwrap().mac_of(b"m")
    ));
}

#[test]
fn an_in_place_write_is_followed_and_an_unchanged_file_is_not_read_again() {
    let files = FakeFiles::default();
    files.create("/k", OLD.as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/k"}]}), &files);
    let reads = files.reads();
    for s in 1..=5 {
        assert!(keys.poll(&files, secs(s)).is_empty());
    }
    assert_eq!(files.reads(), reads, "stat only, while the file is the same");
    files.write_in_place("/k", NEW.as_bytes());
    assert_eq!(keys.poll(&files, secs(6)).len(), 1);
    assert!(holds(&keys, "k1", NEW));
    // The same content again (a touch, a rewrite): read, and nothing changes.
    files.write_in_place("/k", NEW.as_bytes());
    assert!(keys.poll(&files, secs(7)).is_empty());
    assert_eq!(files.reads(), reads + 2);
}

#[test]
fn an_invalid_file_keeps_the_last_good_keys_reported_once_then_recovers() {
    let files = FakeFiles::default();
    files.create("/k", OLD.as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/k"}]}), &files);
    let failed = |events: Vec<KeyFileEvent>| -> Vec<bool> {
        events
            .into_iter()
            .map(|e| match e {
                KeyFileEvent::Failed { field, reason, first, .. } => {
                    assert_eq!(field, "secret.keys[0].file");
                    assert!(!reason.contains("tiny"), "the key is never quoted: {reason}");
                    first
                }
                other => panic!("{other:?}"),
            })
            .collect()
    };
    files.write_in_place("/k", b"tiny");
    assert_eq!(failed(keys.poll(&files, secs(1))), vec![true]);
    assert!(holds(&keys, "k1", OLD), "the last good key stays");
    assert!(keys.poll(&files, secs(2)).is_empty(), "the same bad file: nothing new");
    files.write_in_place("/k", b"");
    assert_eq!(failed(keys.poll(&files, secs(3))), vec![false], "another bad version: counted, not logged again");
    // Gone: reported once, however many checks see it gone.
    files.remove("/k");
    assert_eq!(failed(keys.poll(&files, secs(4))), vec![false]);
    assert!(keys.poll(&files, secs(5)).is_empty());
    assert!(keys.poll(&files, secs(6)).is_empty());
    assert!(holds(&keys, "k1", OLD));
    // Back with the keys in use: recovered, nothing to swap.
    files.create("/k", OLD.as_bytes());
    assert_eq!(keys.poll(&files, secs(7)), vec![KeyFileEvent::Recovered { field: "secret.keys[0].file".into(), path: "/k".into() }]);
    files.write_in_place("/k", b"bad");
    assert_eq!(failed(keys.poll(&files, secs(8))), vec![true], "a new failure after recovering is logged again");
    files.write_in_place("/k", NEW.as_bytes());
    assert_eq!(
        keys.poll(&files, secs(9)),
        vec![KeyFileEvent::Reloaded { field: "secret.keys[0].file".into(), path: "/k".into(), recovered: true }]
    );
    assert!(holds(&keys, "k1", NEW));
}

#[test]
fn an_unreadable_file_keeps_the_last_good_keys() {
    let files = FakeFiles::default();
    files.create("/k", OLD.as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/k"}]}), &files);
    *files.unreadable.borrow_mut() = true;
    let events = keys.poll(&files, secs(1));
    assert!(
        matches!(&events[..], [KeyFileEvent::Failed { reason, first: true, .. }] if reason.contains("permission denied")),
        "{events:?}"
    );
    assert!(holds(&keys, "k1", OLD));
    *files.unreadable.borrow_mut() = false;
    assert!(matches!(&keys.poll(&files, secs(2))[..], [KeyFileEvent::Recovered { .. }]));
}

#[test]
fn a_file_that_is_too_large_is_not_taken() {
    let files = FakeFiles::default();
    files.create("/k", OLD.as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/k"}]}), &files);
    files.write_in_place("/k", &vec![b'a'; MAX_KEY_FILE_BYTES + 1]);
    assert!(matches!(&keys.poll(&files, secs(1))[..], [KeyFileEvent::Failed { first: true, .. }]));
    assert!(holds(&keys, "k1", OLD));
}

#[test]
fn a_key_set_file_is_a_jwks_of_hmac_secrets() {
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let files = FakeFiles::default();
    let set = |keys: &[(&str, &str)]| {
        json!({"keys": keys.iter().map(|(kid, k)| json!({"kty": "oct", "kid": kid, "k": b64(k), "alg": "HS256"})).collect::<Vec<_>>()})
            .to_string()
    };
    files.create("/set", set(&[("k1", OLD)]).as_bytes());
    let secret = json!({"keys": [{"file": "/set"}]});
    let keys = match parse_with_files(
        json!({"role": "middleware", "trust_ips": ["0.0.0.0/0"], "secret": secret, "algorithm": "hmac-sha256"}).to_string().as_bytes(),
        &|_| None,
        Some(&files),
    ) {
        Ok(Config::Middleware(m)) => m.verify.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(holds(&keys, "k1", OLD));
    // Rotation: both, then the new one alone.
    files.write_in_place("/set", set(&[("k2", NEW), ("k1", OLD)]).as_bytes());
    keys.poll(&files, secs(1));
    assert!(holds(&keys, "k1", OLD) && holds(&keys, "k2", NEW));
    assert_eq!(keys.ring().signing_key().map(|k| k.id.as_str()), Some("k2"), "the first key of the set signs");
    files.write_in_place("/set", set(&[("k2", NEW)]).as_bytes());
    keys.poll(&files, secs(2));
    assert!(holds(&keys, "k2", NEW) && keys.ring().key("k1").is_none(), "a key removed from the set stops verifying");

    for (n, (bad, says)) in [
        (json!({"keys": []}).to_string(), "no key"),
        (json!({"keys": [{"kty": "oct", "k": b64(OLD)}]}).to_string(), "no \"kid\""),
        (json!({"keys": [{"kty": "oct", "kid": "k1", "k": b64(OLD), "alg": "HS512"}]}).to_string(), "another algorithm"),
        (json!({"keys": [{"kty": "EC", "kid": "k1"}]}).to_string(), "not an HMAC secret"),
        (json!({"keys": [{"kty": "oct", "kid": "k1", "k": "%%"}]}).to_string(), "not base64url"),
        ("[1, 2".to_string(), "not a key set"),
    ]
    .into_iter()
    .enumerate()
    {
        files.write_in_place("/set", bad.as_bytes());
        let events = keys.poll(&files, secs(3 + n as u64));
        assert!(matches!(&events[..], [KeyFileEvent::Failed { reason, .. }] if reason.contains(says)), "{bad}: {events:?}");
        assert!(holds(&keys, "k2", NEW));
    }
}

#[test]
fn keys_that_do_not_make_a_ring_together_keep_the_last_good_ring() {
    let files = FakeFiles::default();
    files.create("/k", OLD.as_bytes());
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    files.create("/set", json!({"keys": [{"kty": "oct", "kid": "k2", "k": b64(NEW)}]}).to_string().as_bytes());
    let keys = middleware(json!({"keys": [{"id": "k1", "file": "/k"}, {"file": "/set"}]}), &files);
    // The set now also names k1, which the other file holds: an id twice.
    files.write_in_place("/set", json!({"keys": [{"kty": "oct", "kid": "k1", "k": b64(NEW)}]}).to_string().as_bytes());
    let events = keys.poll(&files, secs(1));
    assert!(
        matches!(&events[..], [KeyFileEvent::Failed { field, reason, first: true, .. }] if field == "secret.keys[1].file" && reason.contains("twice")),
        "{events:?}"
    );
    assert!(keys.poll(&files, secs(2)).is_empty(), "reported once");
    assert!(holds(&keys, "k1", OLD) && holds(&keys, "k2", NEW));
    // The set names another id: taken, a recovery.
    files.write_in_place("/set", json!({"keys": [{"kty": "oct", "kid": "k3", "k": b64(NEW)}]}).to_string().as_bytes());
    assert_eq!(
        keys.poll(&files, secs(3)),
        vec![KeyFileEvent::Reloaded { field: "secret.keys[1].file".into(), path: "/set".into(), recovered: true }]
    );
    assert!(holds(&keys, "k1", OLD) && holds(&keys, "k3", NEW) && keys.ring().key("k2").is_none());
}

#[test]
fn public_keys_come_from_a_file_as_pem_or_jwks_and_a_private_one_is_refused() {
    let private = crate::asymmetric::parse_key(
        Algorithm::Ed25519,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let public_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
    let x = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";
    let files = FakeFiles::default();
    files.create("/pub.pem", public_pem.as_bytes());
    files.create("/set.json", json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "jwk1", "x": x}]}).to_string().as_bytes());
    let body = |secret: serde_json::Value| json!({"role": "middleware", "trust_ips": ["0.0.0.0/0"], "signature_format": "rfc9421", "algorithm": "ed25519", "secret": secret});
    let keys = match parse_with_files(
        body(json!({"keys": [{"id": "pem1", "file": "/pub.pem"}, {"file": "/set.json"}]})).to_string().as_bytes(),
        &|_| None,
        Some(&files),
    ) {
        Ok(Config::Middleware(m)) => m.verify.unwrap(),
        other => panic!("{other:?}"),
    };
    assert!(keys.ring().key("pem1").is_some() && keys.ring().key("jwk1").is_some());
    let AsymmetricKeyPrivate(signer) = AsymmetricKeyPrivate::of(private);
    let signature = signer.sign(b"message").unwrap();
    assert!(keys.ring().key("jwk1").is_some_and(|k| k.verifies(b"message", &signature)));

    // A private key where the receiver reads public keys: refused at start...
    files.create(
        "/private.pem",
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
    );
    let e = parse_with_files(body(json!({"keys": [{"id": "p", "file": "/private.pem"}]})).to_string().as_bytes(), &|_| None, Some(&files))
        .err()
        .unwrap();
    assert_eq!(e.field, "secret.keys[0].file");
    assert!(e.message.contains("is a private key"), "{e}");
    // ...and at a reload, where the public key stays.
    files.write_in_place(
        "/pub.pem",
        b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
    );
    let events = keys.poll(&files, secs(1));
    assert!(matches!(&events[..], [KeyFileEvent::Failed { reason, .. }] if reason.contains("is a private key")), "{events:?}");
    assert!(keys.ring().key("pem1").is_some_and(|k| k.verifies(b"message", &signature)));
}

/// The private half of a parsed key, to sign test messages with.
struct AsymmetricKeyPrivate(crate::asymmetric::PrivateKey);

impl AsymmetricKeyPrivate {
    fn of(key: crate::asymmetric::AsymmetricKey) -> AsymmetricKeyPrivate {
        match key {
            crate::asymmetric::AsymmetricKey::Private(p) => AsymmetricKeyPrivate(p),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn the_app_role_signs_with_the_first_key_of_its_file_and_follows_it() {
    let files = FakeFiles::default();
    files.create("/k", OLD.as_bytes());
    let config = config(json!({"role": "app", "href": "http://backend", "secret": {"keys": [{"id": "k1", "file": "/k"}]}}), &files);
    let Ok(Config::App(app)) = config else { panic!("{config:?}") };
    let keys = app.signing.unwrap();
    assert!(holds(&keys, "k1", OLD));
    files.write_in_place("/k", NEW.as_bytes());
    keys.poll(&files, secs(1));
    assert!(holds(&keys, "k1", NEW));
}
