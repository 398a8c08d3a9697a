import CPosixIPC
import FoundationEssentials
import Glibc
import Posix

/// The fd store protocol, spelled once (docs/hitless.md, "The fd store protocol"): what a
/// server tells its service manager (systemd, the supervisor, the tests' fake manager), the
/// names it stores descriptors under, and how the next server is handed them.
enum StoreProtocol {
    /// The FUSE connection (`/dev/fuse`).
    static let fuse = "fuse"
    /// The recording of the kernel's INIT request (a sealed memfd).
    static let fuseInit = "fuse-init"
    /// The carried state, `state.N` (a sealed memfd; the highest N is the newest).
    static let statePrefix = "state."

    /// The mount's floor (``StateFloor``, a memfd written in place; not a `state.` name:
    /// older binaries ignore it).
    static let floor = "floor"
    /// The listening sockets of `--serve-uri` and `--metrics` (ListenerService.swift).
    static let listenURI = "listen-uri"
    static let listenMetrics = "listen-metrics"
    static let listeners = [listenURI, listenMetrics]

    static func state(_ sequence: Int) -> String { statePrefix + String(sequence) }

    /// N of `state.N`, nil for any other name.
    static func stateSequence(_ name: String) -> Int? {
        name.hasPrefix(statePrefix) ? Int(name.dropFirst(statePrefix.count)) : nil
    }

    /// What a server says: one datagram (systemd) or packet (the supervisor) each, as
    /// sd_notify `KEY=VALUE` lines.
    enum Message: Equatable {
        /// Keep the descriptors sent with this message under the name.
        case store(String)
        /// Drop every descriptor kept under the name.
        case remove(String)
        /// A successor serves the connection it was handed.
        case serving
        /// The server ends for good (an unmount, SIGTERM): start no other.
        case stopping
        /// A standby (the supervisor's only): started, options read, waiting to adopt.
        case standby
        /// To a standby, after the stored descriptors (one `.store` each): they are yours,
        /// the previous server is gone; serve.
        case adopt
        /// systemd's readiness and status lines (the supervisor ignores them).
        case ready(status: String)
        case status(String)

        var text: String {
            switch self {
            case .store(let name): "FDSTORE=1\nFDNAME=\(name)"
            case .remove(let name): "FDSTOREREMOVE=1\nFDNAME=\(name)"
            case .serving: "SERVING=1"
            case .stopping: "STOPPING=1"
            case .standby: "STANDBY=1"
            case .adopt: "ADOPT=1"
            case .ready(let status): "READY=1\nSTATUS=\(status)"
            case .status(let status): "STATUS=\(status)"
            }
        }

        /// The messages one datagram holds, removals first; lines credfs does not use are
        /// ignored. A store without `FDNAME=` is named `stored`, as systemd names it.
        static func parse(_ text: String) -> [Message] {
            var fields: [Substring: Substring] = [:]
            for line in text.split(separator: "\n") {
                guard let eq = line.firstIndex(of: "=") else { continue }
                fields[line[..<eq]] = line[line.index(after: eq)...]
            }
            let name = fields["FDNAME"].map(String.init)
            var messages: [Message] = []
            if fields["FDSTOREREMOVE"] == "1", let name { messages.append(.remove(name)) }
            if fields["FDSTORE"] == "1" { messages.append(.store(name ?? "stored")) }
            if fields["SERVING"] == "1" { messages.append(.serving) }
            if fields["STOPPING"] == "1" { messages.append(.stopping) }
            if fields["STANDBY"] == "1" { messages.append(.standby) }
            if fields["ADOPT"] == "1" { messages.append(.adopt) }
            if fields["READY"] == "1" {
                messages.append(.ready(status: fields["STATUS"].map(String.init) ?? ""))
            } else if let status = fields["STATUS"] {
                messages.append(.status(String(status)))
            }
            return messages
        }
    }

    /// systemd's side: `$NOTIFY_SOCKET`, `$FDSTORE` (the store's size), and the next start's
    /// descriptors from fd 3 named by `LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`.
    enum Systemd {
        static let notifySocket = "NOTIFY_SOCKET"
        static let storeSize = "FDSTORE"
        static let listenPID = "LISTEN_PID"
        static let listenFDs = "LISTEN_FDS"
        static let listenNames = "LISTEN_FDNAMES"
        static let firstFD: Int32 = 3
    }

