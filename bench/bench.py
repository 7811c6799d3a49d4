#!/usr/bin/env python3
"""What the WSGIProxy filter costs, side by side with the alternatives.

Every figure is measured in this run, against the same Envoy binary and the same
native backend. Envoy runs one worker pinned to core 0; the load generator, the
backend and the sidecar run on core 1. Variants are interleaved round by round
(A/B/A/B...), each after a discarded warm-up. Run through scripts/bench.sh.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ENVOY = ROOT / ".venv" / "envoy"
ECHO = ROOT / "target/release/wsgiproxy-echo"
SIDECAR = ROOT / "target/release/wsgiproxy-sidecar"
WASM = ROOT / "target/wasm32-wasip1/release/wsgiproxy_filter.wasm"
EMPTY_WASM = ROOT / "target/wasm32-wasip1/release/wsgiproxy_bench_empty_filter.wasm"
# The native dynamic module (libwsgiproxy.so), built with `--profile native`.
NATIVE_DIR = ROOT / "target/native"
ENVOY_CORE, LOAD_CORE = "0", "1"
TICKS = os.sysconf("SC_CLK_TCK")
KEY = "benchmark-shared-key-0123456789"
PATH = "/blog/article/1?x=1"
CLIENT_HEADERS = {"Host": "www.example.com", "X-Auth-User": "bob"}

APP_CONFIG = {
    "role": "app",
    "href": "http://backend.internal:8080/myapp",
    "script_name": "/blog",
    "string_keys": [{"key": "REMOTE_USER", "from_header": "x-auth-user"}],
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


# ------------------------------------------------------------------ Envoy configs

def wasm_filter(name, path, config, env=None):
    """`env`: environment variables for the VM beside WSGIPROXY_KEY (the public-key
    variants' keys: see signature_env)."""
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(config or {}),
                },
                "vm_config": {
                    "vm_id": "bench",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(path)}},
                    "environment_variables": {"key_values": dict({"WSGIPROXY_KEY": KEY}, **(env or {}))},
                },
            },
        },
    }


def native_filter(name, config):
    """The same role in the native dynamic module, with the same JSON (its secrets come
    from Envoy's environment: see start_envoy)."""
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config": {"name": "wsgiproxy", "do_not_close": True},
            "filter_name": name,
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(config)},
        },
    }


LUA_APP = r"""
local protocol = {"x-forwarded-for", "x-forwarded-server", "x-forwarded-scheme", "x-script-name",
                  "x-forwarded-script-name", "x-traversal-path", "x-traversal-query-string"}
function envoy_on_request(handle)
  local h = handle:headers()
  local path = h:get(":path")
  if path:sub(1, 5) ~= "/blog" then
    handle:respond({[":status"] = "404"}, "outside the mount point")
    return
  end
  for _, name in ipairs(protocol) do h:remove(name) end
  h:replace("x-forwarded-server", h:get(":authority"))
  h:replace("x-forwarded-scheme", "http")
  h:replace("x-forwarded-for", handle:streamInfo():downstreamDirectRemoteAddress():match("^(.*):%d+$"))
  h:replace("x-script-name", "/blog")
  h:replace("x-traversal-path", "/myapp")
  h:replace("x-wsgiproxy-version", "0.1")
  local user = h:get("x-auth-user")
  if user then h:replace("x-wsgiproxy-str-0", "REMOTE_USER " .. user) end
  h:replace(":path", "/myapp" .. path:sub(6))
  h:replace(":authority", "backend.internal:8080")
end
"""

NATIVE_HEADERS = [
    ("x-forwarded-server", "%REQ(:AUTHORITY)%"),
    ("x-forwarded-scheme", "http"),
    ("x-forwarded-for", "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("x-script-name", "/blog"),
    ("x-traversal-path", "/myapp"),
    ("x-wsgiproxy-version", "0.1"),
    ("x-wsgiproxy-str-0", "REMOTE_USER %REQ(X-AUTH-USER)%"),
]


def peer_filter():
    """The filter's `peer` role as a network filter: it records the TCP peer that the
    app and middleware roles use, as the shipped configs do."""
    return {
        "name": "wsgiproxy-peer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm",
            "config": {
                "name": "wsgiproxy-peer",
                "root_id": "wsgiproxy-peer",
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps({"role": "peer"})},
                "vm_config": {"vm_id": "bench-peer", "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(WASM)}}},
            },
        },
    }


def native_peer_filter():
    """The `peer` role in the native module, as a network filter (what the shipped
    native configs run)."""
    return {
        "name": "wsgiproxy-peer",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.dynamic_modules.v3.DynamicModuleNetworkFilter",
            "dynamic_module_config": {"name": "wsgiproxy", "do_not_close": True},
            "filter_name": "wsgiproxy-peer",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps({"role": "peer"})},
        },
    }


def plugin_config(f):
    """A Wasm filter's or the native module's configuration JSON, parsed ({} for others)."""
    typed = f.get("typed_config", {})
    value = typed.get("config", {}).get("configuration", {}).get("value") or typed.get("filter_config", {}).get("value")
    return json.loads(value) if value else {}


def peer_filters(filters):
    """The `peer` network filter that an app or middleware role reading the peer record
    needs (all but `client_address: envoy` without `trust_ips`), in the loader the
    role runs in; none otherwise."""
    for f in filters:
        config = plugin_config(f)
        if config.get("role") in ("app", "middleware") and (config.get("client_address") != "envoy" or "trust_ips" in config):
            native = "filter_config" in f.get("typed_config", {})
            return [native_peer_filter() if native else peer_filter()]
    return []


def envoy_config(port, admin, upstream, filters=(), clusters=None):
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "use_remote_address": True,
        "skip_xff_append": True,
        "generate_request_id": False,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": list(filters) + [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router", "dynamic_stats": False},
        }],
    }
    cluster_list = clusters or [static_cluster("backend", upstream)]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_config": {"stats_matcher": {"reject_all": False}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": peer_filters(filters)
                                   + [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
            }],
            "clusters": cluster_list,
        },
    }


def static_cluster(name, port):
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
    }


