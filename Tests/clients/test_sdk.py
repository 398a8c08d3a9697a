"""The official Python SDK and oss2 against a real credfs mount (issue 5).

credfs runs on its demo provider with --serve-uri; nothing leaves 127.0.0.1.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse

import oss2
import pytest
from alibabacloud_credentials.provider import CLIProfileCredentialsProvider, URLCredentialsProvider

CREDFS = os.environ["CREDFS_BIN"]

# Real mounts need root and /dev/fuse: elsewhere the tests are skipped with that reason.
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/dev/fuse", os.R_OK | os.W_OK),
    reason="needs root and /dev/fuse to mount")


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


def read_credentials(mountpoint):
    try:
        with open(os.path.join(mountpoint, "credentials")) as f:
            return json.load(f)
    except OSError:
        return None


def is_mounted(path):
    with open("/proc/mounts") as f:
        return any(line.split()[1] == path for line in f)


@pytest.fixture
def credfs():
    """A credfs mount on the demo provider, with the loopback credentials URI."""
    workdir = tempfile.mkdtemp(prefix="credfs-sdk-")
    mountpoint = os.path.join(workdir, "mnt")
    port = free_port()
    log = open(os.path.join(workdir, "credfs.log"), "w")
    # The machine's credentials, proxies or service manager must not reach the daemon.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("ALIBABA_CLOUD_") and not k.lower().endswith("_proxy")
           and k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")}
    daemon = subprocess.Popen(
        [CREDFS, "mount", mountpoint, "-f", "--provider", "demo", "--demo-lifetime", "600",
         "--serve-uri", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=log, env=env)
    try:
        wait_until("the mount", lambda: read_credentials(mountpoint) is not None)
        yield mountpoint, f"http://127.0.0.1:{port}/", daemon
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=5)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        if is_mounted(mountpoint):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        log.close()


def test_uri_provider_returns_the_mounted_credentials_and_follows_rotation(credfs):
    mountpoint, uri, daemon = credfs
    provider = URLCredentialsProvider(uri=uri)
    first = read_credentials(mountpoint)
    got = provider.get_credentials()
    assert got.get_access_key_id() == first["AccessKeyId"]
    assert got.get_access_key_secret() == first["AccessKeySecret"]
    assert got.get_security_token() == first["SecurityToken"]

    daemon.send_signal(signal.SIGHUP)  # the demo provider hands out new credentials
    wait_until("a rotation", lambda: read_credentials(mountpoint)["AccessKeyId"] != first["AccessKeyId"])
    second = read_credentials(mountpoint)
    got = provider.get_credentials()
    assert got.get_access_key_id() == second["AccessKeyId"]
    assert got.get_security_token() == second["SecurityToken"]


def test_cli_profile_provider_reads_config_json(credfs):
    mountpoint, _, _ = credfs
    expected = read_credentials(mountpoint)
    provider = CLIProfileCredentialsProvider(profile_file=os.path.join(mountpoint, "config.json"))
    got = provider.get_credentials()
    assert got.get_access_key_id() == expected["AccessKeyId"]
    assert got.get_access_key_secret() == expected["AccessKeySecret"]
    assert got.get_security_token() == expected["SecurityToken"]


def test_oss2_signs_urls_with_the_served_credentials(credfs):
    mountpoint, uri, _ = credfs
    expected = read_credentials(mountpoint)
    auth = oss2.ProviderAuth(URLCredentialsProvider(uri=uri))
    bucket = oss2.Bucket(auth, "https://oss-cn-hangzhou.aliyuncs.com", "credfs-example")
    url = bucket.sign_url("GET", "object.txt", 60)  # signing only: no request is sent
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    assert query["OSSAccessKeyId"] == [expected["AccessKeyId"]]
    assert query["security-token"] == [expected["SecurityToken"]]
    assert query["Signature"][0]
