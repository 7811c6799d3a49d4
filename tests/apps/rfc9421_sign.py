"""Signs requests with PyPI's http-message-signatures, as a sender other than
our `app` role would, for the tests of the `middleware` role.

Reads a JSON list on stdin, each entry
    {"key_id", "key", "method", "url", "headers": [[name, value], ...],
     "covered": [component, ...], "created": seconds, "nonce", "label"}
and optionally
    "algorithm": "hmac-sha256" (the default; "key" is the secret), "ed25519",
                 "ecdsa-p256-sha256", "ecdsa-p384-sha384", "rsa-pss-sha512" or
                 "rsa-v1_5-sha256" ("key" is the private key's PEM);
    "include_alg": false, to leave the alg parameter out;
    "claimed_alg": an alg parameter other than the algorithm that signs (a valid
                   signature under a false name);
and writes a JSON list of {"signature-input": ..., "signature": ...}.
"""
import datetime
import json
import sys
from types import SimpleNamespace

from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms

ALGORITHMS = {
    "hmac-sha256": algorithms.HMAC_SHA256,
    "ed25519": algorithms.ED25519,
    "ecdsa-p256-sha256": algorithms.ECDSA_P256_SHA256,
    "ecdsa-p384-sha384": algorithms.ECDSA_P384_SHA384,
    "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
    "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
}


def sign(entry):
    algorithm = ALGORITHMS[entry.get("algorithm", "hmac-sha256")]
    if "claimed_alg" in entry:
        algorithm = type("Mislabelled", (algorithm,), {"algorithm_id": entry["claimed_alg"]})
    keys = MappingKeyResolver(public_keys={}, private_keys={entry["key_id"]: entry["key"].encode()})
    signer = HTTPMessageSigner(signature_algorithm=algorithm, key_resolver=keys)
    request = SimpleNamespace(method=entry["method"], url=entry["url"], headers=dict(entry["headers"]))
    signer.sign(
        request,
        key_id=entry["key_id"],
        created=datetime.datetime.fromtimestamp(entry["created"], tz=datetime.timezone.utc),
        nonce=entry["nonce"],
        label=entry["label"],
        covered_component_ids=entry["covered"],
        include_alg=entry.get("include_alg", True),
    )
    return {"signature-input": request.headers["Signature-Input"], "signature": request.headers["Signature"]}


json.dump([sign(entry) for entry in json.load(sys.stdin)], sys.stdout)
