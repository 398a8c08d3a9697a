#!/usr/bin/env python3
"""A late credentials URI on 127.0.0.1 for scripts/test-boot.

The first GET is answered only after --delay seconds (an upstream that is slow at boot);
later ones at once. Every answer is the same credential set, valid for an hour, with
recognisable values (STS.BOOTFAKE…, BOOT-SECRET-…, BOOT-TOKEN-… plus a random tail) so
the test can look for them in the container's journal. The values are written to
--secrets-file (mode 0600) for that search and never printed. `GET /rotate` (answered 204,
not counted) makes the later answers a new set with the same prefixes: a rotation.

Each answer is logged to --log as `answer <n> <CLOCK_MONOTONIC µs>` just before it is sent: the container shares
the host's monotonic clock, so systemd's *TimestampMonotonic values compare with it.
Prints the port on stdout once listening; SIGTERM stops it.
"""
import argparse
import json
import os
import secrets
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--delay", type=float, default=3.0)
    p.add_argument("--secrets-file", required=True)
    p.add_argument("--log", required=True)
    args = p.parse_args()

    def new_set():
        return {
            "Code": "Success",
            "AccessKeyId": "STS.BOOTFAKE" + secrets.token_hex(8).upper(),
            "AccessKeySecret": "BOOT-SECRET-" + secrets.token_hex(12),
            "SecurityToken": "BOOT-TOKEN-" + secrets.token_hex(24),
            "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
        }

    creds = new_set()
    fd = os.open(args.secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        for key in ("AccessKeyId", "AccessKeySecret", "SecurityToken"):
            f.write(creds[key] + "\n")
        f.write(creds["Expiration"] + "\n")
    body = [json.dumps(creds).encode()]
    lock = threading.Lock()
    count = [0]
    log = open(args.log, "a", buffering=1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/rotate":
                with lock:
                    body[0] = json.dumps(new_set()).encode()
                self.send_response(204)
                self.end_headers()
                return
            with lock:
                count[0] += 1
                n = count[0]
                answer = body[0]
            if n == 1:
                time.sleep(args.delay)
            # Logged before the answer leaves: no client can have it earlier.
            log.write(f"answer {n} {time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}\n")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(server.server_address[1], flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
