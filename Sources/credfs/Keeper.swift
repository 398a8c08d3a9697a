import ArgumentParser
import CFuse3
import CPosix
import CPosixIPC
import FoundationEssentials
import FuseBridge
import Glibc
import Posix

/// `credfs keeper`: the fd store of a node, for Kubernetes (docs/operations.md, "Kubernetes").
/// A credfs pod dies or is replaced; the FUSE connection, its INIT, the carried state and
/// the listeners must not. `keeper serve` runs in a pod of its own (a DaemonSet that updates
/// of credfs never touch) and keeps what servers store, speaking the supervisor's protocol
/// (``StoreProtocol``); `keeper launch` is what a credfs container runs: it connects to the
/// keeper, is given the stored descriptors once no other server owns them, and becomes the
/// server (an exec, same pid) with the keeper's connection as its private channel.
struct Keeper: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keeper",
        abstract: "Keep a mount's connection on a node across credfs pods (Kubernetes).",
        subcommands: [KeeperServe.self, KeeperLaunch.self, KeeperHandover.self])
}

/// What the keeper tells a launcher: its role, and the names of the descriptors that come
/// with it (at most 16 a message, in order; the last message says `DONE=1`).
enum KeeperProtocol {
    static let defaultSocket = "/run/credfs-keeper/keeper.sock"
    static let batch = 16

    static func messages(role: String, names: [String]) -> [(text: String, count: Int)] {
        var result: [(String, Int)] = []
        var start = 0
        repeat {
            let part = Array(names[start..<min(names.count, start + batch)])
            let done = start + batch >= names.count
            result.append(("ROLE=\(role)\nFDNAMES=\(part.joined(separator: ":"))\nDONE=\(done ? 1 : 0)", part.count))
            start += batch
        } while start < names.count
        return result
    }

    /// (role, names, done) of one message, nil when it is not one.
    static func parse(_ text: String) -> (role: String, names: [String], done: Bool)? {
        var fields: [Substring: Substring] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            fields[line[..<eq]] = line[line.index(after: eq)...]
        }
        guard let role = fields["ROLE"], role == "first" || role == "successor", let names = fields["FDNAMES"]
        else { return nil }
        let list = names.isEmpty ? [] : names.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        return (String(role), list, fields["DONE"] == "1")
    }
}

/// Descriptors kept by name, as a service manager keeps them: a store appends (up to
/// ``StoreProtocol/Supervised/storeLimit``), a removal closes every one of the name.
struct DescriptorStore {
    private(set) var entries: [(name: String, fd: Int32)] = []

    func holds(_ name: String) -> Bool { entries.contains { $0.name == name } }

    /// Applies a store or removal, taking what it keeps from `fds`; the name of a store the
    /// limit refused, else nil.
    mutating func apply(_ message: StoreProtocol.Message, fds: inout ArraySlice<Int32>) -> String? {
        switch message {
        case .remove(let name):
            for entry in entries where entry.name == name { close(entry.fd) }
            entries.removeAll { $0.name == name }
        case .store(let name):
            while let fd = fds.first, entries.count < StoreProtocol.Supervised.storeLimit {
                entries.append((name, fd))
                fds = fds.dropFirst()
            }
            if !fds.isEmpty { return name }
        default: break
        }
        return nil
    }

    mutating func removeAll() {
        for entry in entries { close(entry.fd) }
        entries = []
    }
}

/// One message from a connected channel, never waiting.
enum ChannelMessage {
    case message(String, [Int32])
    /// Nothing waiting now.
    case none
    /// The peer closed its end (or it broke).
    case ended

    static func receive(_ fd: Int32) -> ChannelMessage {
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 16)
        var count: Int32 = 0
        var pid: pid_t = 0
        var uid: uid_t = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { raw in
                credfs_recv_fds(fd, raw.baseAddress, raw.count, &fds, 16, &count, &pid, &uid)
            }
            if n < 0, errno == EINTR { continue }
            if n < 0, errno == EAGAIN || errno == EWOULDBLOCK { return .none }
            if n <= 0 { return .ended }
            return .message(String(decoding: buffer.prefix(n), as: UTF8.self), Array(fds.prefix(Int(max(0, count)))))
        }
    }
}

/// The write end of the keeper's signal pipe (set before the handlers are installed).
nonisolated(unsafe) var keeperSignalPipe: Int32 = -1

