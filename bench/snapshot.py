#!/usr/bin/env python3
"""Prints "GENERATION UPSTREAM_COUNT CREDFS_COUNT" for a credfs mount and the fake upstream,
taken while no refresh is in flight, so the two counts belong together.

usage: snapshot.py MOUNTPOINT UPSTREAM_PORT

A request the upstream has counted but credfs has not yet published would make the pair
disagree by one; a snapshot is accepted only when two reads of `status` around the count
show the same generation and neither is `refreshing` (retried for up to ~5 s).
"""
import json
import sys
import time
import urllib.request

mnt, port = sys.argv[1], sys.argv[2]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, no proxy


def status():
    with open(f"{mnt}/status") as f:
        return json.load(f)


def count():
    with opener.open(f"http://127.0.0.1:{port}/count", timeout=5) as r:
        return json.load(r)["requests"]


for attempt in range(250):
    a = status()
    c = count()
    b = status()
    if a["generation"] == b["generation"] and "refreshing" not in (a["state"], b["state"]):
        print(b["generation"], c, b.get("upstreamRequests", 0))
        sys.exit(0)
    time.sleep(0.02)
sys.exit("no quiet moment to read the counts in 5 s")
