import CredentialCore
import FoundationEssentials
import Glibc
import Logging
import Posix

/// Whether a SIGTERM from systemd is half of `systemctl restart`. systemd keeps a unit's
/// file descriptor store while a restart job is queued for it, so a restart can be a
/// takeover (hand over, exit 0, the next start adopts the connection) instead of an
/// unmount and a new mount. A `systemctl stop` (or a shutdown) still unmounts.
enum SystemdRestart {
    /// Whether this process is a systemd service's main process with a descriptor store
    /// (the supervisor does not pass `INVOCATION_ID` on) and systemd has a restart job
    /// running for its unit, with the reason (for the log). Any doubt (no unit, no
    /// `systemctl`, no answer within a second) answers false: the safe side is the unmount.
    static func check() -> (restarting: Bool, reason: String) {
        guard getenv("INVOCATION_ID") != nil else { return (false, "not started by systemd") }
        guard FDStore.isAvailable else { return (false, "no descriptor store") }
        guard let cgroup = try? SmallFile.read("/proc/self/cgroup", what: "cgroup file", limit: 4096),
            let unit = unitName(cgroup: String(decoding: cgroup, as: UTF8.self))
        else { return (false, "no service unit in /proc/self/cgroup") }
        switch listJobs() {
        case .failure(let why): return (false, "systemctl list-jobs: \(why)")
        case .success(let jobs):
            return hasRestartJob(jobs, unit: unit)
                ? (true, "restart job for \(unit)") : (false, "no restart job for \(unit)")
        }
    }

    /// The service unit a `/proc/self/cgroup` text names (cgroup v2's `0::` line, or v1's
    /// `name=systemd` hierarchy): its last path component ending in `.service`.
    static func unitName(cgroup: String) -> String? {
        for line in cgroup.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3, fields[0] == "0" || fields[1] == "name=systemd" else { continue }
            if let unit = fields[2].split(separator: "/").last(where: { $0.hasSuffix(".service") }) {
                return String(unit)
            }
        }
        return nil
    }

    /// Whether `systemctl list-jobs --no-legend` output has a restart job for `unit`
    /// (columns: id, unit, type, state). During a restart's stop the job's type is
    /// `restart`; it becomes `start` once the stop is done.
    static func hasRestartJob(_ output: String, unit: String) -> Bool {
        output.split(separator: "\n").contains { line in
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            return fields.count >= 3 && fields[1] == unit && (fields[2] == "restart" || fields[2] == "try-restart")
        }
    }

    /// `systemctl list-jobs --no-legend --no-pager`, or why not (1 s at most).
    static func listJobs() -> Result<String, ListJobsError> {
        let candidates: [String] = ["/usr/bin/systemctl", "/bin/systemctl"]
        guard let systemctl = candidates.first(where: { path in access(path, X_OK) == 0 }) else {
            return .failure(ListJobsError("no systemctl"))
        }
        guard let pipe = Spawn.pipe() else { return .failure(ListJobsError("no pipe")) }
        var spawn = Spawn(executable: systemctl, arguments: ["systemctl", "list-jobs", "--no-legend", "--no-pager"])
        spawn.stdout = .descriptor(pipe.write)
        spawn.stderr = .null
        spawn.environment = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_COLORS=0", "LC_ALL=C"]
        let started = spawn.start()
        close(pipe.write)
        defer { close(pipe.read) }
        let pid: pid_t
        switch started {
        case .success(let child): pid = child
        case .failure(let error): return .failure(ListJobsError("cannot start: \(error)"))
        }
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = ContinuousClock.now + .seconds(1)
        while output.count < 1 << 20 {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { break }
            var poller = pollfd(fd: pipe.read, events: Int16(POLLIN), revents: 0)
            let (seconds, attoseconds) = left.components
            let milliseconds = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            let ready = poll(&poller, 1, milliseconds)
            if ready < 0, errno == EINTR { continue }
            guard ready > 0 else { break }
            let n = read(pipe.read, &buffer, buffer.count)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            output += buffer.prefix(n)
        }
        // Its output has ended; it exits a moment later (it is killed at the deadline).
        while !Spawn.hasExited(pid), ContinuousClock.now < deadline { usleep(1000) }
        let late = !Spawn.hasExited(pid)
        if late { kill(pid, SIGKILL) }
        let status = ExitStatus(Spawn.wait(pid))
        guard !late, status.signal == 0, status.code == 0 else {
            return .failure(ListJobsError(late ? "no answer within 1 s" : "ended with \(status.raw)"))
        }
        return .success(String(decoding: output, as: UTF8.self))
    }

    struct ListJobsError: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}

extension SystemdRestart {
    /// ``check()`` for a SIGTERM, logged: a handover when systemd restarts this service.
    static func during(_ logger: Logger) -> Bool {
        let (restarting, reason) = check()
        if restarting {
            logger.notice("SIGTERM of systemctl restart: handing over", metadata: ["why": "\(reason)"])
        } else if getenv("INVOCATION_ID") != nil {
            logger.info("SIGTERM: unmounting", metadata: ["why": "\(reason)"])
        }
        return restarting
    }
}
