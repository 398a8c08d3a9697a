import ArgumentParser
import CFuse3
import FoundationEssentials
import FuseBridge
import Glibc
import Posix

/// `credfs supervise` (hidden): what `credfs mount` without `-f` runs. It starts the server
/// (`credfs mount -f`), keeps the descriptors the server stores (the `/dev/fuse` connection,
/// the INIT recording, the latest state: a tiny systemd-style fd store on `$NOTIFY_SOCKET`)
/// and, when the server dies, starts the next one on the same connection at once. It does
/// no network and no parsing of credentials; it reads small notify datagrams and waits.
struct Supervise: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervise", abstract: "Keep a mount's connection across server processes.",
        shouldDisplay: false)

    @Option var mountpoint: String
    @Option var readyFd: Int32 = -1
    @Argument(parsing: .postTerminator) var mount: [String] = []

    func run() throws {
        let code = Supervisor(mountpoint: mountpoint, mountArguments: mount, readyFd: readyFd).run()
        Glibc.exit(code)
    }
}

extension Supervise {
    /// The argv `mount` spawns (`Supervisor.arguments`), read without the argument parser:
    /// the supervisor is on the path from `credfs mount` to a live mount, and parsing costs
    /// more than its whole start. Anything else goes to the argument parser.
    static func fastPath(_ arguments: [String]) -> Supervise? {
        guard arguments.count >= 6, arguments[0] == "supervise", arguments[1] == "--mountpoint",
            arguments[3] == "--ready-fd", let fd = Int32(arguments[4]), arguments[5] == "--"
        else { return nil }
        var command = Supervise()
        command.mountpoint = arguments[2]
        command.readyFd = fd
        command.mount = Array(arguments.dropFirst(6))
        return command
    }
}

/// The write end of the supervisor's signal pipe (set before the handlers are installed).
nonisolated(unsafe) var supervisorSignalPipe: Int32 = -1

final class Supervisor {
    /// The argv that `mount` spawns.
    static func arguments(mountpoint: String, readyFd: Int32, mount: [String]) -> [String] {
        ["credfs", "supervise", "--mountpoint", mountpoint, "--ready-fd", String(readyFd), "--"] + mount
    }

