//! Wycheproof's ECDSA P-256 SHA-256 vectors in P1363 form (tests/data/wycheproof),
//! through every backend built (`super::tests::verdict` checks they agree), each
//! verdict the vector's. Keys that `p256` refuses to parse are refused by ring too,
//! and their vectors must all be "invalid". The file has no "acceptable" vector; one
//! would be counted as either verdict (the backends still have to agree).

use super::tests::verdict;
use super::P256PublicKey;

const VECTORS: &str = include_str!("../../../tests/data/wycheproof/ecdsa_secp256r1_sha256_p1363_test.json");

fn hex_field(value: &serde_json::Value, name: &str) -> Vec<u8> {
    hex::decode(value[name].as_str().unwrap()).unwrap()
}

#[test]
fn every_wycheproof_vector_gets_its_verdict() {
    let document: serde_json::Value = serde_json::from_str(VECTORS).unwrap();
    assert_eq!(document["schema"], "ecdsa_p1363_verify_schema_v1.json");
    let (mut run, mut valid, mut refused_keys) = (0, 0, 0);
    for group in document["testGroups"].as_array().unwrap() {
        assert_eq!(group["sha"], "SHA-256");
        assert_eq!(group["publicKey"]["curve"], "secp256r1");
        let encoded = hex_field(&group["publicKey"], "uncompressed");
        let tests = group["tests"].as_array().unwrap();
        let Ok(parsed) = p256::ecdsa::VerifyingKey::from_sec1_bytes(&encoded) else {
            refused_keys += 1;
            #[cfg(feature = "ring-verify")]
            for test in tests {
                let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &encoded);
                assert!(key.verify(&hex_field(test, "msg"), &hex_field(test, "sig")).is_err());
            }
            for test in tests {
                assert_eq!(test["result"], "invalid", "tcId {} has a key p256 refuses", test["tcId"]);
                run += 1;
            }
            continue;
        };
        let key = P256PublicKey::new(parsed);
        for test in tests {
            let id = &test["tcId"];
            let accepted = verdict(&key, &hex_field(test, "msg"), &hex_field(test, "sig"));
            match test["result"].as_str().unwrap() {
                "valid" => {
                    assert!(accepted, "tcId {id} ({}) is valid", test["comment"]);
                    valid += 1;
                }
                "invalid" => assert!(!accepted, "tcId {id} ({}) is invalid", test["comment"]),
                "acceptable" => {}
                other => panic!("tcId {id}: result {other}"),
            }
            run += 1;
        }
    }
    assert_eq!(run, document["numberOfTests"].as_u64().unwrap());
    assert_eq!((run, valid), (262, 173));
    let _ = refused_keys;
}
