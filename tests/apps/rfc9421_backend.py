"""A backend behind the `app` role (signature_format "rfc9421") that checks each
request's signature with PyPI's http-message-signatures, as a user's backend
would, and answers with what the library verified (or why it refused).

    rfc9421_backend.py PORT KEY [ALGORITHM]

KEY is the shared secret (hmac-sha256, the default), or the PEM of the signer's
public key (ed25519, ecdsa-p256-sha256, ecdsa-p384-sha384, rsa-pss-sha512,
rsa-v1_5-sha256).
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from http_message_signatures import InvalidSignature

KEY = sys.argv[2].encode()
ALGORITHM = sys.argv[3] if len(sys.argv) > 3 else "hmac-sha256"
PUBLIC_KEY = KEY


def verify(method, url, headers):
    if ALGORITHM == "ed25519":
        return verify_ed25519(method, url, headers)
    if ALGORITHM == "ecdsa-p256-sha256":
        return verify_ecdsa_p256(method, url, headers)
    if ALGORITHM in OTHER_ALGORITHMS:
        return verify_with(OTHER_ALGORITHMS[ALGORITHM], method, url, headers)
    # README snippet (keep the two in step: tests/rfc9421_interop.rs checks it)
    from types import SimpleNamespace
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms
    keys = MappingKeyResolver(public_keys={"k1": KEY}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=keys)
    result = verifier.verify(SimpleNamespace(method=method, url=url, headers=headers))[0]
    # end of README snippet
    return result


def verify_ed25519(method, url, headers):
    # public-key snippet (keep the two in step: tests/rfc9421_interop.rs checks it)
    from types import SimpleNamespace
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms
    keys = MappingKeyResolver(public_keys={"k1": PUBLIC_KEY}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ED25519, key_resolver=keys)
    result = verifier.verify(SimpleNamespace(method=method, url=url, headers=headers))[0]
    # end of public-key snippet
    return result


def verify_ecdsa_p256(method, url, headers):
    # The same with ECDSA P-256 (a public key of that curve).
    from types import SimpleNamespace
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver, algorithms
    keys = MappingKeyResolver(public_keys={"k1": PUBLIC_KEY}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.ECDSA_P256_SHA256, key_resolver=keys)
    return verifier.verify(SimpleNamespace(method=method, url=url, headers=headers))[0]


def verify_with(algorithm, method, url, headers):
    # The same with any other algorithm of the library (a public key of its kind).
    from types import SimpleNamespace
    from http_message_signatures import HTTPMessageVerifier, MappingKeyResolver
    keys = MappingKeyResolver(public_keys={"k1": PUBLIC_KEY}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=algorithm, key_resolver=keys)
    return verifier.verify(SimpleNamespace(method=method, url=url, headers=headers))[0]


def _other_algorithms():
    from http_message_signatures import algorithms
    return {
        "ecdsa-p384-sha384": algorithms.ECDSA_P384_SHA384,
        "rsa-pss-sha512": algorithms.RSA_PSS_SHA512,
        "rsa-v1_5-sha256": algorithms.RSA_V1_5_SHA256,
    }


OTHER_ALGORITHMS = _other_algorithms()


class Handler(BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        url = f"http://{self.headers['Host']}{self.path}"
        try:
            result = verify(self.command, url, self.headers)
            seen = {
                "verified": True,
                "label": result.label,
                "covered": list(result.covered_components.items()),
                "parameters": result.parameters,
            }
        except InvalidSignature as e:
            seen = {"verified": False, "error": str(e)}
        seen["body"] = body.decode("latin-1")
        out = json.dumps(seen).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
