"""credfs --metrics scraped and parsed by the official Prometheus client's text parser
(issue 13), with every value checked against `status` across a rotation and a failure.

The upstream is a fake credentials URI on 127.0.0.1 whose clock (its Date header and the
Expiration it hands out) runs 2 minutes ahead, so the skew gauge has something to show.
"""

import calendar
import email.utils
import http.server
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

CREDFS = os.environ["CREDFS_BIN"]
CLOCK_AHEAD = 120


def wait_until(what, condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeURI:
    """Generation n: STS.PROM<n>…, secret-<n>-…, token-<n>-…; can be told to fail."""

    def __init__(self):
        self.generation = 1
        self.failing = False
        self.expiration = None
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def date_time_string(self, timestamp=None):
                return email.utils.formatdate(time.time() + CLOCK_AHEAD, usegmt=True)

            def do_GET(self):
                if fake.failing:
                    body = b'{"Code":"InternalError","Message":"fake upstream is failing"}'
                    self.send_response(500)
                else:
                    if fake.expiration is None:
                        fake.expiration = int(time.time()) + CLOCK_AHEAD + 3600
                    g = fake.generation
                    body = json.dumps({
                        "Code": "Success", "AccessKeyId": f"STS.PROM{g}xAAAAAAAAAAAA",
                        "AccessKeySecret": f"secret-{g}-ssssssssssssssssssss",
                        "SecurityToken": f"token-{g}-" + "t" * 60,
                        "Expiration": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(fake.expiration)),
                    }).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/credentials"

    def rotate(self):
        self.generation += 1
        self.expiration = None

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mounted():
    fake = FakeURI()
    workdir = tempfile.mkdtemp(prefix="credfs-metrics-")
    mountpoint = os.path.join(workdir, "mnt")
    port = free_port()
    log = open(os.path.join(workdir, "credfs.log"), "w")
    daemon = subprocess.Popen(
        [CREDFS, "mount", mountpoint, "-f", "--provider", "uri", "--uri", fake.url,
         "--metrics", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until("the mount", lambda: status(mountpoint) is not None and status(mountpoint)["generation"] == 1)
        yield mountpoint, f"http://127.0.0.1:{port}/metrics", daemon, fake
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        with open("/proc/mounts") as f:
            if any(line.split()[1] == mountpoint for line in f):
                subprocess.run(["umount", "-l", mountpoint], check=False)
        log.close()
        fake.stop()


def status(mountpoint):
    try:
        with open(os.path.join(mountpoint, "status")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def epoch(timestamp):
    return calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))


def check_agrees(text, samples, s):
    """Every metric that has a status counterpart shows the same value."""
    for state in ["pending", "fresh", "refreshing", "stale", "expired"]:
        assert value(samples, "credfs_state", state=state) == (1 if s["state"] == state else 0), state
    assert value(samples, "credfs_generation") == s["generation"]
    assert value(samples, "credfs_credentials_expiry_timestamp_seconds") == epoch(s["expiration"])
    assert abs(value(samples, "credfs_credentials_remaining_seconds") - s["secondsRemaining"]) <= 1
    assert value(samples, "credfs_upstream_requests_total", provider=s["provider"]) == s["upstreamRequests"]
    assert value(samples, "credfs_consecutive_failures") == s["consecutiveFailures"]
    assert value(samples, "credfs_clock_skew_seconds") == s["clockSkewSeconds"]
    assert value(samples, "credfs_build_info", version=s["version"]) == 1
    assert value(samples, "credfs_last_refresh_timestamp_seconds") == epoch(s["lastRefresh"])
    assert value(samples, "credfs_mounted_timestamp_seconds") == epoch(s["mountedAt"])
    assert value(samples, "credfs_restarts_total") == s.get("restarts", 0)
    finished = sum(value(samples, "credfs_refresh_total", result=r) for r in ["success", "unchanged", "failure"])
    in_flight = 1 if s["nextRefresh"] is None else 0  # a backoff retry may be under way
    assert finished == s["upstreamRequests"] - in_flight
    assert value(samples, "credfs_upstream_request_duration_seconds_count") == finished
    assert value(samples, "credfs_upstream_request_duration_seconds_bucket", le="+Inf") == finished
    assert value(samples, "credfs_pinned_groups") >= 0
    # No secret, and not even the masked AccessKeyId.
    for secret in ["secret-", "token-", "STS.PROM", s["accessKeyId"] or "STS."]:
        assert secret not in text


def quiet_pair(mountpoint, url):
    """A status read and a scrape with no refresh between them."""
    for _ in range(50):
        before = status(mountpoint)
        text, samples = scrape(url)
        after = status(mountpoint)
        if before["upstreamRequests"] == after["upstreamRequests"] and before["state"] == after["state"]:
            return text, samples, after
    raise AssertionError("status kept changing")


def test_scrape_agrees_with_status_across_a_rotation_and_a_failure(mounted):
    mountpoint, url, daemon, fake = mounted

    text, samples, s = quiet_pair(mountpoint, url)
    check_agrees(text, samples, s)
    assert s["state"] == "fresh" and s["generation"] == 1
    assert abs(s["clockSkewSeconds"] - CLOCK_AHEAD) <= 2
    assert value(samples, "credfs_refresh_total", result="success") == 1
    print("\nsample scrape (generation 1):\n" + text)

    fake.rotate()
    daemon.send_signal(signal.SIGHUP)
    wait_until("generation 2", lambda: status(mountpoint)["generation"] == 2)
    text, samples, s = quiet_pair(mountpoint, url)
    check_agrees(text, samples, s)
    assert value(samples, "credfs_refresh_total", result="success") == 2

    fake.failing = True
    daemon.send_signal(signal.SIGHUP)
    wait_until("a failed refresh", lambda: status(mountpoint)["consecutiveFailures"] >= 1)
    # A backoff retry may start at any moment: compare only a quiet pair.
    text, samples, s = quiet_pair(mountpoint, url)
    check_agrees(text, samples, s)
    assert s["state"] == "stale"
    assert value(samples, "credfs_state", state="stale") == 1
    assert value(samples, "credfs_refresh_total", result="failure") >= 1
    assert value(samples, "credfs_generation") == 2


def test_only_get_metrics_is_served(mounted):
    _, url, _, _ = mounted
    base = url.rsplit("/", 1)[0]
    for path, code in [("/", 404), ("/metrics/x", 404), ("/status", 404)]:
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(base + path, timeout=5)
        assert error.value.code == code
    request = urllib.request.Request(url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=5)
    assert error.value.code == 405
