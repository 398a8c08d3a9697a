# Sourced by scripts/bench and scripts/load (bash, set -euo pipefail, cwd = repo root).
# Tools, builds, a fake upstream, credfs daemons, and a cleanup that stops all of them.
#
# Everything started here is recorded (pid or mount) and stopped by bench_cleanup, which
# the caller installs as its EXIT trap. Mounts live only under $bench_tmp (mktemp -d in
# /tmp); traffic goes only to 127.0.0.1.

. scripts/lib/build-release.sh

bench_log() { printf '%s\n' "$*" >&2; }
bench_die() { bench_log "error: $*"; exit 1; }

# ---- tools and builds ----------------------------------------------------------------

# fuse3, libfuse3-dev, pkg-config (scripts/lib/ensure-fuse.sh), gcc, curl, python3: each
# installed only when missing.
bench_ensure_tools() {
    [ "$(id -u)" -eq 0 ] || bench_die "run as root (FUSE mounts, tmpfs)"
    . scripts/lib/ensure-fuse.sh
    local missing=()
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    if [ ${#missing[@]} -gt 0 ]; then
        bench_log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Sets $bin to the shipping credfs (release, static Swift stdlib). CREDFS_BIN=path skips
# the build and uses that binary instead.
bench_build_credfs() {
    if [ -n "${CREDFS_BIN:-}" ]; then
        [ -x "$CREDFS_BIN" ] || bench_die "CREDFS_BIN=$CREDFS_BIN is not an executable"
        bin=$(readlink -f "$CREDFS_BIN")
        bench_log "using CREDFS_BIN=$bin (not building)"
        return
    fi
    bench_log "building credfs (release, --static-swift-stdlib)"
    build_release
    bin=$credfs_bin
    [ -x "$bin" ] || bench_die "no credfs at $bin"
}

# Builds bench/loadgen.c and bench/minfuse.c into .build/bench/.
bench_build_c() {
    bench_bin=$PWD/.build/bench
    mkdir -p "$bench_bin"
    gcc -O2 -Wall -Wextra -o "$bench_bin/loadgen" bench/loadgen.c -pthread
    # shellcheck disable=SC2046
    gcc -O2 -Wall -Wextra $(pkg-config --cflags fuse3) -o "$bench_bin/minfuse" bench/minfuse.c \
        $(pkg-config --libs fuse3) -pthread
}

# ---- processes, mounts, cleanup ------------------------------------------------------

bench_pids=()       # everything started in the background, stopped at exit
bench_daemon_pids=() # credfs daemons: SIGTERM first, they unmount themselves

bench_make_tmp() {
    bench_tmp=$(mktemp -d /tmp/credfs-bench.XXXXXX)
}

# Mount points under $bench_tmp that are still mounted (deepest first).
bench_mounts_left() {
    [ -n "${bench_tmp:-}" ] || return 0
    local _dev mnt _rest
    while read -r _dev mnt _rest; do
        case "$mnt" in "$bench_tmp"/*) printf '%s\n' "$mnt" ;; esac
    done </proc/self/mounts | sort -r
}

# Waits (bounded) for a pid to exit; returns 1 if it is still there.
bench_wait_gone() { # PID SECONDS
    local pid=$1 i
    for ((i = 0; i < $2 * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.05
    done
    ! kill -0 "$pid" 2>/dev/null
}

bench_cleanup() {
    local rc=$? pid mnt
    set +e
    trap - EXIT INT TERM
    for pid in "${bench_daemon_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null && bench_wait_gone "$pid" 3
    done
    for pid in "${bench_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${bench_pids[@]}" "${bench_daemon_pids[@]}"; do
        bench_wait_gone "$pid" 3 || kill -KILL "$pid" 2>/dev/null
    done
    while read -r mnt; do
        [ -n "$mnt" ] && umount -l "$mnt" 2>/dev/null
    done < <(bench_mounts_left)
    if [ -n "${bench_tmp:-}" ] && [ -d "$bench_tmp" ]; then
        if [ -z "$(bench_mounts_left)" ]; then
            rm -rf --one-file-system "$bench_tmp"
        else
            bench_log "left $bench_tmp in place: something is still mounted under it"
        fi
    fi
    exit "$rc"
}

# The pids of processes with MOUNTPOINT as one of their arguments (a background-mode
# credfs daemon, which `credfs mount` started and did not wait for). Builtins only.
bench_pids_for() { # MOUNTPOINT
    local p a
    local -a args
    for p in /proc/[0-9]*; do
        [ "${p#/proc/}" = "$$" ] && continue
        mapfile -d '' args <"$p/cmdline" 2>/dev/null || continue
        for a in "${args[@]}"; do
            if [ "$a" = "$1" ]; then
                printf '%s\n' "${p#/proc/}"
                break
            fi
        done
    done
}

bench_is_mounted() { # PATH
    local _dev mnt _rest
    while read -r _dev mnt _rest; do [ "$mnt" = "$1" ] && return 0; done </proc/self/mounts
    return 1
}

# ---- the fake upstream ---------------------------------------------------------------

# Starts bench/fake_upstream.py on 127.0.0.1; sets $up_pid, $up_port, $up_url.
bench_start_upstream() { # PERIOD LIFETIME
    local portfile=$bench_tmp/upstream.port i
    python3 bench/fake_upstream.py --period "$1" --lifetime "$2" --token-bytes "${BENCH_TOKEN_BYTES:-900}" \
        --port-file "$portfile" >/dev/null 2>>"$bench_tmp/upstream.log" &
    up_pid=$!
    bench_pids+=("$up_pid")
    for ((i = 0; i < 200; i++)); do
        [ -s "$portfile" ] && break
        kill -0 "$up_pid" 2>/dev/null || bench_die "fake upstream exited: $(cat "$bench_tmp/upstream.log")"
        sleep 0.05
    done
    [ -s "$portfile" ] || bench_die "fake upstream did not start"
    up_port=$(cat "$portfile")
    up_url=http://127.0.0.1:$up_port/credentials
}

# Sets $snap_gen, $snap_count (fake upstream) and $snap_own (credfs's upstreamRequests),
# read together while no refresh is in flight. UPSTREAM_PATH counts only the requests for
# the mount's --uri path (default: all); SETTLE is how old its status can be (bench/snapshot.py).
bench_snapshot() { # MOUNTPOINT [UPSTREAM_PATH [SETTLE]]
    read -r snap_gen snap_count snap_own < <(python3 bench/snapshot.py "$1" "$up_port" "${2:-}" "${3:-0}") ||
        bench_die "cannot read generation and upstream count"
    [ -n "${snap_gen:-}" ] || bench_die "cannot read generation and upstream count"
}

# A free TCP port on 127.0.0.1 (free when asked; fine for a loopback benchmark).
bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# ---- credfs ----------------------------------------------------------------------------

# One field of the mount's status file (read directly: no process of credfs).
bench_status() { # MOUNTPOINT KEY
    python3 -c 'import json,sys; v=json.load(open(sys.argv[1]+"/status")).get(sys.argv[2]); print("null" if v is None else v)' "$1" "$2"
}

# Starts `credfs mount MOUNTPOINT -f ARGS…` in the background and waits (bounded) until
# it serves a first generation; sets $cred_pid.
bench_start_credfs() { # MOUNTPOINT ARGS…
    local mnt=$1 i gen
    shift
    mkdir -p "$mnt"
    "$bin" mount "$mnt" -f "$@" 2>>"$bench_tmp/credfs.log" &
    cred_pid=$!
    bench_daemon_pids+=("$cred_pid")
    for ((i = 0; i < 300; i++)); do
        kill -0 "$cred_pid" 2>/dev/null || bench_die "credfs exited: $(tail -5 "$bench_tmp/credfs.log")"
        if bench_is_mounted "$mnt"; then
            gen=$(bench_status "$mnt" generation 2>/dev/null || echo 0)
            [ "${gen:-0}" != null ] && [ "${gen:-0}" -ge 1 ] && return 0
        fi
        sleep 0.1
    done
    bench_die "credfs did not serve credentials within 30 s: $(tail -5 "$bench_tmp/credfs.log")"
}

# SIGTERM a credfs started by bench_start_credfs and wait (bounded) for it to go.
bench_stop_credfs() { # PID
    kill -TERM "$1" 2>/dev/null || return 0
    bench_wait_gone "$1" 5 || bench_log "credfs $1 still running 5 s after SIGTERM"
}

# ---- loadgen output ----------------------------------------------------------------------

# The value of KEY in a loadgen result line.
bench_kv() { # LINE KEY
    local word
    for word in $1; do
        case "$word" in "$2="*) printf '%s\n' "${word#*=}"; return 0 ;; esac
    done
    printf '\n'
}

# Pss of a pid (smaps_rollup), in kB.
bench_pss_kb() { # PID
    local key value _unit
    while read -r key value _unit; do
        [ "$key" = "Pss:" ] && { printf '%s\n' "$value"; return 0; }
    done <"/proc/$1/smaps_rollup"
    printf '0\n'
}

# VmRSS / VmHWM of a pid, in kB.
bench_rss_kb() { # PID FIELD
    local key value _unit
    while read -r key value _unit; do
        [ "$key" = "$2:" ] && { printf '%s\n' "$value"; return 0; }
    done <"/proc/$1/status"
    printf '0\n'
}
