"""A key directory for the tests of `key_directories`: serves a JWKS at
/.well-known/http-message-signatures-directory as a sender would publish it, and
misbehaves on demand.

    key_directory.py PORT

POST /control with a JSON object changes what it serves (any of):
    "keys":          the JWKs to publish (a list of objects)
    "cache_control": the Cache-Control header ("" for none)
    "mode":          "ok", "error" (503), "garbage" (200, not JSON), "huge" (200,
                     2 MB of JSON), "reset" (closes the connection unanswered),
                     "slow" (answers after "delay" seconds)
    "delay":         seconds, for "slow"
GET /fetches answers how many times the directory was asked for.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIRECTORY = "/.well-known/http-message-signatures-directory"
state = {"keys": [], "cache_control": "max-age=1", "mode": "ok", "delay": 0, "fetches": 0}
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type="application/json", cache_control=""):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if cache_control:
            self.send_header("Cache-Control", cache_control)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the receiver gave up waiting (the "slow" mode)

    def do_GET(self):
        if self.path == "/fetches":
            with lock:
                return self.answer(200, json.dumps(state["fetches"]).encode())
        if self.path != DIRECTORY:
            return self.answer(404, b"{}")
        with lock:
            state["fetches"] += 1
            mode, delay = state["mode"], state["delay"]
            keys, cache_control = list(state["keys"]), state["cache_control"]
        if mode == "reset":
            self.close_connection = True
            self.connection.close()
            return
        if mode == "slow":
            time.sleep(delay)
        if mode == "error":
            return self.answer(503, b"unavailable")
        if mode == "garbage":
            return self.answer(200, b"<html>not a key set</html>", "text/html", cache_control)
        if mode == "huge":
            padding = [{"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "kid": "pad-%d" % i} for i in range(20000)]
            return self.answer(200, json.dumps({"keys": keys + padding}).encode(), cache_control=cache_control)
        body = json.dumps({"keys": keys}).encode()
        self.answer(200, body, "application/http-message-signatures-directory+json", cache_control)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        change = json.loads(self.rfile.read(length) or b"{}")
        with lock:
            state.update(change)
        self.answer(200, b"{}")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