class Proc:
    def __init__(self, args, cpu, log, env=None):
        self.log = open(log, "w")
        self.popen = subprocess.Popen(["taskset", "-c", cpu] + [str(a) for a in args], stdout=self.log,
                                      stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    @property
    def pid(self):
        return self.popen.pid

    def stop(self):
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.log.close()


def start_envoy(workdir, config, port, concurrency=1, cpu=ENVOY_CORE, wrapper=(), timeout=30.0):
    """Envoy on `config`, once it listens on `port`; `wrapper` is a command to run it
    under (callgrind), which slows its start."""
    path = Path(workdir) / f"envoy-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    # The native module finds libwsgiproxy.so here and reads its key from Envoy's environment.
    env = dict(os.environ, ENVOY_DYNAMIC_MODULES_SEARCH_PATH=str(NATIVE_DIR), WSGIPROXY_KEY=KEY, **signature_env())
    proc = Proc([*wrapper, ENVOY, "-c", path, "--concurrency", concurrency, "--disable-hot-restart", "--log-level", "error"],
                cpu, Path(workdir) / f"envoy-{port}.log", env=env)
    try:
        wait_port(port, timeout)
    except RuntimeError:
        proc.stop()
        raise RuntimeError((Path(workdir) / f"envoy-{port}.log").read_text()[-2000:])
    return proc


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ------------------------------------------------------------------ load

def wrk(port, seconds, script=None, script_arg=None, path=PATH, connections=32):
    args = ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in CLIENT_HEADERS.items():
        args += ["-H", f"{k}: {v}"]
    if script:
        args += ["-s", str(script)]
    args.append(f"http://127.0.0.1:{port}{path}")
    if script_arg:
        args += ["--", str(script_arg)]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def hey_fixed_rate(port, rate, seconds):
    """p50/p99 at a fixed rate well below the knee (hey: 10 workers, rate/10 each)."""
    args = ["taskset", "-c", LOAD_CORE, "hey", "-z", f"{seconds}s", "-c", "10", "-q", str(rate // 10)]
    for k, v in CLIENT_HEADERS.items():
        args += ["-H", f"{k}: {v}"]
    args.append(f"http://127.0.0.1:{port}{PATH}")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    p = {int(m.group(1)): float(m.group(2)) * 1000 for m in re.finditer(r"(\d+)%+ in ([\d.]+) secs", out)}
    answered = sum(int(m.group(1)) for m in re.finditer(r"\[\d+\]\s+(\d+) responses", out))
    return p.get(50, float("nan")), p.get(99, float("nan")), answered


def paced_replay(port, rate, seconds, requests_file):
    """The same measure for pre-signed requests (each sent once): 10 keep-alive
    connections, each pacing its share of the rate; returns p50, p99, answered, and
    how many of those were not 2xx."""
    import asyncio

    raw = raw_requests(requests_file)
    latencies = []
    refused = []

    async def connection(slot, per_conn):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        interval = 1.0 / per_conn
        start = time.perf_counter()
        i = 0
        while True:
            due = start + i * interval
            now = time.perf_counter()
            if now - start >= seconds:
                break
            if due > now:
                await asyncio.sleep(due - now)
            began = time.perf_counter()
            writer.write(raw[(slot + i * 10) % len(raw)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - began) * 1000)
            if not head.startswith(b"HTTP/1.1 2"):
                refused.append(head.split(b"\r\n", 1)[0])
            i += 1
        writer.close()

    async def main():
        await asyncio.gather(*(connection(slot, rate / 10) for slot in range(10)))

    asyncio.run(main())
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]
    return pick(0.50), pick(0.99), len(latencies), len(refused)


# ------------------------------------------------------------------ signed requests for the middleware

WRK_REPLAY = """
local requests = {}
local i = 0
function init(args)
  for line in io.lines(args[1]) do
    requests[#requests + 1] = line:gsub("\\t", "\\r\\n") .. "\\r\\n\\r\\n"
  end
end
function request()
  i = i + 1
  return requests[(i - 1) % #requests + 1]
end
"""


def raw_requests(path):
    """The requests signed_requests wrote, as bytes to send (one per line, headers tab-separated)."""
    return [line.rstrip("\n").replace("\t", "\r\n").encode() + b"\r\n\r\n" for line in Path(path).open()]


# The protocol headers the app role sends for the bench's request, sorted by name.
SIGNED_PROTOCOL = [("x-forwarded-for", "203.0.113.7"), ("x-forwarded-scheme", "http"),
                   ("x-forwarded-server", "www.example.com"), ("x-script-name", "/blog"),
                   ("x-traversal-path", "/myapp"), ("x-wsgiproxy-str-0", "REMOTE_USER bob"),
                   ("x-wsgiproxy-version", "0.1")]


def signed_requests(path, count, authority, date=None, signature=None):
    """Requests the app role would send, each with its own nonce (no replay), dated
    now or `date` (an HTTP date). `signature`: None for the v1 format (HMAC-SHA256),
    or an algorithm of RFC 9421 (see rfc9421_requests)."""
    if signature:
        return rfc9421_requests(path, count, authority, signature, date)
    date = date or formatdate(usegmt=True)
    lines = []
    protocol = SIGNED_PROTOCOL
    key = KEY.encode()
    target = "/myapp/article/1?x=1"
    base = hmac.new(key, digestmod=hashlib.sha256)
    tail = "".join(f"{n}:{v}\n" for n, v in sorted(protocol))
    for _ in range(count):
        nonce = secrets.token_hex(16)
        canonical = f"wsgiproxy-signature-v1\nhmac-sha256\nk1\n{nonce}\n{date}\nGET\n{authority}\n{target}\n{tail}"
        mac = base.copy()
        mac.update(canonical.encode())
        headers = [f"GET {target} HTTP/1.1", f"Host: {authority}", f"Date: {date}"]
        headers += [f"{n}: {v}" for n, v in protocol]
        headers.append(f"x-wsgiproxy-signature: k1 {nonce} {mac.hexdigest()}")
        lines.append("\t".join(headers))
    Path(path).write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------ RFC 9421 signatures (issue #19)

# The algorithms compared, as the configuration names them, with their label in
# variant names. Every such variant's name holds "RFC 9421" (see SIGNATURE_GROUP).
SIGNATURE_ALGORITHMS = [("hmac-sha256", "HMAC-SHA256"), ("ed25519", "Ed25519"), ("ecdsa-p256-sha256", "ECDSA P-256"),
                        ("ecdsa-p384-sha384", "ECDSA P-384"), ("rsa-pss-sha512", "RSA-PSS-SHA512"),
                        ("rsa-v1_5-sha256", "RSA-v1.5-SHA256")]
# The Wasm filter does not sign with RSA (docs/signatures.md): no Wasm app-role variant of these.
WASM_CANNOT_SIGN = {"rsa-pss-sha512", "rsa-v1_5-sha256"}
_signature_keys = {}


def signature_keys():
    """A key pair per public-key algorithm, made for this run with PyPI's cryptography
    (OpenSSL): {algorithm: (private key object, private PKCS#8 PEM, public SPKI PEM)}.
    Test keys, not secrets; the same for every Envoy of the run."""
    if not _signature_keys:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

        for algorithm, key in (("ed25519", ed25519.Ed25519PrivateKey.generate()),
                               ("ecdsa-p256-sha256", ec.generate_private_key(ec.SECP256R1())),
                               ("ecdsa-p384-sha384", ec.generate_private_key(ec.SECP384R1())),
                               ("rsa-pss-sha512", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                               ("rsa-v1_5-sha256", rsa.generate_private_key(public_exponent=65537, key_size=2048))):
            private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()).decode()
            public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            _signature_keys[algorithm] = (key, private, public)
    return _signature_keys


def signature_key_env(algorithm, half):
    """The environment variable holding `algorithm`'s `half` ("private" or "public")."""
    return f"WSGIPROXY_BENCH_{re.sub('[^A-Z0-9]', '_', algorithm.upper())}_{half.upper()}"


def signature_env():
    """Every public-key variant's key, by environment variable (PEM text)."""
    return {signature_key_env(a, half): pem for a, (_, private, public) in signature_keys().items()
            for half, pem in (("private", private), ("public", public))}


def signature_secret(algorithm, half):
    """A role's `secret`: the HMAC key as the v1 variants have it, or the key pair's
    private half (the app role) or public half (the middleware)."""
    if algorithm == "hmac-sha256":
        return {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY"}]}
    return {"keys": [{"id": "k1", "env": signature_key_env(algorithm, half)}]}


def rfc9421_sign(algorithm, base):
    """The signature of `base` (bytes) as RFC 9421 puts it in `Signature`: HMAC-SHA256,
    Ed25519's R||S, ECDSA's r||s (not DER; 32 or 48 bytes each, big-endian), or RSA's
    (PSS with SHA-512 and a 64-byte salt, or PKCS#1 v1.5 with SHA-256)."""
    if algorithm == "hmac-sha256":
        return hmac.new(KEY.encode(), base, hashlib.sha256).digest()
    key = signature_keys()[algorithm][0]
    if algorithm == "ed25519":
        return key.sign(base)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, utils

    if algorithm == "rsa-pss-sha512":
        return key.sign(base, padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64), hashes.SHA512())
    if algorithm == "rsa-v1_5-sha256":
        return key.sign(base, padding.PKCS1v15(), hashes.SHA256())
    size, digest = (48, hashes.SHA384()) if algorithm == "ecdsa-p384-sha384" else (32, hashes.SHA256())
    r, s = utils.decode_dss_signature(key.sign(base, ec.ECDSA(digest)))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def rfc9421_requests(path, count, authority, algorithm, date=None):
    """What the app role sends with `"signature_format": "rfc9421"` and `algorithm`
    (docs/signatures.md): the protocol headers and Signature-Input/Signature, covering
    @method, @authority, @path, @query and every protocol header, with created (now,
    or `date`'s second), keyid, alg and a fresh nonce each; no Date."""
    created = int(parsedate_to_datetime(date).timestamp()) if date else int(time.time())
    target = "/myapp/article/1?x=1"
    path_part, query = target.split("?", 1)
    covered = ["@method", "@authority", "@path", "@query"] + [n for n, _ in SIGNED_PROTOCOL]
    values = ["GET", authority.lower(), path_part, f"?{query}"] + [v for _, v in SIGNED_PROTOCOL]
    components = "".join(f'"{n}": {v}\n' for n, v in zip(covered, values))
    inner = "(" + " ".join(f'"{n}"' for n in covered) + ")"
    head = [f"GET {target} HTTP/1.1", f"Host: {authority}"] + [f"{n}: {v}" for n, v in SIGNED_PROTOCOL]
    lines = []
    for _ in range(count):
        params = f'{inner};created={created};keyid="k1";alg="{algorithm}";nonce="{secrets.token_hex(16)}"'
        signature = rfc9421_sign(algorithm, f'{components}"@signature-params": {params}'.encode())
        lines.append("\t".join(head + [f"Signature-Input: wsgiproxy={params}",
                                       f"Signature: wsgiproxy=:{base64.b64encode(signature).decode()}:"]))
    Path(path).write_text("\n".join(lines) + "\n")


def signature_variants():
    """The `app` role signing and the `middleware` role verifying RFC 9421 signatures
    with each algorithm, in both loaders, and no filter given the middleware's input
    (signed with HMAC-SHA256: the public-key signatures are 44 bytes longer in base64)."""
    out = [("no filter, the RFC 9421 middleware's input", {"filters": [], "signed_input": True, "signature": "hmac-sha256"})]
    env = signature_env()
    for loader in ("", "native module: "):
        def one(name, config):
            return [wasm_filter(name, WASM, config, env)] if not loader else [native_filter(name, config)]
        for algorithm, label in SIGNATURE_ALGORITHMS:
            if not loader and algorithm in WASM_CANNOT_SIGN:
                continue
            app = dict(APP_CONFIG, signature_format="rfc9421", algorithm=algorithm, secret=signature_secret(algorithm, "private"))
            out.append((f"{loader}app role, RFC 9421 {label}", {"filters": one("wsgiproxy", app)}))
        for algorithm, label in SIGNATURE_ALGORITHMS:
            mw = {"role": "middleware", "signature_format": "rfc9421", "algorithm": algorithm,
                  "secret": signature_secret(algorithm, "public"), "keys": {"REMOTE_USER": "x-remote-user"}}
            out.append((f"{loader}middleware, verifying RFC 9421 {label}",
                        {"filters": one("wsgiproxy", mw), "signed_input": True, "signature": algorithm}))
    return out


# What --signatures runs: no filter, no filter given the middleware's input, and the
# 12 variants of signature_variants; by instructions, also the unsigned app role of
# each loader (what signing adds to it). The group runs only when asked for
# (--signatures, or an --only pattern that names "RFC 9421"): a full run and
# --instructions keep their variants and their duration.
SIGNATURE_GROUP = ["no filter, the RFC 9421 middleware's input"] + [
    f"{loader}{role}, {verb}RFC 9421 {label}" for loader in ("", "native module: ")
    for role, verb in (("app role", ""), ("middleware", "verifying ")) for algorithm, label in SIGNATURE_ALGORITHMS
    if loader or role != "app role" or algorithm not in WASM_CANNOT_SIGN]
SIGNATURE_VARIANTS = ["no filter"] + SIGNATURE_GROUP
SIGNATURE_INSTRUCTION_VARIANTS = ["no filter", "no filter, the RFC 9421 middleware's input",
                                  "app role, unsigned", "native module: app role, unsigned"] + SIGNATURE_GROUP[1:]


def selected(names, only):
    """The variants of `names` that `--only` (comma-separated substrings) selects: the
    matching ones plus the baselines. The RFC 9421 group only for a pattern naming it."""
    wanted = [w.strip() for w in only.split(",")]
    out = []
    for n in names:
        if n in SIGNATURE_GROUP:
            if any(w in n for w in wanted if "9421" in w):
                out.append(n)
        elif n.startswith("no filter") or n == "empty Wasm filter" or any(w in n for w in wanted):
            out.append(n)
    # The RFC 9421 middleware's baseline whenever one of the group runs.
    if set(out) & set(SIGNATURE_GROUP) and SIGNATURE_GROUP[0] in names and SIGNATURE_GROUP[0] not in out:
        out.append(SIGNATURE_GROUP[0])
    return out


def signature_micro():
    """The native cost of one signature per algorithm, outside Envoy (the protocol
    crate's examples/sigcost.rs, `--release`, on the load core): not counted under
    callgrind, so SHA-NI and AVX2 are used as natively. Prints its table."""
    subprocess.run(["cargo", "build", "--release", "-p", "wsgiproxy-protocol", "--example", "sigcost"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    out = subprocess.run(["taskset", "-c", LOAD_CORE, ROOT / "target/release/examples/sigcost"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return out.strip()


def signature_table(measure, results, specs, rate=2000):
    """The signature comparison: each variant against no filter given the same
    requests and against HMAC-SHA256 in the same loader and role. `results[name]` is
    a list of per-round dicts (CPU time; ratios paired by round) or one count
    (instructions)."""
    lines = []
    if measure == "cpu":
        lines += ["| variant | Envoy CPU µs/req | vs no filter (same requests) | vs RFC 9421 HMAC-SHA256 | "
                  "µs over HMAC-SHA256 | max req/s | req/s vs HMAC-SHA256 | p50 ms | p99 ms | non-2xx |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| variant | instructions/request | vs no filter (same requests) | over RFC 9421 HMAC-SHA256 | "
                  "vs RFC 9421 HMAC-SHA256 |", "|---|---:|---:|---:|---:|"]
    for name in results:
        if name not in SIGNATURE_GROUP[1:]:
            continue
        base = "no filter, the RFC 9421 middleware's input" if specs[name].get("signed_input") else "no filter"
        hmac_name = re.sub(r"RFC 9421 .*$", "RFC 9421 HMAC-SHA256", name)
        if measure == "cpu":
            rs = results[name]
            ratio = lambda other, key="cpu_us": f"{paired_ratio(results, name, other, key):.2f}" if other in results else "—"
            # The median over rounds of the difference within a round, as for the ratios.
            over = (f"{statistics.median(r['cpu_us'] - h['cpu_us'] for r, h in zip(rs, results[hmac_name])):+.0f}"
                    if hmac_name in results else "—")
            rps = statistics.fmean(r['rps'] for r in rs)
            # Below the fixed rate's capacity, latency there is queueing, not the filter's.
            saturated = "¹" if rps < 1.2 * rate else ""
            lines.append(f"| {name} | {statistics.fmean(r['cpu_us'] for r in rs):.1f} | {ratio(base)} | {ratio(hmac_name)} | "
                         f"{over} | {rps:,.0f} | {ratio(hmac_name, 'rps')} | "
                         f"{statistics.fmean(r['p50'] for r in rs):.2f}{saturated} | {statistics.fmean(r['p99'] for r in rs):.2f}{saturated} | "
                         f"{sum(r['non2xx'] for r in rs)} |")
        else:
            v = results[name]
            vs = lambda other: f"{v / results[other]:.2f}" if other in results else "—"
            over = f"{v - results[hmac_name]:+,.0f}" if hmac_name in results else "—"
            lines.append(f"| {name} | {v:,.0f} | {vs(base)} | {over} | {vs(hmac_name)} |")
    if measure == "cpu" and any("¹" in line for line in lines):
        lines += ["", f"¹ Max req/s within 1.2× of the fixed {rate} req/s: at that rate the variant is at or near its "
                  "capacity, and p50/p99 are mostly queueing."]
    return "\n".join(lines)


# ------------------------------------------------------------------ variants

def variants(echo_port, sidecar_port):
    secret = {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY"}]}
    app = lambda **extra: [wasm_filter("wsgiproxy", WASM, dict(APP_CONFIG, **extra))]
    mw_secret = {"role": "middleware", "secret": secret, "algorithm": "hmac-sha256", "keys": {"REMOTE_USER": "x-remote-user"}}
    native_route = {
        "route": {"cluster": "backend", "prefix_rewrite": "/myapp", "host_rewrite_literal": "backend.internal:8080"},
        "request_headers_to_remove": [n for n, _ in NATIVE_HEADERS] + ["x-forwarded-script-name", "x-traversal-query-string"],
        "request_headers_to_add": [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in NATIVE_HEADERS],
    }
    native_route["match"] = {"prefix": "/blog"}
    # The middleware's edits of a signed request (what it removes, sets and adds), done
    # by Envoy's own route-level header mutation with literal values: what those edits
    # cost Envoy with no filter at all, a floor under the middleware role's cost.
    mw_added = [("x-forwarded-host", "www.example.com"), ("x-forwarded-proto", "http"), ("x-forwarded-for", "203.0.113.7"),
                ("x-forwarded-prefix", "/blog"), ("x-remote-user", "bob")]
    native_mw_route = {
        "match": {"prefix": "/myapp"},
        "route": {"cluster": "backend", "prefix_rewrite": "/blog", "host_rewrite_literal": "www.example.com"},
        "request_headers_to_remove": ["x-forwarded-server", "x-forwarded-scheme", "x-script-name", "x-traversal-path",
                                      "x-wsgiproxy-version", "x-wsgiproxy-str-0", "x-wsgiproxy-signature"],
        "request_headers_to_add": [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"} for k, v in mw_added],
    }
    spawn_clusters = [
        {"name": "backend", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
         "original_dst_lb_config": {"use_http_header": True, "http_header_name": "x-envoy-original-dst-host"}},
        static_cluster("wsgiproxy_sidecar", sidecar_port),
    ]
    return [
        ("no filter", {"filters": []}),
        # The middleware variants' requests (pre-signed, with the protocol headers), with no filter.
        ("no filter, the middleware's input", {"filters": [], "signed_input": True}),
        ("empty Wasm filter", {"filters": [wasm_filter("empty", EMPTY_WASM, {})]}),
        ("native request_headers_to_add", {"filters": [], "route": native_route, "native": True}),
        ("native request_headers_to_add, the middleware's edits", {"filters": [], "route": native_mw_route, "native": True, "signed_input": True}),
        ("Lua filter, same headers", {"filters": [{"name": "envoy.filters.http.lua", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_APP}}}]}),
        ("app role, unsigned", {"filters": app()}),
        ("app role, unsigned, no peer filter", {"filters": app(client_address="envoy")}),
        ("app role, unsigned, scheme declared", {"filters": app(scheme="http")}),
        ("app role, HMAC-SHA1", {"filters": app(secret=secret, algorithm="hmac-sha1")}),
        ("app role, HMAC-SHA256", {"filters": app(secret=secret, algorithm="hmac-sha256")}),
        ("middleware, trusted peer", {"filters": [wasm_filter("wsgiproxy", WASM, {
            "role": "middleware", "trust_ips": ["127.0.0.1"], "keys": {"REMOTE_USER": "x-remote-user"}})], "signed_input": True}),
        ("middleware, verifying SHA256", {"filters": [wasm_filter("wsgiproxy", WASM, mw_secret)], "signed_input": True}),
        ("two-Envoy chain (SHA256)", {"chain": (app(secret=secret, algorithm="hmac-sha256"), [wasm_filter("wsgiproxy", WASM, mw_secret)])}),
        ("spawn role, warm app", {"filters": [wasm_filter("wsgiproxy", WASM, {
            "role": "spawn", "app": "bench", "sidecar_cluster": "wsgiproxy_sidecar"})], "clusters": spawn_clusters}),
        # The same roles and JSON in the native dynamic module.
        ("native module: app role, unsigned", {"filters": [native_filter("wsgiproxy", APP_CONFIG)]}),
        ("native module: app role, HMAC-SHA256", {"filters": [native_filter("wsgiproxy", dict(APP_CONFIG, secret=secret, algorithm="hmac-sha256"))]}),
        ("native module: middleware, verifying SHA256", {"filters": [native_filter("wsgiproxy", mw_secret)], "signed_input": True}),
    ] + signature_variants()


def variant_config(spec, port, echo_port):
    """The Envoy config of a single-Envoy variant, listening on `port`."""
    config = envoy_config(port, free_port(), echo_port, spec["filters"], clusters=spec.get("clusters"))
    if spec.get("native"):
        config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"] = [spec["route"]]
    return config


def run_variant(workdir, spec, echo_port, args):
    envoys = []
    try:
        if "chain" in spec:
            edge_filters, mw_filters = spec["chain"]
            mw_port, edge_port = free_port(), free_port()
            envoys.append(start_envoy(workdir, envoy_config(mw_port, free_port(), echo_port, mw_filters), mw_port))
            envoys.append(start_envoy(workdir, envoy_config(edge_port, free_port(), mw_port, edge_filters), edge_port))
            port = edge_port
        else:
            port = free_port()
            envoys.append(start_envoy(workdir, variant_config(spec, port, echo_port), port))
        script = arg = None
        path = PATH
        signature = spec.get("signature")
        # How many signed requests a phase at full load may take: --signed-requests, or for
        # the public-key variants, whose signatures take Python 40 µs each to make,
        # 15,000 a second (the fastest, the native middleware verifying Ed25519, reaches
        # about 11,000). A request sent twice is refused as a replay and counted in
        # non-2xx: the native RFC 9421 HMAC middleware reaches 20,000 a second.
        public_key = signature not in (None, "hmac-sha256")
        full_load = lambda seconds: min(int(args.signed_requests), 15_000 * seconds) if public_key else int(args.signed_requests)
        if spec.get("signed_input"):
            script = Path(workdir) / "replay.lua"
            script.write_text(WRK_REPLAY)
            arg = Path(workdir) / "signed.txt"
            signed_requests(arg, full_load(args.warmup), "backend.internal:8080", signature=signature)
        # Warm-up at full load (V8 compiles in tiers), discarded.
        wrk(port, args.warmup, script, arg, path)
        if spec.get("signed_input"):
            signed_requests(arg, full_load(args.seconds), "backend.internal:8080", signature=signature)
        # Maximum throughput.
        result = wrk(port, args.seconds, script, arg, path)
        # CPU per request and latency at a fixed rate below the knee, where every
        # variant does the same work per wake-up (at full load Envoy batches more).
        if spec.get("signed_input"):
            signed_requests(arg, int(args.rate * args.latency_seconds * 1.2) + 100, "backend.internal:8080", signature=signature)
        before = sum(cpu_seconds(e.pid) for e in envoys)
        if spec.get("signed_input"):
            p50, p99, answered, refused = paced_replay(port, args.rate, args.latency_seconds, arg)
            result["non2xx"] += refused
        else:
            p50, p99, answered = hey_fixed_rate(port, args.rate, args.latency_seconds)
        used = sum(cpu_seconds(e.pid) for e in envoys) - before
        result.update(p50=p50, p99=p99, cpu_us=used / max(answered, 1) * 1e6)
        return result
    finally:
        for e in envoys:
            e.stop()


def child_start_ms(delay_ms, rounds=5):
    """How long the child takes to listen when started directly (no sidecar): its
    --ready-delay-ms plus its own process start. The median of a few starts."""
    took = []
    for _ in range(rounds):
        port = free_port()
        began = time.perf_counter()
        child = subprocess.Popen(["taskset", "-c", LOAD_CORE, ECHO, "--port", str(port), "--ready-delay-ms", str(delay_ms), "--fixed-body"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.0005)
            took.append((time.perf_counter() - began) * 1000)
        finally:
            child.kill()
            child.wait()
    return statistics.median(took)


def cold_starts(workdir, args):
    """Time from the first request to its response, minus the child's own start time
    (measured by starting it directly): the sidecar's and the filter's overhead."""
    delay_ms = 500
    child_ms = child_start_ms(delay_ms)
    cfg = Path(workdir) / "cold.toml"
    cfg.write_text(f'[apps.cold]\ncommand = ["{ECHO}", "--port", "__PORT__", "--ready-delay-ms", "{delay_ms}", "--fixed-body"]\nidle_shutdown = 0.5\n')
    sc_port = free_port()
    sidecar = Proc([SIDECAR, "--config", cfg, "--listen", f"127.0.0.1:{sc_port}", "--state-dir", Path(workdir) / "cold-state"],
                   LOAD_CORE, Path(workdir) / "cold-sidecar.log")
    wait_port(sc_port)
    port = free_port()
    clusters = [
        {"name": "backend", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
         "original_dst_lb_config": {"use_http_header": True, "http_header_name": "x-envoy-original-dst-host"}},
        static_cluster("wsgiproxy_sidecar", sc_port),
    ]
    envoy = start_envoy(workdir, envoy_config(port, free_port(), 0, [wasm_filter("wsgiproxy", WASM, {
        "role": "spawn", "app": "cold", "sidecar_cluster": "wsgiproxy_sidecar", "report_interval_ms": 100})], clusters=clusters), port)
    import concurrent.futures
    import urllib.request

    def one():
        began = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            r.read()
            cold = r.headers.get("x-wsgiproxy-cold-start-ms")
        return (time.perf_counter() - began) * 1000, cold

    def wait_stopped():
        deadline = time.time() + 20
        while time.time() < deadline:
            status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{sc_port}/v1/status"))
            if status["apps"]["cold"]["state"] == "stopped":
                return
            time.sleep(0.05)
        raise RuntimeError("the app did not stop")

    singles, bursts = [], []
    try:
        for _ in range(args.cold_rounds):
            wait_stopped()
            time.sleep(0.6)  # leases lapse
            took, cold = one()
            assert cold is not None, "not a cold start"
            singles.append(took - child_ms)
            wait_stopped()
            time.sleep(0.6)
            with concurrent.futures.ThreadPoolExecutor(50) as pool:
                results = list(pool.map(lambda _: one(), range(50)))
            bursts.append(max(t for t, _ in results) - child_ms)
    finally:
        envoy.stop()
        sidecar.stop()
    return statistics.median(singles), statistics.median(bursts), child_ms


def memory(workdir, echo_port, args):
    """Envoy's RSS with the filter loaded on 1 and 2 workers, and across a long run."""
    out = {}
    config = lambda port: envoy_config(port, free_port(), echo_port, [wasm_filter("wsgiproxy", WASM, dict(
        APP_CONFIG, secret={"keys": [{"id": "k1", "env": "WSGIPROXY_KEY"}]}, algorithm="hmac-sha256"))])
    for workers in (1, 2):
        port = free_port()
        e = start_envoy(workdir, config(port), port, concurrency=workers, cpu="0" if workers == 1 else "0,1")
        try:
            wrk(port, 1)
            out[f"rss_{workers}w"] = rss_mib(e.pid)
        finally:
            e.stop()
    port = free_port()
    e = start_envoy(workdir, config(port), port)
    try:
        wrk(port, 3)
        start = rss_mib(e.pid)
        sent = 0
        samples = [start]
        while sent < args.long_requests:
            sent += wrk(port, 5)["requests"]
            samples.append(rss_mib(e.pid))
        out.update(long_requests=sent, rss_start=start, rss_end=samples[-1], rss_max=max(samples))
    finally:
        e.stop()
    return out


# The unsigned app role's host calls per request: the request headers, the peer
# record, TLS (unless the scheme is declared), its header writes, and the three
# response headers rewriting may change.
APP_HOST_CALLS = ["read_headers", "property", "property", "set_six", "set_one", "set_one", "set_one", "response_get_three"]


def attribute(workdir, echo_port, args):
    """Where the app role's CPU goes: the empty filter making one kind of host call
    per request, then exactly the app role's host calls and nothing else, against
    the app role itself. Each figure is Envoy CPU/request over the empty filter's."""
    empty = lambda ops: {"filters": [wasm_filter("empty", EMPTY_WASM, {"ops": ops})]}
    specs = [
        ("empty Wasm filter", empty([])),
        ("+ read every request header", empty(["read_headers"])),
        ("+ read one request header", empty(["get_one"])),
        ("+ read one property (source.address)", empty(["property"])),
        ("+ read the time", empty(["time"])),
        ("+ set one header", empty(["set_one"])),
        ("+ set six headers", empty(["set_six"])),
        ("+ read every response header", empty(["response_read"])),
        ("+ read three response headers by name", empty(["response_get_three"])),
        ("+ the app role's host calls, nothing else", empty(APP_HOST_CALLS)),
        ("app role, unsigned", {"filters": [wasm_filter("wsgiproxy", WASM, APP_CONFIG)]}),
        ("app role, unsigned, scheme declared", {"filters": [wasm_filter("wsgiproxy", WASM, dict(APP_CONFIG, scheme="http"))]}),
    ]
    if args.instructions:
        # Deterministic: one count each, instructions rather than CPU time.
        counts = {}
        for name, spec in specs:
            counts[name] = instructions_per_request(workdir, spec, echo_port, args.instruction_requests)
            print(f"{name:45s} {counts[name]:12,.0f} instructions/request", file=sys.stderr, flush=True)
        base = counts["empty Wasm filter"]
        print("| what the filter does per request | Envoy instructions/request | over the empty filter | × the empty filter |")
        print("|---|---:|---:|---:|")
        for name, _ in specs:
            print(f"| {name} | {counts[name]:,.0f} | {counts[name] - base:+,.0f} | {counts[name] / base:.2f} |")
        return
    cpu = {}
    for _ in range(args.rounds):
        for name, spec in specs:
            cpu.setdefault(name, []).append(run_variant(workdir, spec, echo_port, args)["cpu_us"])
    base = cpu["empty Wasm filter"]
    print("| what the filter does per request | Envoy CPU µs/req | over the empty filter | × the empty filter |")
    print("|---|---:|---:|---:|")
    for name, _ in specs:
        # Paired within each round, as paired_ratio does: the machine's drift cancels.
        over = statistics.median(v - b for v, b in zip(cpu[name], base))
        times = statistics.median(v / b for v, b in zip(cpu[name], base))
        print(f"| {name} | {statistics.fmean(cpu[name]):.1f} | {over:+.1f} | {times:.2f} |")


INSTRUCTION_VARIANTS = [
    "no filter", "no filter, the middleware's input", "empty Wasm filter", "native request_headers_to_add",
    "native request_headers_to_add, the middleware's edits",
    "Lua filter, same headers",
    "app role, unsigned", "app role, HMAC-SHA256", "middleware, verifying SHA256",
    "native module: app role, unsigned", "native module: app role, HMAC-SHA256",
    "native module: middleware, verifying SHA256",
]


def send_sequentially(port, requests, report=True):
    """Sends raw requests one after another on one keep-alive connection, reading each
    answer; returns how many were answered 2xx."""
    ok = 0
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        stream = sock.makefile("rb")
        for raw in requests:
            sock.sendall(raw)
            status = stream.readline()
            length = 0
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = stream.read(length)
            if status.split(b" ")[1].startswith(b"2"):
                ok += 1
            elif report and ok == 0 and not getattr(send_sequentially, "reported", False):
                # The first refusal, so that a failed run says why.
                send_sequentially.reported = True
                print(f"first non-2xx answer: {status.decode(errors='replace').strip()} {body[:300]!r}", file=sys.stderr, flush=True)
    return ok


def callgrind_total(path):
    for line in Path(path).read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def instructions_per_request(workdir, spec, echo_port, count, warm=300, date=None, prepare=None):
    """Instructions Envoy executes per request, counted by callgrind: the same for the
    same binary and inputs whatever else the machine runs, so a small ratio can be
    read that CPU time on a shared machine hides. User space only: the kernel's share
    of each request (sockets, loopback) is not counted. Counting is switched on only
    while the measured requests are sent, after a warm-up. `prepare(port)` runs
    first, uncounted (the replay memory's fill); signed requests are dated `date`
    when given."""
    port = free_port()
    out = Path(workdir) / f"callgrind.{port}"
    callgrind = ("valgrind", "--tool=callgrind", "--instr-atstart=no", "--smc-check=all-non-file", f"--callgrind-out-file={out}")
    proc = start_envoy(workdir, variant_config(spec, port, echo_port), port, wrapper=callgrind, timeout=600)
    if prepare:
        try:
            prepare(port)
        except BaseException:
            proc.stop()
            raise
    if spec.get("signed_input"):
        if date is None:
            # The replay memory refuses signatures dated up to max_future_seconds (2 by
            # default) after it began (restart protection), and may begin with the
            # first signed request: one is sent first, its answer ignored, and the
            # measured ones are signed once that window has passed.
            wake = Path(workdir) / "wake.txt"
            signed_requests(wake, 1, "backend.internal:8080", None, signature=spec.get("signature"))
            send_sequentially(port, raw_requests(wake), report=False)
            time.sleep(1.0 - time.time() % 1.0 + 2 + 0.01)
        signed = Path(workdir) / "signed.txt"
        signed_requests(signed, warm + count, "backend.internal:8080", date, signature=spec.get("signature"))
        reqs = raw_requests(signed)
    else:
        plain = f"GET {PATH} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in CLIENT_HEADERS.items()) + "\r\n"
        reqs = [plain.encode()] * (warm + count)
    try:
        answered = send_sequentially(port, reqs[:warm])
        subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True)
        answered += send_sequentially(port, reqs[warm:])
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
        if answered != warm + count:
            raise RuntimeError(f"only {answered} of {warm + count} requests answered 2xx")
        return callgrind_total(sorted(Path(workdir).glob(f"callgrind.{port}.*"))[-1]) / count
    finally:
        proc.stop()


def instructions(workdir, echo_port, sc_port, args):
    """The main variants' instructions per request (see instructions_per_request):
    ratios that hold on a noisy machine, an upper bound of the CPU-time ones."""
    specs = dict(variants(echo_port, sc_port))
    count = args.instruction_requests
    names = INSTRUCTION_VARIANTS
    if args.signatures:
        names = SIGNATURE_INSTRUCTION_VARIANTS
    elif args.only:
        names = selected(list(dict.fromkeys(INSTRUCTION_VARIANTS + SIGNATURE_INSTRUCTION_VARIANTS)), args.only)
    results = {}
    for name in names:
        results[name] = instructions_per_request(workdir, specs[name], echo_port, count)
        print(f"{name:45s} {results[name]:12,.0f} instructions/request", file=sys.stderr, flush=True)
    print(f"Envoy instructions per request (callgrind, user space; {count} requests after 300 of warm-up, one connection):")
    print()
    print("| variant | instructions/request | vs no filter (same requests) | vs empty Wasm | vs Lua |")
    print("|---|---:|---:|---:|---:|")
    ratio = lambda v, base: f"{v / results[base]:.2f}" if base in results else "—"
    for name in names:
        v = results[name]
        # The middleware variants are sent pre-signed requests: their baseline is no filter given those.
        base = "no filter, the middleware's input" if specs[name].get("signed_input") else "no filter"
        if specs[name].get("signature"):
            base = "no filter, the RFC 9421 middleware's input"
        print(f"| {name} | {v:,.0f} | {ratio(v, base)} | {ratio(v, 'empty Wasm filter')} | "
              f"{ratio(v, 'Lua filter, same headers')} |")
    if any(n in SIGNATURE_GROUP[1:] for n in results):
        print()
        print("RFC 9421 signatures, by algorithm (`over`: instructions per request beyond HMAC-SHA256 in the same loader and role):")
        print()
        print(signature_table("instructions", results, specs))


# ------------------------------------------------------------------ the replay memory, empty and full

# Nothing expires in an hour's skew; the bound gives the Wasm filter's keys room for
# the fill in one bucket (see replay_memory_specs).
REPLAY_SKEW = 3600
REPLAY_MEMORY_MB = 1024
# The Wasm filter's layout (protocol/src/replay/shared.rs): a key holds at most 511
# fingerprints, 4 KB; generations cover the live buckets plus one.
WASM_PER_KEY = 511


def wasm_shards(skew, memory_mb):
    bucket = max(skew // 16, 1)
    generations = -(-(2 * skew + bucket) // bucket) + 1 + 1
    return (memory_mb << 20) // (generations * 4096)


def replay_memory_specs(memory_mb):
    """The verifying middleware in both loaders, with the same JSON: an hour's skew,
    so that no nonce expires during the run, and a memory bound of `memory_mb`."""
    config = {"role": "middleware", "secret": {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY"}]}, "algorithm": "hmac-sha256",
              "keys": {"REMOTE_USER": "x-remote-user"}, "max_skew_seconds": REPLAY_SKEW, "replay_memory_mb": memory_mb}
    return [
        ("Wasm middleware, verifying SHA256", {"filters": [wasm_filter("wsgiproxy", WASM, config)], "signed_input": True}),
        ("native module: middleware, verifying SHA256", {"filters": [native_filter("wsgiproxy", config)], "signed_input": True}),
    ]


def open_bucket_date(skew=REPLAY_SKEW):
    """A Date for every request of a memory's run, fill and measures alike: the first
    second of the latest time bucket that is within the skew of now (with a minute to
    spare). All its nonces then go to one bucket, the one every measured request looks
    in and writes: in the Wasm filter its keys are the ones a request copies, as full
    as the fill made them; in the native module it stays open (the hash sets that take
    a request dated now: a bucket is frozen into sorted arrays only once time has
    passed it, in about an hour here) and nothing expires. Returns (the date, in
    seconds since the epoch, and the second time leaves the bucket, after which the
    native module would freeze it)."""
    bucket = max(skew // 16, 1)
    first = (int(time.time()) + skew - 60) // bucket * bucket
    return first, first + bucket


def fill_helper():
    """Builds tests/replay_fill.rs (release) and returns its test binary."""
    out = subprocess.run(["cargo", "test", "--release", "--test", "replay_fill", "--no-run", "--message-format=json"],
                         cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    for line in out.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "replay_fill":
            return msg["executable"]
    raise RuntimeError("cargo built no replay_fill test binary")


def fill(helper, port, count, date, connections=32):
    """Sends `count` fresh signed requests dated `date` at full speed (the load core);
    every one must be accepted. Returns the helper's report."""
    env = dict(os.environ, WSGIPROXY_FILL_PORT=str(port), WSGIPROXY_FILL_DATE=date, WSGIPROXY_FILL_KEY=KEY,
               WSGIPROXY_FILL_COUNT=str(count), WSGIPROXY_FILL_CONNECTIONS=str(connections))
    out = subprocess.run(["taskset", "-c", LOAD_CORE, helper, "--ignored", "--exact", "fill", "--nocapture"],
                         env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    # The test harness may print its own words before the line on the same line.
    found = re.search(r"fill: (\{.*\})\s*$", out.stdout, re.M)
    report = json.loads(found.group(1)) if found else None
    if out.returncode != 0 or report is None:
        raise RuntimeError(f"the fill failed:\n{out.stdout[-3000:]}")
    if report["statuses"] != {"200": count}:
        raise RuntimeError(f"the fill was not all accepted: {report}")
    return report


def replay_memory(workdir, echo_port, args):
    """The middleware's Envoy CPU per request with an empty replay memory beside a full
    one (args.fill live nonces), in both loaders. Four Envoys run side by side, each
    one worker on the Envoy core: per loader one whose memory stays empty and one
    filled first at full speed (the empty one is first sent args.fill_empty the same
    way, so that both have run at full load). Then, round after round, each loader's
    Envoys are sent the same fresh signed requests at the fixed rate (each Envoy has
    its own memory, so every nonce is new to each), back to back, the order rotating.
    Three measures per loader and round:

    - empty: the empty memory, requests dated in the bucket the other was filled in;
    - full: the full memory, requests dated in its filled bucket;
    - full, another bucket: the full memory, requests dated in the bucket before it,
      which holds only what the measures put there. Against `full`, only what the
      request touches differs, in one process: a control for what tells two Envoy
      processes apart (allocator, JIT, layout), which pairing by round does not cancel.

    Each ratio is the median over rounds of the two figures of the same round."""
    helper = fill_helper()
    specs = replay_memory_specs(REPLAY_MEMORY_MB)
    bucket = REPLAY_SKEW // 16
    # The paced sender runs in this process: on the load core, off the Envoy core.
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    envoys, dates, live, fills, rss = {}, {}, {}, {}, {}
    deadline = float("inf")
    try:
        for name, spec in specs:
            first, leaves = open_bucket_date()
            # The full bucket's date, and the bucket before it (still ahead of now).
            dates[name] = {"empty": first, "full": first, "full, another bucket": first - bucket}
            if "native" in name:
                # The native module freezes a bucket once time has left it: the
                # earlier of the two is left first.
                deadline = min(deadline, leaves - bucket)
            for state in ("empty", "full"):
                port = free_port()
                envoys[name, state] = (start_envoy(workdir, variant_config(spec, port, echo_port), port), port)
            date = formatdate(first, usegmt=True)
            proc, port = envoys[name, "empty"]
            fill(helper, port, args.fill_empty, date)
            live[name, "empty"] = args.fill_empty
            proc, port = envoys[name, "full"]
            print(f"{name}: filling its memory with {args.fill:,} nonces (Date: {date})", file=sys.stderr, flush=True)
            fills[name] = fill(helper, port, args.fill, date)
            live[name, "full"] = args.fill
            live[name, "full, another bucket"] = 0
            print(f"{name}: filled at {fills[name]['per_second']:,.0f}/s in {fills[name]['seconds']:.0f} s; "
                  f"Envoy RSS {rss_mib(envoys[name, 'empty'][0].pid):.1f} MiB empty, {rss_mib(proc.pid):.1f} MiB full",
                  file=sys.stderr, flush=True)
        states = ["empty", "full", "full, another bucket"]
        results = {}
        rounds = 0
        for rnd in range(args.rounds):
            if time.time() + 120 > deadline:
                print(f"stopping after {rnd} rounds: time is about to leave the native module's buckets", file=sys.stderr)
                break
            order = states[rnd % 3:] + states[:rnd % 3]
            for name, _ in specs:
                for state in order:
                    proc, port = envoys[name, state.split(",")[0]]
                    date = formatdate(dates[name][state], usegmt=True)
                    # The same requests for each memory of the loader: new to each.
                    stem = f"{rnd}-{dates[name][state]}.txt"
                    warm, measured = Path(workdir) / f"warm-{stem}", Path(workdir) / f"measured-{stem}"
                    if not measured.exists():
                        signed_requests(warm, int(args.rate * args.warmup * 1.2) + 100, "backend.internal:8080", date)
                        signed_requests(measured, int(args.rate * args.latency_seconds * 1.2) + 100, "backend.internal:8080", date)
                    *_, answered, refused = paced_replay(port, args.rate, args.warmup, warm)
                    bad = refused
                    live[name, state] += answered - refused
                    before = cpu_seconds(proc.pid)
                    p50, p99, answered, refused = paced_replay(port, args.rate, args.latency_seconds, measured)
                    used = cpu_seconds(proc.pid) - before
                    live[name, state] += answered - refused
                    r = {"cpu_us": used / max(answered, 1) * 1e6, "p50": p50, "p99": p99, "non2xx": bad + refused}
                    results.setdefault((name, state), []).append(r)
                    print(f"round {rnd + 1}: {name} ({state}) {r['cpu_us']:6.1f} us CPU/req  p50 {p50:.2f} ms  "
                          f"p99 {p99:.2f} ms  non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
            rounds = rnd + 1
        for (name, state), (proc, _) in envoys.items():
            rss[name, state] = rss_mib(proc.pid)
    finally:
        for proc, _ in envoys.values():
            proc.stop()
    if rounds == 0:
        raise RuntimeError("no round measured")

    shards = wasm_shards(REPLAY_SKEW, REPLAY_MEMORY_MB)
    lines = [
        f"Envoy CPU per request of the verifying middleware (HMAC-SHA256), `max_skew_seconds: {REPLAY_SKEW}`, "
        f"`replay_memory_mb: {REPLAY_MEMORY_MB}`. Per loader two Envoys (1 worker each, on core {ENVOY_CORE}): one filled "
        f"first with {args.fill:,} fresh signed requests at full speed (tests/replay_fill.rs, 32 connections, core "
        f"{LOAD_CORE}), one sent {args.fill_empty:,} the same way. {rounds} rounds, each measure {args.warmup} s of "
        f"warm-up (discarded) then {args.latency_seconds} s at a fixed {args.rate} req/s of fresh signed requests, the "
        f"order rotating. The fill and the `empty` and `full` measures are dated in one time bucket; in the Wasm filter "
        f"the full memory's keys there hold {args.fill / shards:.0f} fingerprints on average when filled ({shards:,} keys a "
        f"bucket, at most {WASM_PER_KEY} each); in the native module it is an open bucket (hash sets). `full, another "
        f"bucket`: the full Envoy, requests dated in the bucket before, which the fill left empty.",
        "",
        "| loader | measure | live nonces in its bucket at the end | Envoy RSS MiB | Envoy CPU µs/req, mean | min–max over rounds | p50 ms, median | p99 ms, median | non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _ in specs:
        for state in states:
            rs = results[name, state]
            cpus = [r["cpu_us"] for r in rs]
            lines.append(f"| {name} | {state} | {live[name, state]:,} | {rss[name, state.split(',')[0]]:.1f} | "
                         f"{statistics.fmean(cpus):.1f} | {min(cpus):.1f}–{max(cpus):.1f} | "
                         f"{statistics.median(r['p50'] for r in rs):.2f} | {statistics.median(r['p99'] for r in rs):.2f} | "
                         f"{sum(r['non2xx'] for r in rs)} |")
    lines += ["", "Fill: " + "; ".join(f"{n}: {f['sent']:,} in {f['seconds']:.0f} s ({f['per_second']:,.0f}/s)" for n, f in fills.items()),
              "", "| loader | ratio | median of the rounds' paired ratios | about 95% of the median | per-round ratios | ≤ 1.10 |",
              "|---|---|---:|---:|---|---|"]
    for name, _ in specs:
        for top, base in (("full", "empty"), ("full", "full, another bucket"), ("full, another bucket", "empty")):
            ratios = [t["cpu_us"] / b["cpu_us"] for t, b in zip(results[name, top], results[name, base])]
            median = statistics.median(ratios)
            # Order statistics around the median (the 6th and 15th of 20): an interval
            # holding the true median with about 95% probability.
            low = max(0, int(len(ratios) / 2 - 0.98 * len(ratios) ** 0.5))
            ranked = sorted(ratios)
            interval = f"{ranked[low]:.2f}–{ranked[len(ratios) - 1 - low]:.2f}"
            verdict = ("met" if median <= 1.10 else "MISSED") if base == "empty" and top == "full" else "—"
            lines.append(f"| {name} | {top} / {base} | {median:.3f} | {interval} | {', '.join(f'{r:.2f}' for r in ratios)} | {verdict} |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": {f"{n} ({s})": v for (n, s), v in results.items()},
                                               "fills": fills, "live": {f"{n} ({s})": v for (n, s), v in live.items()},
                                               "rss": {f"{n} ({s})": v for (n, s), v in rss.items()}}, indent=1))


def replay_memory_instructions(workdir, echo_port, args):
    """The same comparison in instructions per request under callgrind. Filling under
    valgrind is slow and the memory lives only as long as its process, so the fill is
    smaller (args.fill_instructions), into an Envoy already under callgrind with
    counting off; the memory bound is scaled down with it, so that the Wasm filter's
    keys are as full as in the CPU-time run (what a request there copies and searches
    depends on its key's fullness, not on the number of keys)."""
    helper = fill_helper()
    memory_mb = max(1, round(REPLAY_MEMORY_MB * args.fill_instructions / args.fill))
    count = args.instruction_requests
    results, fills = {}, {}
    for name, spec in replay_memory_specs(memory_mb):
        for state, filled in (("empty", 0), ("full", args.fill_instructions)):
            date = formatdate(open_bucket_date()[0], usegmt=True)

            def prepare(port, name=name, filled=filled, date=date):
                if filled:
                    fills[name] = fill(helper, port, filled, date, connections=8)
                    print(f"{name}: filled {filled:,} under callgrind at {fills[name]['per_second']:,.0f}/s",
                          file=sys.stderr, flush=True)

            results[name, state] = instructions_per_request(workdir, spec, echo_port, count, date=date, prepare=prepare)
            print(f"{name} ({state}): {results[name, state]:,.0f} instructions/request", file=sys.stderr, flush=True)
    shards = wasm_shards(REPLAY_SKEW, memory_mb)
    print(f"Envoy instructions per request of the verifying middleware (callgrind, user space; {count} requests after 300 "
          f"of warm-up, one connection), `max_skew_seconds: {REPLAY_SKEW}`, `replay_memory_mb: {memory_mb}`; the full "
          f"memory filled first with {args.fill_instructions:,} fresh signed requests (8 connections, counting off), all "
          f"requests dated in one bucket: the Wasm filter's keys there hold {args.fill_instructions / shards:.0f} "
          f"fingerprints on average ({shards:,} keys a bucket).")
    print()
    print("| loader | empty memory | full memory | full / empty | ≤ 1.10 |")
    print("|---|---:|---:|---:|---|")
    for name, _ in replay_memory_specs(memory_mb):
        e, f = results[name, "empty"], results[name, "full"]
        print(f"| {name} | {e:,.0f} | {f:,.0f} | {f / e:.3f} | {'met' if f / e <= 1.10 else 'MISSED'} |")


def paired_ratio(results, name, base, key="cpu_us"):
    """The median, over rounds, of `name`'s figure over `base`'s in the same round.
    On a shared machine the speed of a whole round drifts (by up to 40% here); a ratio
    taken within a round cancels that drift, and the median drops an odd round."""
    return statistics.median(r[key] / b[key] for r, b in zip(results[name], results[base]))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rate", type=int, default=2000, help="fixed rate for CPU/request and p50/p99 (requests/s)")
    ap.add_argument("--latency-seconds", type=int, default=5)
    ap.add_argument("--signed-requests", type=int, default=200000)
    ap.add_argument("--cold-rounds", type=int, default=3)
    ap.add_argument("--long-requests", type=int, default=1_000_000)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--attribute", action="store_true", help="instead: attribute the app role's CPU to host calls (empty filter with probe ops)")
    ap.add_argument("--instructions", action="store_true", help="instead: Envoy instructions per request under callgrind (deterministic)")
    ap.add_argument("--instruction-requests", type=int, default=2000)
    ap.add_argument("--replay-memory", action="store_true",
                    help="instead: the verifying middleware's CPU per request with a full replay memory (--fill live nonces) "
                         "beside an empty one, both loaders; with --instructions, counted under callgrind (--fill-instructions)")
    ap.add_argument("--fill", type=int, default=2_500_000, help="--replay-memory: live nonces in the full memory")
    ap.add_argument("--fill-empty", type=int, default=20_000,
                    help="--replay-memory: the empty memory's Envoy is sent this many first, at full speed as the fill")
    ap.add_argument("--fill-instructions", type=int, default=500_000,
                    help="--replay-memory --instructions: live nonces in the full memory (filled under valgrind)")
    ap.add_argument("--signatures", action="store_true",
                    help="only the RFC 9421 signature comparison (issue #19): the app role signing and the middleware "
                         "verifying with hmac-sha256, ed25519 and ecdsa-p256-sha256 in both loaders, beside no filter; "
                         "first the native cost of one signature (protocol/examples/sigcost.rs); with --instructions, counted")
    ap.add_argument("--only", help="comma-separated substrings: run only the matching variants (plus the two baselines), skip cold start and memory")
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="wsgiproxy-bench-")
    echo_port, sc_port = free_port(), free_port()
    echo = Proc([ECHO, "--port", echo_port, "--fixed-body"], LOAD_CORE, Path(workdir) / "echo.log")
    cfg = Path(workdir) / "sidecar.toml"
    warm_port = free_port()
    cfg.write_text(f'[apps.bench]\ncommand = ["{ECHO}", "--port", "__PORT__", "--fixed-body"]\nport = {warm_port}\n')
    sidecar = Proc([SIDECAR, "--config", cfg, "--listen", f"127.0.0.1:{sc_port}", "--state-dir", Path(workdir) / "state"],
                   LOAD_CORE, Path(workdir) / "sidecar.log")
    wait_port(echo_port)
    wait_port(sc_port)
    results = {}
    try:
        if args.replay_memory:
            if args.instructions:
                replay_memory_instructions(workdir, echo_port, args)
            else:
                replay_memory(workdir, echo_port, args)
            return
        if args.attribute:
            attribute(workdir, echo_port, args)
            return
        if args.signatures:
            print(signature_micro(), flush=True)
            print(flush=True)
        if args.instructions:
            instructions(workdir, echo_port, sc_port, args)
            return
        specs = variants(echo_port, sc_port)
        if args.signatures:
            specs = [(n, s) for n, s in specs if n in SIGNATURE_VARIANTS]
        elif args.only:
            names = selected([n for n, _ in specs], args.only)
            specs = [(n, s) for n, s in specs if n in names]
        else:
            specs = [(n, s) for n, s in specs if n not in SIGNATURE_GROUP]
        for rnd in range(args.rounds):
            for name, spec in specs:
                r = run_variant(workdir, spec, echo_port, args)
                results.setdefault(name, []).append(r)
                print(f"round {rnd + 1}: {name:32s} {r['rps']:9.0f} req/s  {r['cpu_us']:6.1f} us CPU/req"
                      f"  non-2xx {r['non2xx']}", file=sys.stderr, flush=True)
        cold = mem = None
        if not args.only and not args.signatures:
            cold = cold_starts(workdir, args)
            mem = memory(workdir, echo_port, args)
    finally:
        sidecar.stop()
        echo.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    if args.json:
        # Written before any table, so that the measures outlive a failure in printing.
        Path(args.json).write_text(json.dumps({"results": results, "cold": cold, "memory": mem}, indent=1))

    def mean(name, key):
        values = [r[key] for r in results[name]]
        return statistics.fmean(values)

    base, empty = "no filter", "empty Wasm filter"
    lines = [
        f"Envoy {subprocess.run([ENVOY, '--version'], capture_output=True, text=True).stdout.split('version: ')[-1].split('/')[1]}, "
        f"1 worker pinned to core {ENVOY_CORE}; wrk (1 thread, 32 connections), backend and sidecar on core {LOAD_CORE}; "
        f"{args.rounds} interleaved rounds: {args.warmup} s warm-up (discarded), {args.seconds} s at full load for req/s, "
        f"then {args.latency_seconds} s at a fixed {args.rate} req/s for Envoy CPU/request (from /proc) and p50/p99 "
        f"(hey; the pre-signed middleware requests by a paced sender, each sent once).",
        "",
        "Means over rounds; each ratio is the median over rounds of the two figures measured in the same round.",
        "",
        "| variant | max req/s | req/s vs no filter | Envoy CPU µs/req | CPU vs no filter | CPU vs empty Wasm | p50 ms | p99 ms | non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, _ in specs:
        rps, cpu = mean(name, "rps"), mean(name, "cpu_us")
        p50, p99 = mean(name, "p50"), mean(name, "p99")
        lat = lambda v: "—" if v != v else f"{v:.2f}"
        # --signatures runs no empty Wasm filter.
        vs_empty = f"{paired_ratio(results, name, empty):.2f}" if empty in results else "—"
        lines.append(f"| {name} | {rps:,.0f} | {paired_ratio(results, name, base, 'rps'):.2f} | "
                     f"{cpu:.1f} | {paired_ratio(results, name, base):.2f} | {vs_empty} | "
                     f"{lat(p50)} | {lat(p99)} | {sum(r['non2xx'] for r in results[name])} |")
    if cold and mem:
        cold_single, cold_burst, child_ms = cold
        lines += [
            "",
            f"- cold start, one request: sidecar + filter overhead {cold_single:.1f} ms beyond the child's own start "
            f"({child_ms:.1f} ms when started directly: --ready-delay-ms 500 and its process start; median of {args.cold_rounds})",
            f"- cold start, 50 concurrent first requests: slowest answered {cold_burst:.1f} ms after the child's own start",
            f"- .wasm size: {WASM.stat().st_size / 1024:.0f} KiB (empty filter: {EMPTY_WASM.stat().st_size / 1024:.0f} KiB)",
            f"- Envoy RSS with the filter loaded: {mem['rss_1w']:.1f} MiB on 1 worker, {mem['rss_2w']:.1f} MiB on 2 workers",
            f"- long run, app role signing: {mem['long_requests']:,} requests, RSS {mem['rss_start']:.1f} MiB after warm-up → "
            f"{mem['rss_end']:.1f} MiB at the end (max {mem['rss_max']:.1f} MiB)",
        ]
    if any(n in SIGNATURE_GROUP[1:] for n in results):
        lines += ["", "RFC 9421 signatures, by algorithm (CPU means over rounds; each ratio the median over rounds of the "
                  "paired per-round ratios):", "", signature_table("cpu", results, dict(specs), args.rate)]
    lines += ["", "Targets (ratios from this run; a target whose variants were left out is not shown):"]
    for text, ok in targets(results, cold, mem):
        lines.append(f"- [{'met' if ok else 'MISSED'}] {text}")
    print("\n".join(lines))


def targets(results, cold, mem):
    """(text, met) for each target whose variants this run measured."""
    base, empty, lua = "no filter", "empty Wasm filter", "Lua filter, same headers"
    mw_base = "no filter, the middleware's input"
    cpu_vs = lambda name, b: paired_ratio(results, name, b)
    rps_vs = lambda name, b: paired_ratio(results, name, b, "rps")
    native = lambda role: f"native module: {role}"
    checks = [
        lambda: (f"native app role, unsigned: CPU ≤ 1.05× no filter: {cpu_vs(native('app role, unsigned'), base):.2f}×",
                 cpu_vs(native("app role, unsigned"), base) <= 1.05),
        lambda: (f"native app role, signed (HMAC-SHA256): CPU ≤ 1.10× no filter: {cpu_vs(native('app role, HMAC-SHA256'), base):.2f}×",
                 cpu_vs(native("app role, HMAC-SHA256"), base) <= 1.10),
        lambda: (f"native middleware, verifying: CPU ≤ 1.15× no filter (given the same signed requests): "
                 f"{cpu_vs(native('middleware, verifying SHA256'), mw_base):.2f}×",
                 cpu_vs(native("middleware, verifying SHA256"), mw_base) <= 1.15),
        lambda: (f"Wasm app role, unsigned: CPU ≤ 1.15× the empty Wasm filter: {cpu_vs('app role, unsigned', empty):.2f}×",
                 cpu_vs("app role, unsigned", empty) <= 1.15),
        lambda: (f"Wasm app role, signed (HMAC-SHA256): CPU ≤ 1.25× the empty Wasm filter: {cpu_vs('app role, HMAC-SHA256', empty):.2f}×",
                 cpu_vs("app role, HMAC-SHA256", empty) <= 1.25),
        lambda: (f"Wasm app role, signed (HMAC-SHA1): CPU ≤ 1.25× the empty Wasm filter: {cpu_vs('app role, HMAC-SHA1', empty):.2f}×",
                 cpu_vs("app role, HMAC-SHA1", empty) <= 1.25),
    ]
    for role in ("app role, unsigned", "app role, HMAC-SHA256", "middleware, verifying SHA256"):
        checks.append(lambda role=role: (
            f"native {role} beats Lua doing less: CPU {cpu_vs(native(role), lua):.2f}× Lua's, max req/s {rps_vs(native(role), lua):.2f}× Lua's",
            cpu_vs(native(role), lua) < 1.0 and rps_vs(native(role), lua) > 1.0))
    checks += [
        lambda: (f"Wasm app role, unsigned, at least as fast as Lua doing the same: {rps_vs('app role, unsigned', lua):.2f}×",
                 rps_vs("app role, unsigned", lua) >= 1.0),
        lambda: (f"warm spawn role keeps ≥ 95% of the throughput without it: {rps_vs('spawn role, warm app', base):.0%}",
                 rps_vs("spawn role, warm app", base) >= 0.95),
    ]
    if cold and mem:
        growth = mem["rss_end"] - mem["rss_start"]
        checks += [
            lambda: (f"sidecar adds < 10 ms to a cold start: {cold[0]:.1f} ms", cold[0] < 10),
            lambda: (f"memory flat over {mem['long_requests']:,} requests: {growth:+.1f} MiB", growth < 2.0),
        ]
    for check in checks:
        try:
            yield check()
        except KeyError:
            continue


if __name__ == "__main__":
    main()
