# Sourced by scripts/test-boot and scripts/test-package: a minimal Debian root built with
# mmdebstrap from this machine's own apt sources and cached under .build, and a container
# booted from a copy of it with systemd-nspawn (docs/boot.md). Needs root.
# The caller defines log and die (one line to stderr; die also ends the script).

# Installs systemd-nspawn, mmdebstrap, python3 and gcc when missing.
container_tools() {
    local missing=()
    command -v systemd-nspawn > /dev/null || missing+=(systemd-container)
    command -v mmdebstrap > /dev/null || missing+=(mmdebstrap)
    command -v python3 > /dev/null || missing+=(python3)
    command -v gcc > /dev/null || missing+=(gcc libc6-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" > /dev/null
    fi
}

# The Debian package that holds PATH (a library), through merged-/usr aliases.
package_of() {
    local path=$1 real candidate
    real=$(readlink -f "$path")
    for candidate in "$path" "$real" "${path#/usr}" "${real#/usr}" "/usr$path"; do
        dpkg -S "$candidate" 2> /dev/null | head -1 | cut -d: -f1 && return 0
    done
    return 1
}

# The Debian packages of the libraries BINARY loads at exec (ldd), one a line.
library_packages() {
    local lib p
    while read -r lib; do
        p=$(package_of "$lib") || die "no Debian package holds $lib (needed by $1)"
        echo "$p"
    done < <(ldd "$1" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p')
}

# debian_root BASE PACKAGE…: a Debian root (this machine's suite, variant essential, plus
# the packages; docs, man pages and locales left out) at BASE, rebuilt only when missing
# or when the package list changed. Sets root_ms to the time the build took (0: cached).
# A cached root counts as present when it holds $debian_root_check (default: systemd).
debian_root() {
    local base=$1 suite stamp t sources f aptopts proxy
    shift
    local packages
    mapfile -t packages < <(printf '%s\n' "$@" | sort -u)
    # shellcheck disable=SC1091
    suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$suite" ] || die "no VERSION_CODENAME in /etc/os-release"
    stamp="suite=$suite packages=${packages[*]} layout=1"
    root_ms=0
    if [ "$(cat "$base.stamp" 2> /dev/null)" = "$stamp" ] && [ -e "$base/${debian_root_check:-lib/systemd/systemd}" ]; then
        return 0
    fi
    t=$(date +%s%N)
    # This machine's apt sources for Debian (files whose URIs end in /debian or
    # /debian-security), never a mirror named here.
    sources=()
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        grep -Eq '^[^#]*(deb|URIs:).*/debian(-security)?/?([[:space:]]|$)' "$f" && sources+=("$f")
    done
    [ ${#sources[@]} -gt 0 ] || die "no Debian apt source in /etc/apt/sources.list(.d): cannot build the root"
    aptopts=()
    proxy=
    eval "$(apt-config shell proxy Acquire::http::Proxy)"
    [ -n "$proxy" ] && aptopts+=(--aptopt="Acquire::http::Proxy \"$proxy\"")
    log "building the root in $base: $suite, ${packages[*]} (from ${sources[*]})"
    rm -rf "$base" "$base.tmp" "$base.stamp"
    mmdebstrap --quiet --variant=essential --include="$(IFS=,; echo "${packages[*]}")" \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-include=/usr/share/man/man8/credfs*' --dpkgopt='path-include=/usr/share/man/man8/mount.fuse.credfs*' \
        --dpkgopt='path-include=/usr/share/doc/credfs/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
        "${aptopts[@]}" "$suite" "$base.tmp" "${sources[@]}" >&2 || die "mmdebstrap failed"
    mv "$base.tmp" "$base"
    echo "$stamp" > "$base.stamp"
    root_ms=$((($(date +%s%N) - t) / 1000000))
    log "root built in $((root_ms / 1000)) s ($(du -sh "$base" | cut -f1))"
}

# container_boot ROOT NAME OUT CONSOLE TIMEOUT: boots ROOT (`systemd-nspawn -b`, /dev/fuse
# and CAP_SYS_ADMIN, OUT bind-mounted at /out, the host's network) and waits until it
# powers itself off or TIMEOUT seconds pass (then it is ended by force). Sets
# container_status (nspawn's exit status, or "timeout") and container_ms.
container_pid=
container_boot() {
    local root=$1 name=$2 out=$3 console=$4 timeout=$5 start deadline
    start=$(date +%s%N)
    container_start_us=$((start / 1000))
    systemd-nspawn --quiet --directory="$root" --boot --machine="$name" --register=no --keep-unit \
        --console=pipe --bind=/dev/fuse --capability=CAP_SYS_ADMIN --bind="$out:/out" \
        < /dev/null > "$console" 2>&1 &
    container_pid=$!
    deadline=$(($(date +%s) + timeout))
    while kill -0 "$container_pid" 2> /dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.2; done
    if kill -0 "$container_pid" 2> /dev/null; then
        container_end
        container_status=timeout
    else
        container_status=0
        wait "$container_pid" || container_status=$?
    fi
    container_pid=
    container_ms=$((($(date +%s%N) - start) / 1000000))
}

# Ends a container still running: SIGTERM to nspawn, and 10 s later SIGKILL to its init
# (which ends its whole PID namespace) and to nspawn.
container_end() {
    local child
    [ -n "$container_pid" ] && kill -0 "$container_pid" 2> /dev/null || return 0
    log "ending the container"
    kill -TERM "$container_pid" 2> /dev/null || true
    for _ in $(seq 100); do kill -0 "$container_pid" 2> /dev/null || break; sleep 0.1; done
    if kill -0 "$container_pid" 2> /dev/null; then
        for child in $(cat /proc/"$container_pid"/task/*/children 2> /dev/null); do
            kill -KILL "$child" 2> /dev/null || true
        done
        kill -KILL "$container_pid" 2> /dev/null || true
    fi
    wait "$container_pid" 2> /dev/null || true
}