struct KeeperServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "Keep the stored descriptors of a node's credfs servers.")

    @Option(help: "The socket servers connect to (its directory is made root-only).")
    var socket: String = KeeperProtocol.defaultSocket

    @Option(help: "The mount, as this process sees it: unmounted when the connection ends.")
    var mountpoint: String?

    @Option(help: "Seconds to wait for a successor after a server ended without unmounting.")
    var timeout: Double = 60

    @Option(help: "Seconds to wait, on SIGTERM, for a serving server to end.")
    var termWait: Double = 10

    func validate() throws {
        guard timeout > 0, timeout <= 86400, termWait >= 0, termWait <= 3600 else {
            throw ValidationError("--timeout must be in (0, 86400] and --term-wait in [0, 3600]")
        }
        guard socket.hasPrefix("/"), socket.utf8.count < 100 else {
            throw ValidationError("--socket must be an absolute path shorter than 100 bytes")
        }
    }

    func run() throws {
        guard geteuid() == 0 else { throw Failure(message: "the keeper runs as root") }
        let store = NodeStore(socket: socket, mountpoint: mountpoint, timeout: timeout, termWait: termWait)
        Glibc.exit(store.run())
    }
}

/// The keeper's state: the stored descriptors, the one server that owns them (its
/// connection), and launchers waiting for them. Single-threaded: one poll loop.
///
/// Arbitration: the store goes to one connection at a time. A launcher that connects while
/// another server owns the store waits; it is given the store only once that server's
/// connection has ended (every descriptor of the process closed: it exited or was killed)
/// or its main thread is gone (the supervisor's rule, for a process held in the kernel).
final class NodeStore {
    let socket: String
    let mountpoint: String?
    let timeout: Double
    let termWait: Double
    var listener: Int32 = -1
    var signalRead: Int32 = -1
    var store = DescriptorStore()
    var owner: (fd: Int32, pid: pid_t)?
    var ownerStopping = false
    var ownerGoneSince: Double?
    var waiting: [(fd: Int32, pid: pid_t)] = []
    /// Since when the store holds a connection no server owns.
    var orphanSince: Double?
    var terminatingSince: Double?

    init(socket: String, mountpoint: String?, timeout: Double, termWait: Double) {
        self.socket = socket
        self.mountpoint = mountpoint
        self.timeout = timeout
        self.termWait = termWait
    }

    func log(_ message: String) {
        Output.write(Array("credfs-keeper: \(message)\n".utf8), to: 2)
    }

