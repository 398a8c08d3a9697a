import ArgumentParser
import CPosix
import CPosixIPC
import FoundationEssentials
import FuseBridge
import Glibc
import Posix

/// `credfs supervise` (hidden): what `credfs mount` without `-f` runs. It starts the server
/// (`credfs mount -f`), keeps the descriptors the server stores (the `/dev/fuse` connection,
/// the INIT recording, the latest state: a tiny systemd-style fd store) and, when the server
/// dies, starts the next one on the same connection at once. It does no network and no
/// parsing of credentials; it reads short messages from its own servers and waits.
///
/// Its trust boundaries (docs/security.md, "The control plane"): each server gets a private
/// channel (a socketpair) that no other process can reach; `credfs upgrade` connects to a
/// socket in a directory only root (or the mount's owner) can enter and is checked with
/// SO_PEERCRED before anything is read; servers run from a descriptor of the binary opened
/// at start (or one an authenticated caller handed over), never from a path; the mount's
/// arguments come in a memfd at fd 4, never in argv.
struct Supervise: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "supervise", abstract: "Keep a mount's connection across server processes.",
        shouldDisplay: false)

    @Option var mountpoint: String

    func run() throws {
        let code = Supervisor(mountpoint: mountpoint).run()
        Glibc.exit(code)
    }
}

extension Supervise {
    /// The argv `mount` spawns (`Supervisor.arguments`), read without the argument parser:
    /// the supervisor is on the path from `credfs mount` to a live mount, and parsing costs
    /// more than its whole start. Anything else goes to the argument parser.
    static func fastPath(_ arguments: [String]) -> Supervise? {
        guard arguments.count == 3, arguments[0] == "supervise", arguments[1] == "--mountpoint" else { return nil }
        var command = Supervise()
        command.mountpoint = arguments[2]
        return command
    }
}

/// The write end of the supervisor's signal pipe (set before the handlers are installed).
nonisolated(unsafe) var supervisorSignalPipe: Int32 = -1

final class Supervisor {
    /// The argv that `mount` spawns: the mount point only. The readiness pipe is fd 3, the
    /// arguments (``ArgumentsFile``) fd 4.
    static func arguments(mountpoint: String) -> [String] {
        ["credfs", "supervise", "--mountpoint", mountpoint]
    }
    static let readyDescriptor: Int32 = 3
    static let argumentsDescriptor: Int32 = 4

    /// Its deadlines (docs/hitless.md, "credfs upgrade"). The tests shorten them with the
    /// hidden `CREDFS_SUPERVISOR_TEST=version=S,handover=S,serving=S,log=PATH`, which also
    /// copies the supervisor's log lines to PATH.
    struct Limits {
        var version = 5.0
        var handover = 5.0
        var serving = 10.0
        var log: String?
        /// `standby=0`: no standby (every successor starts cold, as before there was one).
        var standby = true

        static let variable = "CREDFS_SUPERVISOR_TEST"

        init(_ text: String? = nil) {
            for item in (text ?? "").split(separator: ",") {
                let pair = item.split(separator: "=", maxSplits: 1).map(String.init)
                guard pair.count == 2 else { continue }
                let seconds = Double(pair[1]).flatMap { $0.isFinite && $0 > 0 && $0 <= 600 ? $0 : nil }
                switch pair[0] {
                case "version": version = seconds ?? version
                case "handover": handover = seconds ?? handover
                case "serving": serving = seconds ?? serving
                case "log": log = pair[1]
                case "standby": standby = pair[1] != "0"
                default: continue
                }
            }
        }
    }

    struct Child {
        let pid: pid_t
        let pidfd: Int32
    }

