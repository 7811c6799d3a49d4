"""Signs requests with PyPI's http-message-signatures, as a sender other than
our `app` role would, for the tests of the `middleware` role.

Reads a JSON list on stdin, each entry
    {"key_id", "key", "method", "url", "headers": [[name, value], ...],
     "covered": [component, ...], "created": seconds, "nonce", "label"}
and writes a JSON list of {"signature-input": ..., "signature": ...}.
"""
import datetime
import json
import sys
from types import SimpleNamespace

from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms


def sign(entry):
    keys = MappingKeyResolver(public_keys={}, private_keys={entry["key_id"]: entry["key"].encode()})
    signer = HTTPMessageSigner(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=keys)
    request = SimpleNamespace(method=entry["method"], url=entry["url"], headers=dict(entry["headers"]))
    signer.sign(
        request,
        key_id=entry["key_id"],
        created=datetime.datetime.fromtimestamp(entry["created"], tz=datetime.timezone.utc),
        nonce=entry["nonce"],
        label=entry["label"],
        covered_component_ids=entry["covered"],
    )
    return {"signature-input": request.headers["Signature-Input"], "signature": request.headers["Signature"]}


json.dump([sign(entry) for entry in json.load(sys.stdin)], sys.stdout)