    func run() -> Int32 {
        _ = credfs_set_not_dumpable()
        _ = chdir("/")
        guard openSocket() else { return 1 }
        defer { unlink(socket) }
        var pipeFds: [Int32] = [-1, -1]
        guard credfs_pipe_cloexec(&pipeFds) == 0 else { return 1 }
        for fd in pipeFds { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
        signalRead = pipeFds[0]
        keeperSignalPipe = pipeFds[1]
        var handled = sigset_t()
        sigemptyset(&handled)
        for sig in [SIGTERM, SIGINT] { sigaddset(&handled, sig) }
        pthread_sigmask(SIG_UNBLOCK, &handled, nil)
        for sig in [SIGTERM, SIGINT] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                var byte = UInt8(truncatingIfNeeded: sig)
                _ = write(keeperSignalPipe, &byte, 1)
            }
            sigaction(sig, &action, nil)
        }
        log("serving at \(socket) (successor timeout \(Supervisor.seconds(timeout)))")
        while true {
            pump()
            if let since = orphanSince, Supervisor.now() - since >= timeout {
                log("no successor within \(Supervisor.seconds(timeout)): ending the connection")
                endConnection()
            }
            if let since = terminatingSince {
                if owner == nil {
                    if store.holds(StoreProtocol.fuse) {
                        log("terminating with no server: ending the connection")
                        endConnection()
                    }
                    dropStore()
                    return 0
                }
                if Supervisor.now() - since >= termWait {
                    log("terminating while a server (pid \(owner?.pid ?? 0)) serves: it keeps its connection")
                    dropStore()
                    return 0
                }
            }
            if owner == nil, terminatingSince == nil { giveStore() }
        }
    }

    /// The socket in a root-only directory; a live keeper there is an error.
    func openSocket() -> Bool {
        let directory = String(socket[..<(socket.lastIndex(of: "/") ?? socket.startIndex)])
        if !directory.isEmpty {
            _ = mkdir(directory, 0o700)
            var info = stat()
            guard lstat(directory, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == 0 else {
                log("\(directory) is not a directory owned by root")
                return false
            }
            _ = chmod(directory, 0o700)
        }
        let probe = credfs_connect_seqpacket(socket)
        if probe >= 0 {
            close(probe)
            log("a keeper already serves at \(socket)")
            return false
        }
        unlink(socket)
        listener = credfs_listen_seqpacket(socket)
        guard listener >= 0 else {
            log("cannot listen at \(socket): \(Errno.last)")
            return false
        }
        return true
    }

    func pump() {
        var polls = [
            pollfd(fd: signalRead, events: Int16(POLLIN), revents: 0),
            pollfd(fd: listener, events: Int16(POLLIN), revents: 0),
        ]
        if let owner { polls.append(pollfd(fd: owner.fd, events: Int16(POLLIN), revents: 0)) }
        let queued = waiting
        for entry in queued { polls.append(pollfd(fd: entry.fd, events: Int16(POLLIN), revents: 0)) }
        var timeout: Int32 = -1
        if owner != nil { timeout = ownerGoneSince == nil ? 250 : 20 }
        if orphanSince != nil || terminatingSince != nil { timeout = timeout < 0 ? 250 : min(timeout, 250) }
        let n = poll(&polls, nfds_t(polls.count), timeout)
        if n > 0, polls[0].revents != 0 {
            var byte: UInt8 = 0
            while read(signalRead, &byte, 1) == 1 {
                if terminatingSince == nil {
                    log("terminating")
                    terminatingSince = Supervisor.now()
                }
            }
        }
        if n > 0, polls[1].revents != 0 { accept() }
        var index = 2
        if owner != nil {
            if n > 0, polls[index].revents != 0 { drainOwner() }
            index += 1
        }
        for entry in queued {
            // A waiting launcher sends nothing: anything readable is its end.
            if n > 0, polls[index].revents != 0 {
                close(entry.fd)
                waiting.removeAll { $0.fd == entry.fd }
            }
            index += 1
        }
        if let current = owner, current.pid > 0, Supervisor.mainThreadGone(current.pid) {
            let since = ownerGoneSince ?? Supervisor.now()
            ownerGoneSince = since
            if Supervisor.now() - since >= 0.1 {
                log("the server's main thread is gone but the process cannot end; counting it as dead")
                ownerEnded()
            }
        }
    }

    /// Root alone may connect (the directory is root-only too).
    func accept() {
        while true {
            var pid: pid_t = 0
            var uid: uid_t = 0
            let connection = credfs_accept_peer(listener, &pid, &uid)
            if connection < 0 { return }
            guard uid == 0 else {
                log("refused a connection from uid \(uid)")
                close(connection)
                continue
            }
            waiting.append((connection, pid))
            if let owner { log("a server (pid \(pid)) waits: pid \(owner.pid) owns the connection") }
        }
    }

    func drainOwner() {
        guard let current = owner else { return }
        while true {
            switch ChannelMessage.receive(current.fd) {
            case .none: return
            case .ended:
                ownerEnded()
                return
            case .message(let text, let fds):
                var extra = fds[...]
                for part in StoreProtocol.Message.parse(text) {
                    if part == .stopping { ownerStopping = true }
                    if let dropped = store.apply(part, fds: &extra) {
                        log("the store is full; dropped a descriptor named \(dropped)")
                    }
                }
                extra.forEach { close($0) }
            }
        }
    }

    func ownerEnded() {
        guard let current = owner else { return }
        close(current.fd)
        owner = nil
        ownerGoneSince = nil
        if ownerStopping || !store.holds(StoreProtocol.fuse) {
            log("the server (pid \(current.pid)) ended the mount")
            dropStore()
        } else {
            log("the server (pid \(current.pid)) is gone; the connection waits for a successor")
            orphanSince = Supervisor.now()
        }
        ownerStopping = false
    }

    /// The store to the first launcher still waiting, as its role says.
    func giveStore() {
        while owner == nil, !waiting.isEmpty {
            let next = waiting.removeFirst()
            let successor = store.holds(StoreProtocol.fuse)
            if !successor { dropStore() }
            var sent = true
            var start = 0
            for (text, count) in KeeperProtocol.messages(
                role: successor ? "successor" : "first", names: store.entries.map(\.name))
            {
                let fds = store.entries[start..<(start + count)].map(\.fd)
                start += count
                let bytes = Array(text.utf8)
                let result = bytes.withUnsafeBytes { raw in
                    fds.withUnsafeBufferPointer {
                        credfs_send_message(
                            next.fd, nil, 0, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count))
                    }
                }
                if result != 0 { sent = false }
            }
            guard sent else {
                log("could not hand the store to pid \(next.pid): \(Errno.last)")
                close(next.fd)
                continue
            }
            owner = next
            orphanSince = nil
            log(
                "pid \(next.pid) serves (\(successor ? "successor, \(store.entries.count) descriptors" : "first: it mounts"))"
            )
        }
    }

    /// The connection ends: the mount is detached here (propagating to the node) and the
    /// descriptors closed, so no dead mount is left behind.
    func endConnection() {
        if let mountpoint, !FuseFileSystem.detach(mountpoint) {
            log("cannot unmount \(mountpoint): \(Errno.last)")
        }
        dropStore()
    }

    func dropStore() {
        store.removeAll()
        orphanSince = nil
    }
}