    let mountpoint: String
    var readyFd: Int32 = -1
    var argumentsFd: Int32 = -1
    /// The binary that serves: the supervisor's own until an upgrade succeeds.
    var binary: Int32 = -1
    var control: Int32 = -1
    var controlPath: String?
    var signalRead: Int32 = -1
    var limits = Limits()
    var logFd: Int32 = 2
    var store: [(name: String, fd: Int32)] = []
    var server: Child?
    /// The `--version` check of an upgrade.
    var candidate: Child?
    /// The next server, started ahead of need from ``binary`` (or an upgrade's binary): its
    /// options read, waiting on its channel; it gets the store only once the server is gone
    /// (docs/hitless.md, "The standby"). Those in ``standbyReady`` said `STANDBY=1`.
    var standby: Child?
    var standbyReady: Set<pid_t> = []
    /// An upgrade's binary as a standby, until it adopts (or is given up).
    var upgradeStandby: Child?
    /// Standbys in a row that ended before they were ready: none is started after three
    /// (until a server serves again), so a broken binary costs no crash loop of standbys.
    var standbyFailures = 0
    /// Each server's end of its private channel, until the server is no longer current.
    var channels: [pid_t: Int32] = [:]
    /// Wait statuses of children that exited.
    var exits: [pid_t: Int32] = [:]
    /// Servers that serve: they stored their connection or said `SERVING=1`.
    var serving: Set<pid_t> = []
    var stopping = false
    var terminating = false
    var hangup = false
    var handingOver = false
    var quickDeaths = 0
    /// Servers whose main thread is gone while the process cannot end: a thread of theirs
    /// is held in the kernel (an entry invalidation waiting for a lookup that only a
    /// successor can answer), so their pidfd never fires. Since when each was seen so.
    var leaderGone: [pid_t: Double] = [:]
    /// Such servers after they were counted as dead: reaped once they end.
    var lingering: Set<pid_t> = []
    var pendingUpgrade: (binary: Int32, name: String, reply: Int32)?
    /// When to give back the pages that starting or the last message used (`ResidentPages`).
    var trimAt: Double?

    init(mountpoint: String) {
        self.mountpoint = mountpoint
    }

    func log(_ message: String) {
        let bytes = Array("credfs-supervisor: \(message)\n".utf8)
        Output.write(bytes, to: logFd)
        if logFd != 2 { Output.write(bytes, to: 2) }
    }