    /// A server the supervisor starts (docs/security.md, "The control plane"): descriptors at
    /// fixed numbers and two variables; no name another process could find or send to.
    enum Supervised {
        /// `first` (the server that mounts), `successor`, or `standby` (waits on its channel
        /// for the stored descriptors, then takes over as a successor).
        static let variable = "CREDFS_SUPERVISED"
        /// The names of the stored descriptors, `:`-separated, from ``firstStored`` on.
        static let namesVariable = "CREDFS_FDNAMES"
        /// The server's end of its private channel to the supervisor (a socketpair).
        static let channel: Int32 = 3
        /// The mount's arguments (``ArgumentsFile``): never in argv.
        static let arguments: Int32 = 4
        /// The binary the supervisor runs (what `/proc/self/fd/5` named at exec).
        static let executable: Int32 = 5
        /// The first server's readiness pipe to `credfs mount`.
        static let ready: Int32 = 6
        static let firstStored: Int32 = 7
        /// At most this many stored descriptors (systemd's `FileDescriptorStoreMax=` of the unit).
        static let storeLimit = 64
    }
}

/// The server's side of the store: where its messages go (the supervisor's private channel,
/// systemd's `$NOTIFY_SOCKET`, or nowhere), and the descriptors it was started with. Every
/// send returns at once: a manager that does not read (stalled, or its queue full) costs a
/// failed send, never a wait on the refresh path.
enum FDStore {
    enum Manager: Sendable {
        case supervisor(channel: Int32)
        case systemd(socket: String)
        case none
    }

    /// Decided once (``ServerLaunch`` is taken first thing in `main`).
    static let manager: Manager = {
        if let launch = ServerLaunch.current { return .supervisor(channel: launch.channel) }
        guard let socket = getenv(StoreProtocol.Systemd.notifySocket).map({ String(cString: $0) }), !socket.isEmpty
        else { return .none }
        return .systemd(socket: socket)
    }()

    /// Whether this process should store descriptors: under the supervisor, or under a
    /// systemd unit with a store (`$FDSTORE`, which systemd 254+ sets from
    /// `FileDescriptorStoreMax=` and scripts/credfs.service sets for older ones).
    static var isAvailable: Bool {
        switch manager {
        case .supervisor: return true
        case .none: return false
        case .systemd:
            guard let max = getenv(StoreProtocol.Systemd.storeSize).map({ String(cString: $0) }), let count = Int(max)
            else { return false }
            return count > 0
        }
    }

    /// The descriptors this process was started with, by name (in order). The variables
    /// are removed, and the descriptors made close-on-exec, so no child inherits them.
    static func inherited() -> [(name: String, fd: Int32)] {
        if let launch = ServerLaunch.current { return launch.stored }
        let names = StoreProtocol.Systemd.self
        defer {
            unsetenv(names.listenPID)
            unsetenv(names.listenFDs)
            unsetenv(names.listenNames)
        }
        guard let pidText = getenv(names.listenPID).map({ String(cString: $0) }), Int32(pidText) == getpid(),
            let countText = getenv(names.listenFDs).map({ String(cString: $0) }), let count = Int(countText),
            count > 0, count <= StoreProtocol.Supervised.storeLimit
        else { return [] }
        let given =
            getenv(names.listenNames).map { String(cString: $0) }?.split(
                separator: ":", omittingEmptySubsequences: false
            ).map(String.init) ?? []
        return adopt(from: names.firstFD, count: count, names: given)
    }

    /// `count` descriptors from `first` on, made close-on-exec, named by `names` (`unknown`
    /// past its end); numbers that are not open are skipped.
    static func adopt(from first: Int32, count: Int, names: [String]) -> [(name: String, fd: Int32)] {
        var result: [(name: String, fd: Int32)] = []
        for i in 0..<count {
            let fd = first + Int32(i)
            guard fcntl(fd, F_GETFD) >= 0 else { continue }
            _ = credfs_set_cloexec(fd, 1)
            result.append((i < names.count ? names[i] : "unknown", fd))
        }
        return result
    }