struct KeeperLaunch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Become a credfs server on the connection the node's keeper holds (after --, `mount …`).")

    @Option(help: "The keeper's socket.")
    var socket: String = KeeperProtocol.defaultSocket

    @Argument(parsing: .postTerminator, help: "The mount's command: mount MOUNTPOINT [options].")
    var command: [String] = []

    func validate() throws {
        guard command.first == "mount", command.count >= 2 else {
            throw ValidationError("give the mount after --: credfs keeper launch -- mount MOUNTPOINT [options]")
        }
    }

    func run() throws {
        let connection = connect()
        var names: [String] = []
        var fds: [Int32] = []
        var role = ""
        loop: while true {
            var poller = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
            _ = poll(&poller, 1, -1)
            switch ChannelMessage.receive(connection) {
            case .none: continue
            case .ended: throw Failure(message: "the keeper ended the connection before handing the store")
            case .message(let text, let received):
                guard let message = KeeperProtocol.parse(text), message.names.count == received.count else {
                    received.forEach { close($0) }
                    throw Failure(message: "the keeper sent what is not a store")
                }
                role = message.role
                names += message.names
                fds += received
                if message.done { break loop }
            }
        }
        Output.error(
            "credfs keeper launch: \(role == "first" ? "first server: mounting" : "taking over \(names.count) stored descriptors")"
        )
        try exec(channel: connection, role: role, names: names, fds: fds)
    }

    /// The keeper's socket, waited for (the keeper's pod may start later); its peer must be root.
    func connect() -> Int32 {
        var said = false
        while true {
            let fd = credfs_connect_seqpacket(socket)
            if fd >= 0 {
                var pid: pid_t = 0
                var uid: uid_t = 0
                if credfs_peer(fd, &pid, &uid) == 0, uid == 0 { return fd }
                close(fd)
            }
            if !said {
                Output.error("credfs keeper launch: waiting for the keeper at \(socket)")
                said = true
            }
            usleep(200_000)
        }
    }

    /// Lays out the supervisor's descriptors (``StoreProtocol/Supervised``) and runs this
    /// binary as the server, in this process.
    func exec(channel: Int32, role: String, names: [String], fds: [Int32]) throws {
        let layout = StoreProtocol.Supervised.self
        let arguments = ArgumentsFile.make(arguments: Array(command.dropFirst()), workingDirectory: "/")
        let binary = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)
        guard arguments >= 0, binary >= 0 else { throw Failure(message: "cannot prepare the server's descriptors") }
        var plan: [(target: Int32, source: Int32)] = [
            (layout.channel, channel), (layout.arguments, arguments), (layout.executable, binary),
        ]
        for (index, fd) in fds.prefix(layout.storeLimit).enumerated() {
            plan.append((layout.firstStored + Int32(index), fd))
        }
        // Out of the way of the target numbers first, so the dup2s cannot clobber each other.
        let high = plan.map { fcntl($0.source, F_DUPFD_CLOEXEC, 200) }
        guard !high.contains(where: { $0 < 0 }) else {
            throw Failure(message: "cannot prepare the server's descriptors")
        }
        for (entry, source) in zip(plan, high) {
            guard dup2(source, entry.target) == entry.target else {
                throw Failure(message: "cannot prepare the server's descriptors")
            }
        }
        setenv(layout.variable, role, 1)
        setenv(layout.namesVariable, role == "first" ? "" : names.prefix(layout.storeLimit).joined(separator: ":"), 1)
        let argv = ["credfs", "mount", command[1], "--foreground"]
        var cArgs = argv.map { strdup($0) }
        cArgs.append(nil)
        execv("/proc/self/fd/\(layout.executable)", &cArgs)
        throw Failure(message: "cannot run the server: \(Errno.last)")
    }
}

struct KeeperHandover: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "handover",
        abstract: "Ask a keeper-launched server to hand its connection to the keeper and exit (a preStop hook).")

    @Option(help: "The server's pid (in a container: 1).")
    var pid: Int32 = 1

    @Option(help: "Seconds to wait for it to exit.")
    var within: Double = 8

    func run() throws {
        guard pid > 0, within >= 0, within <= 600 else { throw ValidationError("bad --pid or --within") }
        let pidfd = credfs_pidfd_open(pid)
        guard pidfd >= 0 else { return }
        defer { close(pidfd) }
        guard kill(pid, SIGUSR2) == 0 else {
            throw Failure(message: "cannot signal pid \(pid): \(Errno.last)")
        }
        var poller = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        if poll(&poller, 1, Int32(within * 1000)) == 0 {
            throw Failure(message: "pid \(pid) did not exit within \(Supervisor.seconds(within))")
        }
    }
}