    func run() -> Int32 {
        // The file this process runs, whatever its path names now (or if it was deleted).
        binary = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)
        _ = credfs_set_not_dumpable()
        // No caller's directory kept busy, and nothing found relative to one.
        _ = chdir("/")
        limits = Limits(getenv(Limits.variable).map { String(cString: $0) })
        unsetenv(Limits.variable)
        if let path = limits.log {
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
            if fd >= 0 { logFd = fd }
        }
        for fd in [Self.readyDescriptor, Self.argumentsDescriptor] where fcntl(fd, F_GETFD) >= 0 {
            _ = credfs_set_cloexec(fd, 1)
        }
        if fcntl(Self.readyDescriptor, F_GETFD) >= 0 { readyFd = Self.readyDescriptor }
        guard ArgumentsFile.read(Self.argumentsDescriptor) != nil else {
            report("error: the supervisor was started without the mount's arguments")
            return 1
        }
        argumentsFd = Self.argumentsDescriptor
        guard binary >= 0 else {
            report("error: cannot open the credfs binary: \(Errno.last)")
            return 1
        }
        var pipeFds: [Int32] = [-1, -1]
        guard credfs_pipe_cloexec(&pipeFds) == 0 else {
            report("error: pipe: \(Errno.last)")
            return 1
        }
        for fd in pipeFds { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
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
        openControlSocket()
        defer { if let controlPath { unlink(controlPath) } }

        guard let first = spawnServer(binary: binary, first: true) else {
            report("error: cannot start the server: \(Errno.last)")
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

    /// The socket `credfs upgrade` connects to (``ControlSocket``). Without it the mount
    /// works; only `upgrade` cannot reach it, and says so.
    func openControlSocket() {
        let uid = getuid()
        if let problem = ControlSocket.prepareDirectory(uid: uid) {
            log("no upgrade socket: \(problem)")
            return
        }
        let path = ControlSocket.path(supervisor: getpid(), uid: uid)
        ControlSocket.removeStale(uid: uid)
        // A socket left by a supervisor that had this pid before (killed, never cleaned up).
        unlink(path)
        control = credfs_listen_seqpacket(path)
        if control < 0 {
            log("no upgrade socket: cannot listen at \(path): \(Errno.last)")
        } else {
            controlPath = path
        }
    }

    /// Tells `credfs mount` what happened (only before the first server took the pipe).
    func report(_ line: String) {
        guard readyFd >= 0 else {
            log(line)
            return
        }
        Output.write(Array((line + "\n").utf8), to: readyFd)
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
            if let waiting = standby, let status = exits.removeValue(forKey: waiting.pid) {
                retire(waiting)
                standby = nil
                if !standbyReady.contains(waiting.pid) { standbyFailures += 1 }
                standbyReady.remove(waiting.pid)
                log("the standby ended (\(Self.describe(status)))")
            }
            if let at = trimAt, Self.now() >= at {
                trimAt = nil
                ResidentPages.releaseCleanFilePages()
            }
            if terminating, !forwarded {
                forwarded = true
                dropStandby()
                if let server {
                    kill(server.pid, SIGTERM)
                } else {
                    _ = FuseFileSystem.detach(mountpoint)
                    return 0
                }
            }
            if hangup {
                hangup = false
                if let server {
                    log("SIGHUP: passed on to the server (pid \(server.pid)): it refreshes now")
                    kill(server.pid, SIGHUP)
                }
            }
            if let current = server, let status = exits.removeValue(forKey: current.pid) {
                retire(current)
                server = nil
                let cleanExit = Self.exitedNormally(status) && Self.exitCode(status) == 0
                if stopping || terminating || (cleanExit && !handingOver) {
                    dropStandby()
                    if terminating { _ = FuseFileSystem.detach(mountpoint) }
                    return 0
                }
                handingOver = false
                guard store.contains(where: { $0.name == StoreProtocol.fuse }) else {
                    dropStandby()
                    log("the server exited before the mount was up (\(Self.describe(status)))")
                    return Self.exitedNormally(status) ? max(1, Self.exitCode(status)) : 1
                }
                // Back off only from servers that die before they serve (a crash loop),
                // never from a server that was killed while serving.
                quickDeaths = serving.contains(current.pid) ? 0 : quickDeaths + 1
                serving.remove(current.pid)
                if quickDeaths > 2 {
                    let delay = min(5, 0.1 * Double(1 << min(quickDeaths - 2, 6)))
                    log(
                        "the server died (\(Self.describe(status))); \(quickDeaths) in a row died before serving: starting its successor in \(delay) s"
                    )
                    restartAt = Self.now() + delay
                } else if adoptByStandby() {
                    log("the server died (\(Self.describe(status))); its standby takes over now")
                } else {
                    log("the server died (\(Self.describe(status))); starting its successor now")
                    restartAt = Self.now()
                }
            }
            if server == nil, let at = restartAt, Self.now() >= at {
                restartAt = nil
                if let next = spawnServer(binary: binary, first: false) {
                    server = next
                } else {
                    log("cannot start a successor: \(Errno.last); retrying")
                    quickDeaths += 1
                    restartAt = Self.now() + 1
                }
            }
            startStandbyIfDue()
            if let upgrade = pendingUpgrade, server != nil, !terminating {
                pendingUpgrade = nil
                let result = performUpgrade(to: upgrade.binary, name: upgrade.name)
                log("upgrade: \(result)")
                ControlSocket.reply(upgrade.reply, result)
                Discard.close([upgrade.reply])
                if server == nil, restartAt == nil { restartAt = Self.now() + 0.1 }
            }
        }
    }

    // MARK: the standby

    /// A standby is started from the serving binary once the server serves, unless one
    /// waits already, an upgrade is due, the supervisor stops, or three in a row failed.
    func startStandbyIfDue() {
        guard limits.standby, standby == nil, let current = server, serving.contains(current.pid), !terminating,
            !stopping, !handingOver, pendingUpgrade == nil, standbyFailures < 3
        else { return }
        standby = spawnServer(binary: binary, first: false, standby: true)
        if standby == nil { standbyFailures += 1 }
    }

    /// The server is gone: a ready standby gets the store over its channel (each stored
    /// descriptor in a `FDSTORE=1` message, then `ADOPT=1`) and becomes the server. False
    /// (and the standby stopped) when there is none ready or the store could not be sent.
    func adoptByStandby() -> Bool {
        guard let next = standby, standbyReady.contains(next.pid) else { return false }
        standby = nil
        guard send(store: next) else {
            log("cannot hand the store to the standby (pid \(next.pid)); starting a successor instead")
            stop(next)
            return false
        }
        standbyReady.remove(next.pid)
        server = next
        TakeoverTrace.mark("adopt-sent")
        return true
    }

    /// The store to `child`'s channel, then `ADOPT=1`; never waits (the channel's buffer
    /// holds far more than the store's 64 small messages).
    func send(store child: Child) -> Bool {
        guard let channel = channels[child.pid] else { return false }
        for entry in store {
            guard FDStore.send(.store(entry.name), fds: [entry.fd], to: .supervisor(channel: channel)) else {
                return false
            }
        }
        return FDStore.send(.adopt, to: .supervisor(channel: channel))
    }

    /// Stops a child that is not the server (a standby): SIGKILL, reaped when it ends.
    func stop(_ child: Child) {
        kill(child.pid, SIGKILL)
        standbyReady.remove(child.pid)
        retire(child)
        lingering.insert(child.pid)
    }

    func dropStandby() {
        if let waiting = standby { discard(waiting) }
        standby = nil
    }

    /// A standby given up: reaped if it ended, else stopped.
    func discard(_ child: Child) {
        if exits.removeValue(forKey: child.pid) != nil {
            standbyReady.remove(child.pid)
            retire(child)
        } else {
            stop(child)
        }
    }

    // MARK: upgrade

    /// Replaces the server by the binary open at `newBinary` (taken over: kept or closed) on
    /// the same connection. Returns `ok` or `error: …`, which says what really happened.
    func performUpgrade(to newBinary: Int32, name: String) -> String {
        var adopted = false
        defer { if !adopted { close(newBinary) } }
        // 1. Does it run at all? The serving process is not touched if not.
        guard let check = spawn(newBinary, ["credfs", "--version"], descriptors: [], environment: [:]) else {
            return "error: \(name) does not run: \(Errno.last)"
        }
        candidate = check
        pump(until: { self.exits[check.pid] != nil }, seconds: limits.version)
        candidate = nil
        close(check.pidfd)
        guard let checked = exits.removeValue(forKey: check.pid) else {
            kill(check.pid, SIGKILL)
            lingering.insert(check.pid)  // reaped when it ends: never a blocking wait
            return "error: \(name) did not answer --version within \(Self.seconds(limits.version))"
        }
        guard Self.exitedNormally(checked), Self.exitCode(checked) == 0 else {
            return "error: \(name) does not run (--version: \(Self.describe(checked)))"
        }
        if terminating { return "error: the supervisor is stopping" }
        // 2. The new binary starts as a standby, while the old server still serves. If it
        // does not get ready, the takeover is tried the cold way below (and reported).
        var prepared: Child?
        if limits.standby, let waiting = spawnServer(binary: newBinary, first: false, standby: true) {
            upgradeStandby = waiting
            pump(
                until: {
                    self.standbyReady.contains(waiting.pid) || self.exits[waiting.pid] != nil || self.terminating
                },
                seconds: limits.serving)
            if standbyReady.contains(waiting.pid), exits[waiting.pid] == nil {
                prepared = waiting
                dropStandby()
            } else {
                upgradeStandby = nil
                discard(waiting)
            }
        }
        if terminating {
            if let prepared { discard(prepared) }
            upgradeStandby = nil
            return "error: the supervisor is stopping"
        }
        // 3. The old server stops reading, answers what it read, stores its state, exits.
        guard let old = server else { return "error: no server is running" }
        handingOver = true
        TakeoverTrace.mark("usr2")
        kill(old.pid, SIGUSR2)
        pump(until: { self.exits[old.pid] != nil }, seconds: limits.handover)
        if exits[old.pid] == nil {
            log("the server did not hand over within \(Self.seconds(limits.handover)); killing it")
            kill(old.pid, SIGKILL)
            pump(until: { self.exits[old.pid] != nil }, seconds: 5)
        }
        if exits.removeValue(forKey: old.pid) == nil { lingering.insert(old.pid) }
        retire(old)
        server = nil
        handingOver = false
        stopping = false
        upgradeStandby = nil
        if terminating {
            if let prepared { discard(prepared) }
            return "error: the supervisor is stopping"
        }
        // 4. The new binary takes over (its standby, else started now); if it does not, the
        // previous binary is started again and the answer says whether it serves.
        var taking: Child?
        if let prepared {
            if exits[prepared.pid] == nil, send(store: prepared) {
                TakeoverTrace.mark("adopt-sent")
                standbyReady.remove(prepared.pid)
                taking = prepared
            } else {
                discard(prepared)
            }
        }
        guard let next = taking ?? spawnServer(binary: newBinary, first: false) else {
            return restartPrevious(after: "\(name) did not start: \(Errno.last)")
        }
        server = next
        pump(until: { self.serving.contains(next.pid) || self.exits[next.pid] != nil }, seconds: limits.serving)
        if terminating {
            // The loop passes SIGTERM on to whichever server this is.
            return "error: the supervisor is stopping"
        }
        if serving.contains(next.pid), exits[next.pid] == nil {
            close(binary)
            binary = newBinary
            adopted = true
            return "ok"
        }
        let why: String
        if let status = exits.removeValue(forKey: next.pid) {
            why = "it exited (\(Self.describe(status)))"
        } else {
            why = "it did not serve within \(Self.seconds(limits.serving))"
            kill(next.pid, SIGKILL)
            lingering.insert(next.pid)  // reaped when it ends: never a blocking wait
        }
        retire(next)
        serving.remove(next.pid)
        server = nil
        return restartPrevious(after: "\(name) did not take over: \(why)")
    }

    /// After a failed takeover: the previous binary again, and what became of it.
    func restartPrevious(after failure: String) -> String {
        guard let previous = spawnServer(binary: binary, first: false) else {
            return
                "error: \(failure); the previous binary did not start again either (\(Errno.last)): the supervisor keeps trying"
        }
        server = previous
        pump(
            until: { self.serving.contains(previous.pid) || self.exits[previous.pid] != nil },
            seconds: limits.serving)
        if serving.contains(previous.pid), exits[previous.pid] == nil {
            return "error: \(failure); the previous binary serves again"
        }
        if let status = exits[previous.pid] {
            // Left in `exits`: the loop treats it as any death (a successor, backing off).
            return
                "error: \(failure); the previous binary did not serve again either (\(Self.describe(status))): the supervisor keeps trying"
        }
        return
            "error: \(failure); the previous binary has not served again within \(Self.seconds(limits.serving)) (still starting)"
    }

    // MARK: events

    /// Handles messages, requests, signals and child exits until `condition` holds or
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
        var polls = [pollfd(fd: signalRead, events: Int16(POLLIN), revents: 0)]
        if control >= 0 { polls.append(pollfd(fd: control, events: Int16(POLLIN), revents: 0)) }
        let channelList = Array(channels)
        for (_, fd) in channelList { polls.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0)) }
        let children = [server, candidate, standby, upgradeStandby].compactMap { $0 }
        for child in children { polls.append(pollfd(fd: child.pidfd, events: Int16(POLLIN), revents: 0)) }
        // While a child lives, look at it now and then: a main thread that died is not
        // reported by its pidfd while another of its threads is held in the kernel.
        var timeout = timeoutMs
        if !children.isEmpty || !lingering.isEmpty {
            let check: Int32 = leaderGone.isEmpty ? 250 : 20
            timeout = timeout < 0 ? check : min(timeout, check)
        }
        let n = poll(&polls, nfds_t(polls.count), timeout)
        if n > 0, polls[0].revents != 0 {
            var byte: UInt8 = 0
            while read(signalRead, &byte, 1) == 1 {
                if Int32(byte) == SIGTERM || Int32(byte) == SIGINT { terminating = true }
                if Int32(byte) == SIGHUP { hangup = true }
            }
        }
        if n > 0, control >= 0, polls[1].revents != 0 { acceptRequests() }
        let first = control >= 0 ? 2 : 1
        for (index, (pid, _)) in channelList.enumerated() where n > 0 && polls[first + index].revents != 0 {
            drain(pid)
        }
        for child in children {
            var status: Int32 = 0
            if waitpid(child.pid, &status, WNOHANG) == child.pid {
                if child.pid == server?.pid { TakeoverTrace.mark("death-seen") }
                drain(child.pid)
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
                    drain(child.pid)
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
        processStat(pid)?.state == UInt8(ascii: "Z")
    }

    /// The state letter and parent pid in `/proc/PID/stat`.
    static func processStat(_ pid: pid_t) -> (state: UInt8, parent: pid_t)? {
        guard pid > 0 else { return nil }
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = read(fd, &buffer, buffer.count)
        guard n > 0 else { return nil }
        // "PID (COMM) STATE PPID …": COMM may hold anything, so the state follows the last ')'.
        let text = buffer.prefix(n)
        guard let paren = text.lastIndex(of: UInt8(ascii: ")")), paren + 2 < text.endIndex else { return nil }
        let fields = text[(paren + 2)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 1, let state = fields[0].first,
            let parent = pid_t(String(decoding: fields[1], as: UTF8.self))
        else { return nil }
        return (state, parent)
    }

    /// Reads every message waiting on `pid`'s channel. The channel is that server's alone (a
    /// socketpair), so what comes on it comes from it; at its end the channel is closed.
    func drain(_ pid: pid_t) {
        guard let channel = channels[pid] else { return }
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 16)
        while true {
            var count: Int32 = 0
            var sender: pid_t = 0
            var uid: uid_t = 0
            let n = buffer.withUnsafeMutableBytes { raw in
                credfs_recv_fds(channel, raw.baseAddress, raw.count, &fds, 16, &count, &sender, &uid)
            }
            if n < 0, errno == EINTR { continue }
            if n < 0, errno == EAGAIN || errno == EWOULDBLOCK { return }
            if n <= 0 {
                // The server closed it (or it broke): nothing more will come.
                close(channel)
                channels[pid] = nil
                return
            }
            let received = Array(fds.prefix(Int(max(0, count))))
            handle(message: String(decoding: buffer.prefix(n), as: UTF8.self), fds: received, from: pid)
        }
    }

    func handle(message: String, fds: [Int32], from pid: pid_t) {
        var unused = fds
        // From this process's own server: closing what it sent cannot be made to wait.
        defer { unused.forEach { close($0) } }
        if trimAt == nil { trimAt = Self.now() + 1 }
        if pid != server?.pid, pid == standby?.pid || pid == upgradeStandby?.pid {
            // A standby stores nothing and says nothing else until it has adopted.
            if StoreProtocol.Message.parse(message).contains(.standby) {
                standbyReady.insert(pid)
                standbyFailures = 0
                log("a standby is ready (pid \(pid))")
            }
            return
        }
        for part in StoreProtocol.Message.parse(message) {
            switch part {
            case .remove(let name):
                store.removeAll { entry in
                    guard entry.name == name else { return false }
                    close(entry.fd)
                    return true
                }
            case .store(let name):
                let room = max(0, StoreProtocol.Supervised.storeLimit - store.count)
                for fd in unused.prefix(room) { store.append((name, fd)) }
                unused = Array(unused.dropFirst(room))
                if room == 0 { log("the store is full; dropped a descriptor named \(name)") }
                // The first server serves once it stored its connection.
                if name == StoreProtocol.fuse { serving.insert(pid) }
            case .stopping:
                if !handingOver { stopping = true }
            case .serving:
                TakeoverTrace.mark("serving-seen")
                serving.insert(pid)
                standbyFailures = 0
            case .ready, .status, .standby, .adopt:
                continue
            }
        }
    }

    /// A server that is no longer current: what it sent is read, then its channel closed
    /// (nothing it sends later is taken), and its pidfd closed.
    func retire(_ child: Child) {
        drain(child.pid)
        if let channel = channels.removeValue(forKey: child.pid) { close(channel) }
        close(child.pidfd)
    }

    /// `credfs upgrade` requests. The caller's uid is checked (SO_PEERCRED, recorded by the
    /// kernel at connect) before anything is read; a connection refused is closed on a thread
    /// of its own, so what it may carry cannot hold this one.
    func acceptRequests() {
        while true {
            var pid: pid_t = 0
            var uid: uid_t = 0
            let connection = credfs_accept_peer(control, &pid, &uid)
            if connection < 0 { return }
            guard uid == 0 || uid == getuid() else {
                log(
                    "refused an upgrade request from uid \(uid) (pid \(pid)): only root or the mount's owner may upgrade"
                )
                Discard.close([connection])
                continue
            }
            if pendingUpgrade != nil || handingOver {
                ControlSocket.reply(connection, "error: an upgrade is already in progress")
                Discard.close([connection])
                continue
            }
            // An authenticated caller sends its request at once: wait for it a little.
            var poller = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            _ = poll(&poller, 1, 1000)
            var buffer = [UInt8](repeating: 0, count: 4096)
            var fds = [Int32](repeating: -1, count: 16)
            var count: Int32 = 0
            var sender: pid_t = 0
            var senderUid: uid_t = 0
            let n = buffer.withUnsafeMutableBytes { raw in
                credfs_recv_fds(connection, raw.baseAddress, raw.count, &fds, 16, &count, &sender, &senderUid)
            }
            let received = Array(fds.prefix(Int(max(0, count))))
            var file = stat()
            guard n > 0, let name = ControlSocket.parse(request: String(decoding: buffer.prefix(n), as: UTF8.self)),
                received.count == 1, fstat(received[0], &file) == 0, file.st_mode & S_IFMT == S_IFREG
            else {
                ControlSocket.reply(connection, "error: not an upgrade request with a binary")
                Discard.close(received + [connection])
                continue
            }
            pendingUpgrade = (received[0], name, connection)
        }
    }

    // MARK: processes

    /// Starts a server from the binary open at `binary`: its private channel at fd 3, the
    /// arguments at 4, the binary at 5, the first server's readiness pipe at 6, the store's
    /// descriptors from 7 (``StoreProtocol/Supervised``). Its argv names the mount only.
    func spawnServer(binary: Int32, first: Bool, standby: Bool = false) -> Child? {
        let layout = StoreProtocol.Supervised.self
        var pair: [Int32] = [-1, -1]
        guard credfs_channel_pair(&pair) == 0 else { return nil }
        defer { close(pair[1]) }
        _ = fcntl(pair[0], F_SETFL, O_NONBLOCK)
        var descriptors = [(child: layout.channel, parent: pair[1]), (layout.arguments, argumentsFd)]
        if first, readyFd >= 0 { descriptors.append((layout.ready, readyFd)) }
        // A standby gets the store later, over its channel (``adoptByStandby()``).
        let given = first || standby ? [] : store
        for (index, entry) in given.enumerated() { descriptors.append((layout.firstStored + Int32(index), entry.fd)) }
        let environment = [
            layout.variable: first ? "first" : standby ? "standby" : "successor",
            layout.namesVariable: given.map(\.name).joined(separator: ":"),
        ]
        guard
            let child = spawn(
                binary, ["credfs", "mount", mountpoint, "--foreground"], descriptors: descriptors,
                environment: environment)
        else {
            close(pair[0])
            return nil
        }
        channels[child.pid] = pair[0]
        TakeoverTrace.mark("spawned")
        return child
    }

    /// Starts the binary open at `binary` (seen by the child at fd 5) with `descriptors`
    /// (child ← parent) and `environment` over this process's own, less what belongs to a
    /// service manager. Working directory `/`, stdin and stdout /dev/null.
    func spawn(
        _ binary: Int32, _ argv: [String], descriptors: [(child: Int32, parent: Int32)], environment: [String: String]
    )
        -> Child?
    {
        // Out of the way of the child's numbers first, so that the dup2s cannot clobber each other.
        let high = ([binary] + descriptors.map(\.parent)).map { fcntl($0, F_DUPFD_CLOEXEC, 100) }
        defer { high.forEach { if $0 >= 0 { close($0) } } }
        guard !high.contains(where: { $0 < 0 }) else { return nil }
        let ownedBySupervisor: Set<String> = [
            StoreProtocol.Systemd.notifySocket, StoreProtocol.Systemd.storeSize, StoreProtocol.Supervised.variable,
            StoreProtocol.Supervised.namesVariable, Limits.variable, "INVOCATION_ID",
        ]
        var env: [String] = []
        var index = 0
        while let entry = environ[index] {
            let text = String(cString: entry)
            let key = text.split(separator: "=", maxSplits: 1).first.map(String.init) ?? ""
            // The server is not a systemd service's main process, even when this is.
            if environment[key] == nil, !key.hasPrefix("LISTEN_"), !ownedBySupervisor.contains(key) {
                env.append(text)
            }
            index += 1
        }
        for (key, value) in environment { env.append("\(key)=\(value)") }

        // The one way credfs starts a process: no signal blocked, default handlers.
        var spawn = Spawn(executable: "credfs", arguments: argv)
        spawn.executableFile = (high[0], StoreProtocol.Supervised.executable)
        spawn.environment = env
        spawn.stdin = .null
        spawn.stdout = .null
        spawn.descriptors = zip(descriptors, high.dropFirst()).map { (child: $0.child, parent: $1) }
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
        return Child(pid: pid, pidfd: pidfd)
    }

    // MARK: helpers

    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value)) s" : "\(value) s"
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

/// Closing descriptors that came from outside on a thread of their own: a close can wait (a
/// TCP socket lingering over unsent data, a FUSE file whose FLUSH is never answered), and
/// no such wait may hold the thread that keeps a mount served.
enum Discard {
    static func close(_ fds: [Int32]) {
        guard !fds.isEmpty else { return }
        // If no thread can start, the descriptors stay open: a leak, never a wait.
        startThread(name: "credfs-discard") { fds.forEach { _ = Glibc.close($0) } }
    }
}