    /// Hands `fd` to the store under `name` (the store keeps its own copy). False when the
    /// manager did not take it now (gone, or its queue full: try again later).
    @discardableResult
    static func store(_ fd: Int32, name: String) -> Bool {
        send(.store(name), fds: [fd])
    }

    /// Drops every stored descriptor named `name`.
    @discardableResult
    static func remove(name: String) -> Bool {
        send(.remove(name))
    }

    /// One message, never waiting; false when it was not sent (errno says why).
    @discardableResult
    static func send(_ message: StoreProtocol.Message, fds: [Int32] = [], to manager: Manager = manager) -> Bool {
        let bytes = Array(message.text.utf8)
        return bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { fdBuffer in
                let count = Int32(fdBuffer.count)
                switch manager {
                case .none: return false
                case .supervisor(let channel):
                    return credfs_send_message(channel, nil, 0, raw.baseAddress, raw.count, fdBuffer.baseAddress, count)
                        == 0
                case .systemd(let socket):
                    return credfs_send_fds(socket, raw.baseAddress, raw.count, fdBuffer.baseAddress, count) == 0
                }
            }
        }
    }
}

/// How the supervisor started this server (nil when it did not): its private channel, the
/// mount's arguments (read from a memfd, never from argv), the readiness pipe of the first
/// server and the stored descriptors. Taken first thing in `main`, before any thread runs.
struct ServerLaunch: @unchecked Sendable {
    let channel: Int32
    var stored: [(name: String, fd: Int32)]
    /// The argument list to parse (`mount … --foreground`).
    let arguments: [String]
    /// Started ahead of need: waits in ``awaitAdoption()`` before it reads the store.
    var standby = false

    nonisolated(unsafe) static var current: ServerLaunch?

    /// Reads the launch from the variables and descriptors the supervisor set; removes the
    /// variables and makes the descriptors close-on-exec. The working directory becomes the
    /// one `credfs mount` ran in, so relative paths in the arguments mean what they meant
    /// there (the server leaves it again once it has resolved them).
    static func take() -> Result<ServerLaunch?, Failure> {
        let layout = StoreProtocol.Supervised.self
        guard let role = getenv(layout.variable).map({ String(cString: $0) }) else { return .success(nil) }
        let names =
            getenv(layout.namesVariable).map { String(cString: $0) }.map {
                $0.isEmpty ? [] : $0.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            } ?? []
        unsetenv(layout.variable)
        unsetenv(layout.namesVariable)
        // The binary's descriptor was only for exec (a script's interpreter reads it there).
        close(layout.executable)
        guard fcntl(layout.channel, F_GETFD) >= 0, credfs_set_cloexec(layout.channel, 1) == 0 else {
            return .failure(Failure(message: "started as a supervised server without the supervisor's channel"))
        }
        _ = credfs_set_cloexec(layout.arguments, 1)
        guard let given = ArgumentsFile.read(layout.arguments) else {
            return .failure(Failure(message: "started as a supervised server without readable mount arguments"))
        }
        close(layout.arguments)
        var arguments = ["mount"] + given.arguments + ["--foreground"]
        if role == "first", credfs_set_cloexec(layout.ready, 1) == 0 {
            arguments += ["--ready-fd", String(layout.ready)]
        }
        if chdir(given.workingDirectory) != 0 { _ = chdir("/") }
        let stored = FDStore.adopt(
            from: layout.firstStored, count: min(names.count, layout.storeLimit), names: names)
        return .success(
            ServerLaunch(channel: layout.channel, stored: stored, arguments: arguments, standby: role == "standby"))
    }

