# Sourced by scripts/: installs fuse3, libfuse3-dev, pkg-config, libcurl4-openssl-dev and
# libssl-dev (HTTP and HMAC-SHA1: Package.swift's CCurl and CCrypto) when missing.
if ! command -v fusermount3 >/dev/null || ! pkg-config --exists fuse3 libcurl libcrypto 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "credfs: build dependencies are missing; run as root (or: sudo apt-get install fuse3 libfuse3-dev pkg-config libcurl4-openssl-dev libssl-dev)" >&2
        exit 1
    fi
    echo "credfs: installing fuse3, libfuse3-dev, pkg-config, libcurl4-openssl-dev and libssl-dev" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fuse3 libfuse3-dev pkg-config libcurl4-openssl-dev \
        libssl-dev ca-certificates >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    echo "credfs: /dev/fuse is missing (load the fuse module, or run the container with --device /dev/fuse)" >&2
    exit 1
fi
