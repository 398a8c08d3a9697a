#!/usr/bin/env python3
"""Turns the samples scripts/bench collected into the Markdown report (stdout).

usage: report.py DATA EXTRA
DATA lines:  ROW MODE RUN key=value…      (a loadgen result; MODE: 1 or 2 readers, or
                                         1 reader pinned: "same" CPU as the daemons, "other")
             mount I EXEC_TO_MOUNT_US EXEC_TO_FIRST_READ_US
             storm key=value…            (loadgen --verify-json over the storm, default mode)
             storm_kc key=value…         (the same on the --kernel-cache mount)
EXTRA lines: key=value
"""
import statistics
import sys

ROWS = [
    ("tmpfs", "tmpfs file, same bytes as `credentials`"),
    ("floor", "C FUSE floor (`bench/minfuse`, same bytes)"),
    ("credentials", "credfs `credentials`"),
    ("kc_credentials", "credfs `--kernel-cache` `credentials`"),
    ("token", "credfs `token` (reader's process group pinned to the current generation)"),
    ("kc_token", "credfs `--kernel-cache` `token` (no pins in this mode)"),
    ("token_old", "credfs `token` (group pinned to the previous generation, after a rotation: "
                  "looked up on every open, it gets that generation's own inode)"),
    ("curl", "`curl -s` of credfs's local credentials URI"),
]


NUMBERS = ["1", "2", "3", "3k", "4", "4k", "4b", "5"]


def kv(words):
    out = {}
    for w in words:
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:,.2f} ms"
    if ns >= 1e4:
        return f"{ns / 1e3:,.0f} µs"
    return f"{ns / 1e3:,.1f} µs"


def fmt_ratio(x):
    if x >= 100:
        return f"{x:,.0f}×"
    if x >= 10:
        return f"{x:.1f}×"
    return f"{x:.2f}×"


