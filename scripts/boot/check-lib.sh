# Sourced by the checks that run inside the test containers (scripts/boot/checks,
# scripts/package-test/checks): one line per check in $results (`PASS name: detail` or
# `FAIL name: detail`), measured numbers in $numbers (key=value), and polling.
out=/out
results=$out/results numbers=$out/numbers
pass() { echo "PASS $1: ${2:-}" >> "$results"; }
fail() { echo "FAIL $1: ${2:-}" >> "$results"; }
check() { local name=$1 detail=$2; shift 2; if "$@"; then pass "$name" "$detail"; else fail "$name" "$detail"; fi; }
number() { echo "$1=$2" >> "$numbers"; }
us() { local t=$EPOCHREALTIME; echo "${t/./}"; }
show() { systemctl show -p "$2" --value "$1"; }
# Polls CONDITION (a command) every 20 ms for at most SECONDS.
wait_for() {
    local seconds=$1; shift
    local deadline=$(( $(us) + seconds * 1000000 ))
    until "$@"; do
        (( $(us) > deadline )) && return 1
        read -t 0.02 -u 8 || true
    done
}
mkfifo -m 0600 /run/credfs-checks.fifo && exec 8<>/run/credfs-checks.fifo
# The boot has settled when no job but UNIT's own is left (is-system-running --wait would
# wait for UNIT too).
no_jobs_but() { ! systemctl list-jobs --no-legend --plain | grep -v "$1" | grep -q .; }