    /// A standby's wait (docs/hitless.md, "The standby"): says `STANDBY=1`, then waits on its
    /// channel, on a thread of its own, for the stored descriptors (one `FDSTORE=1` message
    /// each) and `ADOPT=1`, which the supervisor sends only once the previous server is
    /// gone. Afterwards this process is a successor like any other. False when the
    /// supervisor went away (or stopped it) first: the standby ends.
    static func awaitAdoption() async -> Bool {
        guard var launch = current, launch.standby else { return true }
        let channel = launch.channel
        guard FDStore.send(.standby) else { return false }
        let stored: [(name: String, fd: Int32)]? = await withCheckedContinuation { done in
            let started = startThread(name: "credfs-standby") { done.resume(returning: receiveStore(channel)) }
            if !started { done.resume(returning: nil) }
        }
        guard let stored else { return false }
        launch.stored = stored
        launch.standby = false
        current = launch
        TakeoverTrace.mark("adopting")
        return true
    }

    /// Reads `FDSTORE=1` messages (each with its descriptor) until `ADOPT=1`; nil when the
    /// channel ends first.
    private static func receiveStore(_ channel: Int32) -> [(name: String, fd: Int32)]? {
        var stored: [(name: String, fd: Int32)] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 16)
        while true {
            var poller = pollfd(fd: channel, events: Int16(POLLIN), revents: 0)
            if poll(&poller, 1, -1) < 0, errno != EINTR { break }
            var count: Int32 = 0
            var sender: pid_t = 0
            var uid: uid_t = 0
            let n = buffer.withUnsafeMutableBytes { raw in
                credfs_recv_fds(channel, raw.baseAddress, raw.count, &fds, 16, &count, &sender, &uid)
            }
            if n < 0, errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK { continue }
            guard n > 0 else { break }
            var received = Array(fds.prefix(Int(max(0, count))))
            for message in StoreProtocol.Message.parse(String(decoding: buffer.prefix(n), as: UTF8.self)) {
                switch message {
                case .store(let name):
                    guard stored.count < StoreProtocol.Supervised.storeLimit, !received.isEmpty else { continue }
                    stored.append((name, received.removeFirst()))
                case .adopt:
                    received.forEach { close($0) }
                    return stored
                default:
                    continue
                }
            }
            received.forEach { close($0) }
        }
        stored.forEach { close($0.fd) }
        return nil
    }
}

/// The mount's arguments and the directory they are relative to, in a sealed memfd: how
/// they reach the supervisor and every server it starts, never through argv (which every
/// user reads in /proc/PID/cmdline). Holds secrets: never logged.
enum ArgumentsFile {
    static let magic = "credfs-arguments-1"

    /// A sealed memfd holding them, or -1.
    static func make(arguments: [String], workingDirectory: String) -> Int32 {
        var bytes: [UInt8] = []
        for part in [magic, workingDirectory] + arguments {
            bytes += part.utf8.filter { $0 != 0 }
            bytes.append(0)
        }
        return MemoryFile.make(name: "credfs-arguments", bytes: bytes)
    }

    static func read(_ fd: Int32) -> (workingDirectory: String, arguments: [String])? {
        guard let bytes = MemoryFile.read(fd, limit: 1 << 20), bytes.last == 0 else { return nil }
        let parts = bytes.dropLast().split(separator: 0, omittingEmptySubsequences: false).map {
            String(decoding: $0, as: UTF8.self)
        }
        guard parts.count >= 2, parts[0] == magic else { return nil }
        return (parts[1], Array(parts.dropFirst(2)))
    }
}

/// Anonymous memory files (memfd): state and the INIT recording move in these, never
/// through a file on disk.
enum MemoryFile {
    /// A sealed memfd holding `bytes`, or -1.
    static func make(name: String, bytes: [UInt8]) -> Int32 {
        let fd = credfs_memfd(name)
        guard fd >= 0 else { return -1 }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.write(fd, raw.baseAddress.map { $0 + written }, raw.count - written)
            }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                close(fd)
                return -1
            }
            written += n
        }
        _ = credfs_seal(fd)
        return fd
    }

    /// The whole content of a memfd (at most `limit` bytes), read from offset 0.
    static func read(_ fd: Int32, limit: Int = 64 << 20) -> [UInt8]? {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: off_t = 0
        while out.count <= limit {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
            if n < 0, errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { return out }
            out += buffer[0..<n]
            offset += off_t(n)
        }
        return nil
    }
}
