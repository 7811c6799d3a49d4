"""Makes key pairs with PyPI's cryptography (OpenSSL), for the tests of the
public-key algorithms: each key in every form the filter reads.

    rfc9421_keys.py ALGORITHM COUNT [BITS]
        (ALGORITHM: ed25519, ecdsa-p256-sha256, ecdsa-p384-sha384, rsa-pss-sha512 or
         rsa-v1_5-sha256; BITS: the RSA modulus, 2048 by default)

writes a JSON list of COUNT key pairs, each
    {"private_pem": PKCS#8, "private_sec1_pem": SEC1 (ECDSA only), "public_pem": SPKI,
     "private_jwk": JSON text, "public_jwk": JSON text,
     "private_pkcs1_pem", "public_pkcs1_pem": PKCS#1 (RSA only)}.
"""
import base64
import json
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem(key, encoding_format):
    return key.private_bytes(serialization.Encoding.PEM, encoding_format, serialization.NoEncryption()).decode()


def b64url_int(value):
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


CURVES = {"ecdsa-p256-sha256": (ec.SECP256R1, "P-256", 32), "ecdsa-p384-sha384": (ec.SECP384R1, "P-384", 48)}


def key_pair(algorithm, bits=2048):
    pkcs1 = {}
    if algorithm == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        raw = serialization.Encoding.Raw
        public_jwk = {"kty": "OKP", "crv": "Ed25519",
                      "x": b64url(key.public_key().public_bytes(raw, serialization.PublicFormat.Raw))}
        d = key.private_bytes(raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        sec1 = None
    elif algorithm in CURVES:
        curve, name, size = CURVES[algorithm]
        key = ec.generate_private_key(curve())
        numbers = key.private_numbers()
        public_jwk = {"kty": "EC", "crv": name,
                      "x": b64url(numbers.public_numbers.x.to_bytes(size, "big")),
                      "y": b64url(numbers.public_numbers.y.to_bytes(size, "big"))}
        d = numbers.private_value.to_bytes(size, "big")
        sec1 = pem(key, serialization.PrivateFormat.TraditionalOpenSSL)
    elif algorithm in ("rsa-pss-sha512", "rsa-v1_5-sha256"):
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        n = key.private_numbers()
        public_jwk = {"kty": "RSA", "n": b64url_int(n.public_numbers.n), "e": b64url_int(n.public_numbers.e)}
        private_jwk = dict(public_jwk, d=b64url_int(n.d), p=b64url_int(n.p), q=b64url_int(n.q),
                           dp=b64url_int(n.dmp1), dq=b64url_int(n.dmq1), qi=b64url_int(n.iqmp))
        sec1 = None
        pkcs1 = {
            "private_pkcs1_pem": pem(key, serialization.PrivateFormat.TraditionalOpenSSL),
            "public_pkcs1_pem": key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode(),
        }
    else:
        raise SystemExit(f"unknown algorithm {algorithm}")
    if public_jwk["kty"] != "RSA":
        private_jwk = dict(public_jwk, d=b64url(d))
    return {
        **pkcs1,
        "private_pem": pem(key, serialization.PrivateFormat.PKCS8),
        "private_sec1_pem": sec1,
        "public_pem": key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "private_jwk": json.dumps(private_jwk),
        "public_jwk": json.dumps(public_jwk),
    }


bits = int(sys.argv[3]) if len(sys.argv) > 3 else 2048
json.dump([key_pair(sys.argv[1], bits) for _ in range(int(sys.argv[2]))], sys.stdout)