def main():
    data_path, extra_path = sys.argv[1:3]
    extra = {}
    with open(extra_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                extra[k] = v

    samples = {}  # (row, readers) -> list of result dicts
    mounts = []
    floors = []  # (exec of /bin/true, exec of credfs --version) in ms, same loop as mounts
    storms = {}  # "storm" (default mode), "storm_kc" -> loadgen --verify-json result
    with open(data_path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "mount":
                mounts.append((int(parts[2]) / 1000, int(parts[3]) / 1000))
            elif parts[0] == "execfloor":
                floors.append((int(parts[2]) / 1000, int(parts[3]) / 1000))
            elif parts[0] in ("storm", "storm_kc"):
                storms[parts[0]] = kv(parts[1:])
            else:
                row, mode, run = parts[0], parts[1], int(parts[2])
                samples.setdefault((row, mode), {})[run] = kv(parts[3:])

    def cell(row, mode):
        runs = samples.get((row, mode), {})
        if not runs:
            return None
        rs = list(runs.values())
        meds = [float(r["median_ns"]) for r in rs]
        return {
            "median": statistics.median(meds),
            "runs": {k: float(r["median_ns"]) for k, r in sorted(runs.items())},
            "ops_per_s": statistics.median(float(r["ops_per_s"]) for r in rs),
            "errors": sum(int(r["errors"]) for r in rs),
            "ops": sum(int(r["ops"]) for r in rs),
            "first_errno": next((r["first_errno"] for r in rs if r.get("first_errno", "none") != "none"), None),
        }

    MODES = ("1", "2", "same", "other")
    cells = {(row, m): cell(row, m) for row, _ in ROWS for m in MODES}

    def paired(a, b, mode):
        """Median over runs of a's median ÷ b's median in the same run; with min and max."""
        ca, cb = cells[(a, mode)], cells[(b, mode)]
        if not ca or not cb:
            return None
        rs = [ca["runs"][k] / cb["runs"][k] for k in ca["runs"] if k in cb["runs"] and cb["runs"][k] > 0]
        if not rs:
            return None
        return statistics.median(rs), min(rs), max(rs)

    def mode_names(modes):
        return [{"1": "1 reader", "2": "2 readers", "same": "one CPU", "other": "two CPUs"}[m] for m in modes]

    out = []
    w = out.append
    w("# credfs benchmark (`scripts/bench`)")
    w("")
    w(f"{extra.get('date', '?')} · machine: nproc {extra.get('nproc', '?')}, kernel {extra.get('kernel', '?')}, "
      f"{extra.get('cpu', '?')}, load average {extra.get('load_before', '?')} before / "
      f"{extra.get('load_after', '?')} after · credfs {extra.get('credfs', '?')} "
      f"({extra.get('binary_mb', '?')} MB binary)")
    w("")
    w(f"`credentials` is {extra.get('credentials_bytes', '?')} bytes, `token` {extra.get('token_bytes', '?')} bytes "
      f"(fake local upstream, rotation every {extra.get('rotate_seconds', '?')} s throughout, two credfs "
      "mounts on it: the default mode, and `--kernel-cache` for rows 3k and 4k). One op is "
      "open + read to EOF + close (curl: one `curl -sf` process and HTTP GET). Each cell: the median over "
      f"the runs ({extra.get('config', '')}) of loadgen's median batch ns/op (batches of 200 ops; curl: "
      "all its ops in one batch); with 2 readers, the time per op each reader sees. Each ratio is the "
      "median over the runs of the ratio within one run (rows interleaved), so it pairs measurements "
      "taken seconds apart: absolute times drift between VMs and minutes.")
    w("")
    def row_table(modes, heads):
        head = "| # | what |"
        rule = "|---|---|"
        for h in heads:
            head += f" {h} | ÷ tmpfs | ÷ FUSE floor |"
            rule += "---:|---:|---:|"
        if modes == ("1", "2"):
            head += " ops/s, 2 readers | errors |"
            rule += "---:|---:|"
        w(head)
        w(rule)
        for i, (row, label) in zip(NUMBERS, ROWS):
            if all(cells[(row, m)] is None for m in modes):
                continue
            cols = [str(i), label]
            errors = 0
            first_errno = None
            for m in modes:
                c = cells[(row, m)]
                if not c:
                    cols += ["–", "–", "–"]
                    continue
                errors += c["errors"]
                first_errno = first_errno or c["first_errno"]
                cols.append(fmt_ns(c["median"]))
                for base in ("tmpfs", "floor"):
                    r = paired(row, base, m)
                    cols.append(fmt_ratio(r[0]) if r else "–")
            if modes == ("1", "2"):
                c2 = cells[(row, "2")]
                cols.append(f"{c2['ops_per_s']:,.0f}" if c2 else "–")
                cols.append(f"{errors}" + (f" ({first_errno})" if first_errno else ""))
            w("| " + " | ".join(cols) + " |")
        w("")

    row_table(("1", "2"), ("1 reader", "2 readers"))

    def side_by_side():
        """Rows 3/3k and 4/4k next to each other, every reader count and placement measured."""
        w("Both modes side by side (same run, rows interleaved): each file of the default mount next "
          "to the same file of the `--kernel-cache` mount.")
        w("")
        w("| file | readers | default | ÷ tmpfs | ÷ FUSE floor | `--kernel-cache` | ÷ tmpfs | ÷ FUSE floor | "
          "kernel-cache ÷ default |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for f in ("credentials", "token"):
            for m in MODES:
                d, k = cells[(f, m)], cells[("kc_" + f, m)]
                if not d or not k:
                    continue
                cols = [f"`{f}`", mode_names([m])[0]]
                for row, c in ((f, d), ("kc_" + f, k)):
                    cols.append(fmt_ns(c["median"]) if c else "–")
                    for base in ("tmpfs", "floor"):
                        r = paired(row, base, m)
                        cols.append(fmt_ratio(r[0]) if r else "–")
                r = paired("kc_" + f, f, m)
                cols.append(fmt_ratio(r[0]) if r else "–")
                w("| " + " | ".join(cols) + " |")
        w("")

    if any(cells[("kc_credentials", m)] for m in MODES):
        side_by_side()
    if any(cells[(r, "same")] for r, _ in ROWS):
        w("The same, 1 reader, with the CPU placement fixed (taskset): the reader on CPU 0 and every "
          "thread of both daemons on CPU 0 (\"one CPU\"), then on CPU 1 (\"two CPUs\": each request "
          "is a cross-CPU wake-up). Unpinned runs land anywhere between the two.")
        w("")
        row_table(("same", "other"), ("one CPU", "two CPUs"))

    # Targets.
    def show(a, b, modes):
        parts = []
        for m in modes:
            r = paired(a, b, m)
            parts.append("–" if r is None else f"{fmt_ratio(r[0])} ({fmt_ratio(r[1])}–{fmt_ratio(r[2])})")
        return " / ".join(parts)

    def verdict(a, b, modes, ok):
        rs = [paired(a, b, m) for m in modes]
        oks = [r is not None and ok(r[0]) for r in rs]
        if all(oks):
            return "**yes**"
        if not any(oks):
            return "**no**"
        return "**partly** (" + ", ".join(f"{n}: {'yes' if o else 'no'}" for n, o in zip(mode_names(modes), oks)) + ")"

    def met(ok):
        return "**yes**" if ok else "**no**"

    modes = [m for m in MODES if cells[("floor", m)]]
    names = " / ".join(mode_names(modes))
    w(f"| target (issues 6 and 12) | measured: median of per-run ratios (min–max); {names} | met |")
    w("|---|---|---|")
    w(f"| `credentials` ≤ 0.6× the C FUSE floor | {show('credentials', 'floor', modes)} | "
      f"{verdict('credentials', 'floor', modes, lambda x: x <= 0.6)} |")
    w(f"| `credentials` ÷ tmpfs file (report) | {show('credentials', 'tmpfs', modes)} | – |")
    if cells[("kc_credentials", "1")]:
        w(f"| `--kernel-cache` `credentials` ≤ 3× the tmpfs file (issue 12; 1 / 2 readers) | "
          f"{show('kc_credentials', 'tmpfs', ('1', '2'))} | "
          f"{verdict('kc_credentials', 'tmpfs', ('1', '2'), lambda x: x <= 3)} |")
        w(f"| (`--kernel-cache` `credentials` ÷ C FUSE floor, report) | {show('kc_credentials', 'floor', modes)} | – |")
        w(f"| (`--kernel-cache` `token` ÷ tmpfs file, report; 1 / 2 readers) | "
          f"{show('kc_token', 'tmpfs', ('1', '2'))} | – |")
    if "kc_open_requests_before" in extra:
        before, after = extra["kc_open_requests_before"], extra.get("kc_open_requests_after", "?")
        end = extra.get("kc_open_requests_end", "?")
        w(f"| no OPEN reaches the `--kernel-cache` daemon: its `openRequests` (status) before / after "
          f"rows 3k and 4k | {before} / {after} across {int(extra.get('kc_ops', 0)):,} open + read + close "
          f"of its files (after its storm too: {end}) | {met(before == after == end)} |")
    w(f"| field file (`token`) ≤ 1.0× the C FUSE floor | {show('token', 'floor', modes)} | "
      f"{verdict('token', 'floor', modes, lambda x: x <= 1.0)} |")
    w(f"| field file, group pinned to the previous generation, ≤ 1.0× the C FUSE floor | "
      f"{show('token_old', 'floor', ('1', '2'))} | {verdict('token_old', 'floor', ('1', '2'), lambda x: x <= 1.0)} |")
    w(f"| `credentials` ≥ 100× faster than `curl` of the local URI (curl ÷ credentials; 1 / 2 readers) | "
      f"{show('curl', 'credentials', ('1', '2'))} | {verdict('curl', 'credentials', ('1', '2'), lambda x: x >= 100)} |")
    w(f"| (`token` vs `curl`, report: curl ÷ token) | {show('curl', 'token', ('1', '2'))} | – |")
    stale = [r for (row, m), c in samples.items() if row == "token_old" for r in c.values()]
    if stale:
        held = sum(r.get("still_pinned") == "1" for r in stale)
        w(f"| (row 4b check: the group still read its pinned generation at the end of the run) | "
          f"{held} of {len(stale)} runs | – |")
    for name, mode in (("storm", "default mode"), ("storm_kc", "`--kernel-cache`")):
        storm = storms.get(name)
        if storm is None:
            continue
        rot = int(extra.get(f"{name}_rotations", 0))
        req = int(extra.get(f"{name}_upstream_requests", 0))
        per = req / rot if rot else float("inf")
        bad = sum(int(storm.get(k, 0)) for k in ("torn", "mixed", "expired", "stale"))
        w(f"| {mode}: exactly 1 upstream request per rotation during the storm "
          f"({extra.get('storm_readers')} readers, {extra.get('storm_seconds')} s, rotation every "
          f"{extra.get('rotate_seconds')} s) | {req} requests (credfs counted {extra.get(f'{name}_credfs_counted')}) "
          f"for {rot} rotations = {per:.2f} per rotation | {met(rot > 0 and req == rot)} |")
        w(f"| {mode}: storm reads all complete, one generation, unexpired, never older than an earlier read | "
          f"{int(storm['ops']):,} reads ({float(storm['ops_per_s']):,.0f}/s), errors {storm['errors']} "
          f"(first: {storm.get('first_errno')}), torn {storm['torn']}, mixed {storm['mixed']}, "
          f"expired {storm['expired']}, stale {storm['stale']}; generations {storm.get('gen_min')}–"
          f"{storm.get('gen_max')}; p50 batch {fmt_ns(float(storm['median_ns']))}/op "
          f"per reader, p90 {fmt_ns(float(storm['p90_ns']))} | {met(bad == 0 and int(storm['errors']) == 0)} |")
    rss = int(extra.get("rss_kb", 0))
    samples_kb = [int(x) for x in extra.get("rss_samples_kb", "").split(",") if x]
    rss_med = statistics.median(samples_kb) if samples_kb else rss
    split = ""
    if "rss_anon_kb" in extra:
        split = (f" (anonymous {int(extra['rss_anon_kb']) / 1024:.1f}, file-backed "
                 f"{int(extra['rss_file_kb']) / 1024:.1f}; Pss {int(extra['pss_kb']) / 1024:.1f} MiB; "
                 f"{extra.get('threads', '?')} threads)")
    over = (f"; over the next rotation period (10 samples) median {rss_med / 1024:.1f} MiB, "
            f"min {min(samples_kb) / 1024:.1f}, max {max(samples_kb) / 1024:.1f}" if samples_kb else "")
    w(f"| daemon RSS ≤ 10 MiB after the storm (issue 11; median over one rotation period) | "
      f"VmRSS right after {rss / 1024:.1f} MiB{split}{over} (peak VmHWM "
      f"{int(extra.get('hwm_kb', 0)) / 1024:.1f} MiB; a fresh mount "
      f"{int(extra.get('fresh_rss_kb', 0)) / 1024:.1f} MiB"
      + (f", its supervisor {int(extra['fresh_supervisor_rss_kb']) / 1024:.1f} MiB"
         if "fresh_supervisor_rss_kb" in extra else "")
      + (f"; the `--kernel-cache` daemon after its storm {int(extra['kc_rss_kb']) / 1024:.1f} MiB"
         if "kc_rss_kb" in extra else "")
      + f") | {met(0 < rss_med <= 10 * 1024)} |")
    if mounts:
        m = statistics.median(x for x, _ in mounts)
        f = statistics.median(y for _, y in mounts)
        floor = ""
        if floors:
            floor = (f"; in the same loop, exec of `/bin/true` {statistics.median(x for x, _ in floors):.1f} ms, "
                     f"of `credfs --version` {statistics.median(y for _, y in floors):.1f} ms (medians)")
        w(f"| exec → live mount ≤ 20 ms, local upstream (issue 11; `credfs mount` without -f, "
          f"{len(mounts)} times) | "
          f"median {m:.1f} ms (min {min(x for x, _ in mounts):.1f}, max {max(x for x, _ in mounts):.1f}); "
          f"exec → first `credentials` read done {f:.1f} ms{floor}; load average "
          f"{extra.get('load_before', '?')} before the run, {extra.get('load_after', '?')} after | {met(m <= 20)} |")
    w("")

    # Floor request count and run-to-run spread.
    fr = extra.get("floor_requests", "")
    fops = int(extra.get("floor_ops", 0) or 0)
    if fr and fops:
        counts = kv(fr.split(","))
        per_op = {k: int(v) / fops for k, v in counts.items() if int(v)}
        total = sum(int(counts.get(k, 0)) for k in ("lookup", "getattr", "open", "read", "release")) / fops
        detail = ", ".join(f"{k} {v:.2f}" for k, v in per_op.items() if v >= 0.005)
        w(f"FUSE requests per op on the floor: {total:.2f} ({detail}; release is not waited for). "
          f"credfs log lines with error/critical: {extra.get('errors_in_log', '?')}; "
          f"state at the end: {extra.get('state', '?')}"
          + (f" (`--kernel-cache` mount: {extra['kc_state']})" if "kc_state" in extra else "") + ".")
        w("")
    w("Run-to-run spread (each run's median batch, per op):")
    w("")
    w("| row | readers | runs |")
    w("|---|---|---|")
    for row, _ in ROWS:
        for m in MODES:
            c = cells[(row, m)]
            if c:
                w(f"| {row} | {mode_names([m])[0]} | " + ", ".join(fmt_ns(x) for x in c["runs"].values()) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
