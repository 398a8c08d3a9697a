#!/usr/bin/env python3
"""A fake Alibaba Cloud credentials URI on 127.0.0.1 for scripts/bench and scripts/load.

GET /count        -> {"requests": N, "generation": G}  (not counted)
GET /count?path=P -> the same, N counting only requests for path P (one client per path:
                     scripts/bench runs two credfs mounts on one upstream)
GET anything else -> {"Code":"Success","AccessKeyId":…,"AccessKeySecret":…,
                      "SecurityToken":…,"Expiration":…}  (counted, in total and per path)

The credentials rotate on a clock, not per request: generation G is served during
[t0 + (G-1)*period, t0 + G*period) and expires `lifetime` seconds after its period began
(t0 is the start time rounded down to a whole second, so Expirations are whole seconds).
A client that asks twice within one period gets the same answer twice, so "upstream
requests per rotation" measured against the client's generation count shows any request
that was not needed.

Every value carries its generation, zero-padded so the sizes never change:
AccessKeyId `STS.BENCH<gen>x…`, AccessKeySecret `secret-<gen>-…`, SecurityToken
`token-<gen>-…`; bench/loadgen --verify reads them back.

Usage: fake_upstream.py [--period S] [--lifetime S] [--token-bytes N] [--port-file FILE]
Prints the port on stdout (one line) once listening; SIGTERM/SIGINT stop it.
"""
import argparse
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

AK_LEN = 29  # like a real STS AccessKeyId (STS. + 25)
SECRET_LEN = 44


def padded(prefix: str, generation: int, sep: str, fill: str, length: int) -> str:
    head = f"{prefix}{generation:06d}{sep}"
    return head + fill * max(length - len(head), 0)


class Upstream:
    def __init__(self, period: float, lifetime: float, token_bytes: int):
        if period <= 0 or lifetime <= 0:
            raise ValueError("period and lifetime must be positive")
        self.period = period
        self.lifetime = lifetime
        self.token_bytes = token_bytes
        self.t0 = math.floor(time.time())
        self.lock = threading.Lock()
        self.requests = 0
        self.by_path = {}

    def generation(self, now: float) -> int:
        return int((now - self.t0) // self.period) + 1

    def answer(self, path: str) -> bytes:
        now = time.time()
        with self.lock:
            self.requests += 1
            self.by_path[path] = self.by_path.get(path, 0) + 1
        g = self.generation(now)
        start = self.t0 + (g - 1) * self.period
        expires = math.floor(start + self.lifetime)
        body = {
            "Code": "Success",
            "AccessKeyId": padded("STS.BENCH", g, "x", "A", AK_LEN),
            "AccessKeySecret": padded("secret-", g, "-", "s", SECRET_LEN),
            "SecurityToken": padded("token-", g, "-", "t", self.token_bytes),
            "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def count(self, path=None) -> bytes:
        with self.lock:
            n = self.requests if path is None else self.by_path.get(path, 0)
        return json.dumps({"requests": n, "generation": self.generation(time.time())}).encode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--period", type=float, default=5.0, help="seconds between generations (default 5)")
    p.add_argument("--lifetime", type=float, default=None,
                   help="seconds each generation is valid from the start of its period (default 3 x period + 2)")
    p.add_argument("--token-bytes", type=int, default=900, help="SecurityToken length (default 900)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    p.add_argument("--port-file", help="also write the port to this file")
    args = p.parse_args()
    lifetime = args.lifetime if args.lifetime is not None else 3 * args.period + 2
    upstream = Upstream(args.period, lifetime, args.token_bytes)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            path, _, query = self.path.partition("?")
            if path == "/count":
                body = upstream.count(urllib.parse.parse_qs(query).get("path", [None])[0])
            else:
                body = upstream.answer(path)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    port = server.server_address[1]

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(f"{port}\n")
        os.replace(args.port_file + ".tmp", args.port_file)
    print(port, flush=True)
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
