#!/usr/bin/env python3
"""Prints "GENERATION UPSTREAM_COUNT CREDFS_COUNT" for a credfs mount and the fake upstream,
taken while no refresh is in flight, so the two counts belong together.

usage: snapshot.py MOUNTPOINT UPSTREAM_PORT [UPSTREAM_PATH [SETTLE_SECONDS]]

UPSTREAM_PATH: count only the upstream requests for this path (the mount's --uri path;
default: all requests). SETTLE_SECONDS (default 0): how old the mount's `status` can be.
A `--kernel-cache` mount serves `status` from the page cache, a new version each second
with a 1 s entry timeout: up to 2 s old. The second read of `status` waits that long after
the count, so that it shows the state at or after the count.

A request the upstream has counted but credfs has not yet published would make the pair
disagree by one; a snapshot is accepted only when two reads of `status` around the count
show the same generation and neither is `refreshing` (retried for up to ~5 s, plus the
settle time per attempt, at most 40 s).
"""
import json
import sys
import time
import urllib.parse
import urllib.request

mnt, port = sys.argv[1], sys.argv[2]
path = sys.argv[3] if len(sys.argv) > 3 and sys.argv[3] else None
settle = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, no proxy
count_url = f"http://127.0.0.1:{port}/count" + (f"?path={urllib.parse.quote(path)}" if path else "")


def status():
    with open(f"{mnt}/status") as f:
        return json.load(f)


def count():
    with opener.open(count_url, timeout=5) as r:
        return json.load(r)["requests"]


deadline = time.monotonic() + 40
for attempt in range(250):
    a = status()
    c = count()
    time.sleep(settle)
    b = status()
    if a["generation"] == b["generation"] and "refreshing" not in (a["state"], b["state"]):
        print(b["generation"], c, b.get("upstreamRequests", 0))
        sys.exit(0)
    if time.monotonic() > deadline:
        break
    time.sleep(0.02)
sys.exit("no quiet moment to read the counts")
