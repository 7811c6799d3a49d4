"""Makes key pairs with PyPI's cryptography (OpenSSL), for the tests of the
public-key algorithms: each key in every form the filter reads.

    rfc9421_keys.py ALGORITHM COUNT     (ALGORITHM: ed25519 or ecdsa-p256-sha256)

writes a JSON list of COUNT key pairs, each
    {"private_pem": PKCS#8, "private_sec1_pem": SEC1 (ECDSA only), "public_pem": SPKI,
     "private_jwk": JSON text, "public_jwk": JSON text}.
"""
import base64
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem(key, encoding_format):
    return key.private_bytes(serialization.Encoding.PEM, encoding_format, serialization.NoEncryption()).decode()


def key_pair(algorithm):
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        public_jwk = {"kty": "OKP", "crv": "Ed25519",
                      "x": b64url(key.public_key().public_bytes(raw, serialization.PublicFormat.Raw))}
        d = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        sec1 = None
    elif algorithm == "ecdsa-p256-sha256":
        key = ec.generate_private_key(ec.SECP256R1())
        numbers = key.private_numbers()
        public_jwk = {"kty": "EC", "crv": "P-256",
                      "x": b64url(numbers.public_numbers.x.to_bytes(32, "big")),
                      "y": b64url(numbers.public_numbers.y.to_bytes(32, "big"))}
        d = numbers.private_value.to_bytes(32, "big")
        sec1 = pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    else:
        raise SystemExit(f"unknown algorithm {algorithm}")
    return {
        "private_pem": pem(key, serialization.PrivateFormat.PKCS8),
        "private_sec1_pem": sec1,
        "public_pem": key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "private_jwk": json.dumps(dict(public_jwk, d=b64url(d))),
        "public_jwk": json.dumps(public_jwk),
    }


json.dump([key_pair(sys.argv[1]) for _ in range(int(sys.argv[2]))], sys.stdout)
