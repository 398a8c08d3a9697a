# Sourced by scripts/: mounts the FUSE control filesystem at /sys/fs/fuse/connections when
# it is not there (systemd machines mount it with sys-fs-fuse-connections.mount; a machine
# whose PID 1 is not systemd has none), says so in one line, and unmounts it again when the
# sourcing script exits, so the machine is left as it was found. Tests read a connection's
# `waiting` count and write its `abort` switch there.
if ! grep -q ' /sys/fs/fuse/connections ' /proc/self/mountinfo; then
    if mount -t fusectl none /sys/fs/fuse/connections 2>/dev/null; then
        echo "credfs: mounted the FUSE control filesystem at /sys/fs/fuse/connections (unmounted again at exit)" >&2
        trap 'umount /sys/fs/fuse/connections 2>/dev/null || true' EXIT
    else
        echo "credfs: could not mount the FUSE control filesystem at /sys/fs/fuse/connections; the tests that need it skip" >&2
    fi
fi