    /// The supervisor's socket (abstract namespace), named after the mount point: `upgrade`
    /// finds it from the path, and a second supervisor for the same path cannot bind it.
    static func socketName(for mountpoint: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in mountpoint.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x100_0000_01b3
        }
        let hex = String(hash, radix: 16)
        return "@credfs-supervisor-" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex
    }

    struct Child {
        let pid: pid_t
        let pidfd: Int32
        let started: ContinuousClock.Instant
    }

    let mountpoint: String
    let mountArguments: [String]
    var readyFd: Int32
    let socketName: String
    var socketFd: Int32 = -1
    var signalRead: Int32 = -1
    /// The binary that serves (the supervisor's own until an upgrade succeeds).
    var binary = "/proc/self/exe"
    var store: [(name: String, fd: Int32)] = []
    var server: Child?
    var candidate: Child?
    /// Wait statuses of children that exited.
    var exits: [pid_t: Int32] = [:]
    /// Successors that said they serve (`SERVING=1`).
    var serving: Set<pid_t> = []
    var stopping = false
    var terminating = false
    var handingOver = false
    var quickDeaths = 0
    /// Servers whose main thread is gone while the process cannot end: a thread of theirs
    /// is held in the kernel (an entry invalidation waiting for a lookup that only a
    /// successor can answer), so their pidfd never fires. Since when each was seen so.
    var leaderGone: [pid_t: Double] = [:]
    /// Such servers after they were counted as dead: reaped once they end.
    var lingering: Set<pid_t> = []
    var pendingUpgrade: (binary: String, reply: Int32)?
    /// When to give back the pages that starting or the last message used (`ResidentPages`).
    var trimAt: Double?

    init(mountpoint: String, mountArguments: [String], readyFd: Int32) {
        self.mountpoint = mountpoint
        self.mountArguments = mountArguments
        self.readyFd = readyFd
        socketName = Self.socketName(for: mountpoint)
    }

    func log(_ message: String) {
        let line = "credfs-supervisor: \(message)\n"
        _ = line.utf8CString.withUnsafeBufferPointer { write(2, $0.baseAddress, $0.count - 1) }
    }

    func run() -> Int32 {
        _ = credfs_set_not_dumpable()
        // Successors start through /bin/sh (for LISTEN_PID): name the binary by its path.
        binary = Self.ownExecutable() ?? binary
        socketFd = credfs_bind_datagram(socketName)
        guard socketFd >= 0 else {
            let reason =
                errno == EADDRINUSE
                ? "a live credfs mount is already at \(mountpoint)"
                : "cannot create the supervisor socket: \(MountPoint.describe(errno))"
            report("error: \(reason)")
            return 1
        }
        var pipeFds: [Int32] = [-1, -1]
        guard pipe(&pipeFds) == 0 else {
            report("error: pipe: \(MountPoint.describe(errno))")
            return 1
        }
        for fd in pipeFds {
            _ = credfs_set_cloexec(fd, 1)
            _ = credfs_set_nonblock(fd)
        }
        signalRead = pipeFds[0]
        supervisorSignalPipe = pipeFds[1]
        // A process spawned from a Swift worker thread inherits its blocked signals.
        var handled = sigset_t()
        sigemptyset(&handled)
        for sig in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&handled, sig) }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        for sig in [SIGTERM, SIGINT, SIGHUP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                var byte = UInt8(truncatingIfNeeded: sig)
                _ = write(supervisorSignalPipe, &byte, 1)
            }
            sigaction(sig, &action, nil)
        }

        guard let first = spawnServer(binary: binary, first: true) else {
            report("error: cannot start the server: \(MountPoint.describe(errno))")
            return 1
        }
        server = first
        trimAt = Self.now() + 1
        if readyFd >= 0 {
            close(readyFd)
            readyFd = -1
        }
        return loop()
    }

    /// Tells `credfs mount` what happened (only before the first server took the pipe).
    func report(_ line: String) {
        guard readyFd >= 0 else { return }
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { write(readyFd, $0.baseAddress, $0.count) }
        close(readyFd)
        readyFd = -1
    }

    func loop() -> Int32 {
        var forwarded = false
        var restartAt: Double?
        while true {
            var timeout: Int32 = -1
            for at in [restartAt, trimAt].compactMap({ $0 }) {
                let wait = Int32(max(0, min(5000, (at - Self.now()) * 1000)))
                timeout = timeout < 0 ? wait : min(timeout, wait)
            }
            pump(timeoutMs: timeout)
            if let at = trimAt, Self.now() >= at {
                trimAt = nil
                ResidentPages.releaseCleanFilePages()
            }
            if terminating, !forwarded {
                forwarded = true
                if let server {
                    kill(server.pid, SIGTERM)
                } else {
                    _ = FuseFileSystem.detach(mountpoint)
                    return 0
                }
            }
            if let current = server, let status = exits.removeValue(forKey: current.pid) {
                close(current.pidfd)
                server = nil
                let cleanExit = Self.exitedNormally(status) && Self.exitCode(status) == 0
                if stopping || terminating || (cleanExit && !handingOver) {
                    if terminating { _ = FuseFileSystem.detach(mountpoint) }
                    return 0
                }
                handingOver = false
                guard store.contains(where: { $0.name == Hitless.fuseName }) else {
                    log("the server exited before the mount was up (\(Self.describe(status)))")
                    return Self.exitedNormally(status) ? max(1, Self.exitCode(status)) : 1
                }
                // Back off only from servers that die before they serve (a crash loop),
                // never from a server that was killed while serving.
                quickDeaths = serving.contains(current.pid) ? 0 : quickDeaths + 1
                serving.remove(current.pid)
                log("the server died (\(Self.describe(status))); starting its successor")
                if quickDeaths > 2 {
                    restartAt = Self.now() + min(5, 0.1 * Double(1 << min(quickDeaths - 2, 6)))
                } else {
                    restartAt = Self.now()
                }
            }
            if server == nil, let at = restartAt, Self.now() >= at {
                restartAt = nil
                if let next = spawnServer(binary: binary, first: false) {
                    server = next
                } else {
                    log("cannot start a successor: \(MountPoint.describe(errno)); retrying")
                    quickDeaths += 1
                    restartAt = Self.now() + 1
                }
            }
            if let upgrade = pendingUpgrade, server != nil, !terminating {
                pendingUpgrade = nil
                let result = performUpgrade(to: upgrade.binary)
                let bytes = Array((result + "\n").utf8)
                _ = bytes.withUnsafeBytes { write(upgrade.reply, $0.baseAddress, $0.count) }
                close(upgrade.reply)
                if server == nil, restartAt == nil { restartAt = Self.now() + 0.1 }
            }
        }
    }

    // MARK: upgrade

    /// Replaces the server by `newBinary` on the same connection. Returns `ok` or `error: …`.
    func performUpgrade(to newBinary: String) -> String {
        // 1. Does it run at all? The serving process is not touched if not.
        guard let check = spawn(newBinary, ["credfs", "--version"], fds: [], environment: [:], listen: false)
        else {
            return "error: \(newBinary) does not run: \(MountPoint.describe(errno))"
        }
        candidate = check
        pump(until: { self.exits[check.pid] != nil }, seconds: 5)
        candidate = nil
        close(check.pidfd)
        guard let checked = exits.removeValue(forKey: check.pid) else {
            kill(check.pid, SIGKILL)
            lingering.insert(check.pid)  // reaped when it ends: never a blocking wait
            return "error: \(newBinary) did not answer --version within 5 s"
        }
        guard Self.exitedNormally(checked), Self.exitCode(checked) == 0 else {
            return "error: \(newBinary) does not run (--version: \(Self.describe(checked)))"
        }
        // 2. The old server stops reading, answers what it read, stores its state, exits.
        guard let old = server else { return "error: no server is running" }
        handingOver = true
        kill(old.pid, SIGUSR2)
        pump(until: { self.exits[old.pid] != nil }, seconds: 5)
        if exits[old.pid] == nil {
            log("the server did not hand over within 5 s; killing it")
            kill(old.pid, SIGKILL)
            pump(until: { self.exits[old.pid] != nil }, seconds: 5)
        }
        exits.removeValue(forKey: old.pid)
        close(old.pidfd)
        server = nil
        handingOver = false
        stopping = false
        if terminating { return "error: stopping" }
        // 3. The new binary takes over; if it does not, the previous binary does.
        guard let next = spawnServer(binary: newBinary, first: false) else {
            let reason = MountPoint.describe(errno)
            server = spawnServer(binary: binary, first: false)
            return "error: cannot start \(newBinary): \(reason); the previous binary serves again"
        }
        server = next
        pump(until: { self.serving.contains(next.pid) || self.exits[next.pid] != nil }, seconds: 10)
        if serving.contains(next.pid), exits[next.pid] == nil {
            binary = newBinary
            return "ok"
        }
        let why: String
        if let status = exits.removeValue(forKey: next.pid) {
            why = "it exited (\(Self.describe(status)))"
        } else {
            why = "it did not serve within 10 s"
            kill(next.pid, SIGKILL)
            lingering.insert(next.pid)  // reaped when it ends: never a blocking wait
        }
        close(next.pidfd)
        server = spawnServer(binary: binary, first: false)
        return "error: \(newBinary) did not take over: \(why); the previous binary serves again"
    }

    // MARK: events

    /// Handles socket messages, signals and child exits until `condition` holds or
    /// `seconds` pass.
    func pump(until condition: () -> Bool, seconds: Double) {
        let deadline = Self.now() + seconds
        while !condition() {
            let left = deadline - Self.now()
            if left <= 0 { return }
            pump(timeoutMs: Int32(min(left * 1000 + 1, 60_000)))
        }
    }

    /// One round: waits up to `timeoutMs` (-1: forever) for something to happen.
    func pump(timeoutMs: Int32) {
        var polls = [
            pollfd(fd: socketFd, events: Int16(POLLIN), revents: 0),
            pollfd(fd: signalRead, events: Int16(POLLIN), revents: 0),
        ]
        let children = [server, candidate].compactMap { $0 }
        for child in children { polls.append(pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0)) }
        // While a child lives, look at it now and then: a main thread that died is not
        // reported by its pidfd while another of its threads is held in the kernel.
        var timeout = timeoutMs
        if !children.isEmpty || !lingering.isEmpty {
            let check: Int32 = leaderGone.isEmpty ? 250 : 20
            timeout = timeout < 0 ? check : min(timeout, check)
        }
        let n = poll(&polls, nfds_t(polls.count), timeout)
        if n > 0, polls[0].revents != 0 { drainSocket() }
        if n > 0, polls[1].revents != 0 {
            var byte: UInt8 = 0
            while read(signalRead, &byte, 1) == 1 {
                if Int32(byte) == SIGTERM || Int32(byte) == SIGINT { terminating = true }
            }
        }
        for child in children {
            var status: Int32 = 0
            if waitpid(child.pid, &status, WNOHANG) == child.pid {
                exits[child.pid] = status
                leaderGone[child.pid] = nil
            } else if Self.mainThreadGone(child.pid) {
                let since = leaderGone[child.pid] ?? Self.now()
                leaderGone[child.pid] = since
                // A process that is merely exiting ends within this grace.
                if Self.now() - since >= 0.1 {
                    log(
                        "the server's main thread is gone but the process cannot end (a thread is held in the kernel); counting it as dead"
                    )
                    exits[child.pid] = SIGKILL
                    leaderGone[child.pid] = nil
                    lingering.insert(child.pid)
                }
            }
        }
        for pid in lingering {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { lingering.remove(pid) }
        }
    }

    /// Whether `pid`'s main thread has exited (`Z` in `/proc/PID/stat`) while the process
    /// has not been reaped.
    static func mainThreadGone(_ pid: pid_t) -> Bool {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return false }
        // "PID (COMM) STATE …": COMM may hold anything, so the state follows the last ')'.
        let text = buffer.prefix(n)
        guard let paren = text.lastIndex(of: UInt8(ascii: ")")), paren + 2 < text.endIndex else { return false }
        return text[paren + 2] == UInt8(ascii: "Z")
    }

    func drainSocket() {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 16)
        while true {
            var count: Int32 = 0
            var pid: pid_t = 0
            var uid: uid_t = 0
            let n = buffer.withUnsafeMutableBytes { raw in
                credfs_recv_fds(socketFd, raw.baseAddress, raw.count, &fds, 16, &count, &pid, &uid)
            }
            if n < 0 { return }
            let received = Array(fds.prefix(Int(max(0, count))))
            let text = String(decoding: buffer.prefix(n), as: UTF8.self)
            handle(message: text, fds: received, pid: pid, uid: uid)
        }
    }

    func handle(message: String, fds: [Int32], pid: pid_t, uid: uid_t) {
        var unused = fds
        defer { unused.forEach { close($0) } }
        guard uid == getuid() || uid == 0 else { return }
        if trimAt == nil { trimAt = Self.now() + 1 }
        var fields: [String: String] = [:]
        for line in message.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        if fields["UPGRADE"] == "1", let binary = fields["BINARY"], let reply = unused.first {
            unused.removeFirst()
            if pendingUpgrade != nil || handingOver {
                let bytes = Array("error: an upgrade is already in progress\n".utf8)
                _ = bytes.withUnsafeBytes { write(reply, $0.baseAddress, $0.count) }
                close(reply)
            } else {
                pendingUpgrade = (binary, reply)
            }
            return
        }
        // The rest comes from the server (or the successor being started) only.
        guard pid == server?.pid || pid == candidate?.pid else { return }
        if fields["FDSTOREREMOVE"] == "1", let name = fields["FDNAME"] {
            store.removeAll { entry in
                guard entry.name == name else { return false }
                close(entry.fd)
                return true
            }
        }
        if fields["FDSTORE"] == "1", !unused.isEmpty {
            let name = fields["FDNAME"] ?? "stored"
            for fd in unused { store.append((name, fd)) }
            unused = []
            // The first server serves once it stored its connection.
            if name == Hitless.fuseName { serving.insert(pid) }
        }
        if fields["STOPPING"] == "1", !handingOver { stopping = true }
        if fields["SERVING"] == "1" { serving.insert(pid) }
    }

    // MARK: processes

    /// Starts a server: the first with the readiness pipe, successors with the store.
    func spawnServer(binary: String, first: Bool) -> Child? {
        var environment = ["NOTIFY_SOCKET": socketName, "FDSTORE": "64"]
        if first {
            return spawn(
                binary,
                ["credfs", "mount"] + mountArguments + ["--foreground", "--ready-fd", "3"],
                fds: readyFd >= 0 ? [readyFd] : [], environment: environment, listen: false)
        }
        environment["LISTEN_FDS"] = String(store.count)
        environment["LISTEN_FDNAMES"] = store.map(\.name).joined(separator: ":")
        return spawn(
            binary, ["credfs", "mount"] + mountArguments + ["--foreground"], fds: store.map(\.fd),
            environment: environment, listen: !store.isEmpty)
    }

    /// Starts `binary` with `fds` at 3, 4, …; with `listen`, through `/bin/sh` so
    /// that `LISTEN_PID` is the server's own pid (`exec` keeps it).
    func spawn(_ binary: String, _ argv: [String], fds: [Int32], environment: [String: String], listen: Bool)
        -> Child?
    {
        // Out of the way of 3…3+n first, so that the dup2s below cannot clobber each other.
        let high = fds.map { fcntl($0, F_DUPFD_CLOEXEC, 100) }
        defer { high.forEach { if $0 >= 0 { close($0) } } }
        guard !high.contains(where: { $0 < 0 }) else { return nil }
        var env: [String] = []
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            let key = text.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
            // The server is not a systemd service's main process, even when this is.
            if environment[key] == nil, !key.hasPrefix("LISTEN_"), key != "INVOCATION_ID" { env.append(text) }
            index += 1
        }
        for (key, value) in environment { env.append("\(key)=\(value)") }

        let path: String
        var args: [String]
        if listen {
            path = "/bin/sh"
            args = ["sh", "-c", "LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"", binary] + argv.dropFirst()
        } else {
            path = binary
            args = argv
        }
        // The one way credfs starts a process: no signal blocked, default handlers.
        var spawn = Spawn(executable: path, arguments: args)
        spawn.environment = env
        spawn.stdin = .null
        spawn.stdout = .null
        spawn.descriptors = high.enumerated().map { (child: Int32(3 + $0.offset), parent: $0.element) }
        let pid: pid_t
        switch spawn.start() {
        case .success(let child): pid = child
        case .failure(let error):
            errno = error.code
            return nil
        }
        let pidfd = credfs_pidfd_open(pid)
        guard pidfd >= 0 else {
            kill(pid, SIGKILL)
            lingering.insert(pid)  // reaped when it ends: never a blocking wait
            return nil
        }
        return Child(pid: pid, pidfd: pidfd, started: .now)
    }

    // MARK: helpers

    static func ownExecutable() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let path = String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return path.hasSuffix(" (deleted)") ? nil : path
    }

    /// Seconds on `ContinuousClock` since the first call (for deadlines and backoff only).
    static func now() -> Double {
        let elapsed = origin.duration(to: .now).components
        return Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
    }
    private static let origin = ContinuousClock.now
    static func exitedNormally(_ status: Int32) -> Bool { status & 0x7f == 0 }
    static func exitCode(_ status: Int32) -> Int32 { (status >> 8) & 0xff }

    static func describe(_ status: Int32) -> String {
        if exitedNormally(status) { return "exit status \(exitCode(status))" }
        return "signal \(status & 0x7f)"
    }
}
