#!/usr/bin/env python3
"""Soak: the two-Envoy chain (app role signing → middleware verifying → backend)
under steady load for MINUTES, Envoy memory sampled throughout. Prints the samples
and whether memory grew. Run through scripts/soak.sh."""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--sample-seconds", type=int, default=30)
    args = ap.parse_args()
    wd = tempfile.mkdtemp(prefix="wsgiproxy-soak-")
    echo_port = bench.free_port()
    echo = bench.Proc([bench.ECHO, "--port", echo_port, "--fixed-body"], bench.LOAD_CORE, Path(wd) / "echo.log")
    bench.wait_port(echo_port)
    secret = {"keys": [{"id": "k1", "env": "WSGIPROXY_KEY"}]}
    mw_port, edge_port = bench.free_port(), bench.free_port()
    mw = bench.start_envoy(wd, bench.envoy_config(mw_port, bench.free_port(), echo_port, [bench.wasm_filter("wsgiproxy", bench.WASM, {
        "role": "middleware", "secret": secret, "algorithm": "hmac-sha256", "keys": {"REMOTE_USER": "x-remote-user"},
        # Nonces are remembered for 2 × max_skew + 1 s: with 60 s the replay memory
        # reaches its steady size after two minutes, well inside the soak.
        "max_skew_seconds": 60})]), mw_port)
    edge = bench.start_envoy(wd, bench.envoy_config(edge_port, bench.free_port(), mw_port, [bench.wasm_filter("wsgiproxy", bench.WASM, dict(
        bench.APP_CONFIG, secret=secret, algorithm="hmac-sha256"))]), edge_port)
    try:
        bench.wrk(edge_port, 5)  # warm-up
        samples = [(0.0, bench.rss_mib(edge.pid), bench.rss_mib(mw.pid), 0, 0)]
        total = errors = 0
        began = time.time()
        while time.time() - began < args.minutes * 60:
            r = bench.wrk(edge_port, args.sample_seconds)
            total += r["requests"]
            errors += r["non2xx"]
            samples.append(((time.time() - began) / 60, bench.rss_mib(edge.pid), bench.rss_mib(mw.pid), total, errors))
            print(f"{samples[-1][0]:5.1f} min  edge {samples[-1][1]:6.1f} MiB  middleware {samples[-1][2]:6.1f} MiB  "
                  f"{total:,} requests  {errors} non-2xx", file=sys.stderr, flush=True)
    finally:
        edge.stop()
        mw.stop()
        echo.stop()
    first, last = samples[1], samples[-1]
    peak_edge = max(s[1] for s in samples[1:])
    peak_mw = max(s[2] for s in samples[1:])
    print(f"Soak: {args.minutes:g} min, two-Envoy chain (app role HMAC-SHA256 → middleware verifying), "
          f"{total:,} requests, {errors} non-2xx.")
    print(f"- edge Envoy RSS: {first[1]:.1f} MiB after the first {args.sample_seconds} s → {last[1]:.1f} MiB at the end (peak {peak_edge:.1f})")
    print(f"- middleware Envoy RSS: {first[2]:.1f} MiB → {last[2]:.1f} MiB (peak {peak_mw:.1f}); its replay memory holds "
          f"every nonce of the last {2 * 60 + 1} s (max_skew_seconds 60), bounded at 4096 × 512")
    # The replay memory fills for 2 × max_skew + 1 s and then stays at its size:
    # growth is judged from the first sample after that.
    settled = next((x for x in samples if x[0] * 60 >= 2 * 60 + 1 + args.sample_seconds), samples[-1])
    growth = max(last[1] - settled[1], last[2] - settled[2])
    print(f"- growth from minute {settled[0]:.1f} (replay memory at its steady size) to the end: "
          f"{growth:+.1f} MiB: {'flat' if growth < 2 else 'GROWING'}")


if __name__ == "__main__":
    main()
