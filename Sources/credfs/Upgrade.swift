import ArgumentParser
import CPosixIPC
import CredentialCore
import FoundationEssentials
import Glibc
import Posix

/// `credfs upgrade [MOUNTPOINT] [--binary PATH]`: asks the mount's supervisor to replace
/// the serving process by PATH on the same connection (docs/hitless.md).
struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade",
        abstract: "Replace the daemon serving a mount by another binary, on the same connection.",
        discussion:
            "Exit 0 once the new process serves. If it does not, exit 1 with what happened: whether the previous binary serves again."
    )

    @Argument(help: "The mount point.")
    var mountpoint: String = "/mnt/.alibabacloud"

    @Option(help: "The credfs binary to run (default: this one).")
    var binary: String?

    func run() throws {
        let path = MountPoint.resolve(mountpoint)
        guard MountPoint.mountType(at: path) == "fuse.credfs" else {
            throw Failure(message: "no credfs mount at \(path)")
        }
        // The binary is opened here, in this caller's namespace, and handed over open: the
        // supervisor runs this very file, never a path it would look up itself.
        let file: Int32
        let name: String
        if let binary {
            let target = binary.hasPrefix("/") ? binary : URL(fileURLWithPath: binary).standardizedFileURL.path
            guard access(target, X_OK) == 0 else {
                throw Failure(message: "\(target) is not an executable file: \(Errno.last)")
            }
            file = open(target, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
            var st = stat()
            guard file >= 0, fstat(file, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
                if file >= 0 { close(file) }
                throw Failure(message: "\(target) is not an executable file")
            }
            name = target
        } else {
            file = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)
            guard file >= 0 else { throw Failure(message: "cannot open this binary; pass --binary") }
            name = "this binary"
        }
        defer { close(file) }
        let connection = try ControlSocket.connect(mountpoint: path)
        defer { close(connection) }
        let answer = try ControlSocket.request(connection, binary: file, name: name)
        if answer == "ok" { return }
        if answer.hasPrefix("error: ") { throw Failure(message: String(answer.dropFirst(7))) }
        throw Failure(message: "the supervisor of \(path) gave no answer")
    }
}

/// How `credfs upgrade` reaches a mount's supervisor (docs/security.md, "The control plane"):
/// a sequenced-packet socket `DIR/PID.sock`, where DIR (`/run/credfs` for root,
/// `/run/user/UID/credfs` for another owner) is a directory of the supervisor's owner that
/// only it can enter, and PID is the supervisor's, which the client learns from the mount
/// (the parent of the process `status` names). No global name another user could take first:
/// only the owner can make files there. Both sides check the other with SO_PEERCRED.
enum ControlSocket {
    /// The request: `UPGRADE=1`, then `BINARY=` the path the caller opened (for messages
    /// only: what runs is the descriptor that comes with it).
    static let request = "UPGRADE=1"
    static let binaryField = "BINARY="

    /// The binary's name in a request, if it is one (else nil).
    static func parse(request text: String) -> String? {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        guard lines.first == Substring(request) else { return nil }
        let name = lines.dropFirst().first { $0.hasPrefix(binaryField) }.map { String($0.dropFirst(binaryField.count)) }
        return String((name ?? "the new binary").prefix(256))
    }

    static func directory(uid: uid_t) -> String { uid == 0 ? "/run/credfs" : "/run/user/\(uid)/credfs" }

    static func path(supervisor: pid_t, uid: uid_t) -> String { directory(uid: uid) + "/\(supervisor).sock" }

    /// Makes the directory, or checks the one there: a directory (not a link) owned by
    /// `uid` that no one else may enter. Returns the problem, or nil.
    static func prepareDirectory(uid: uid_t) -> String? {
        let dir = directory(uid: uid)
        if mkdir(dir, 0o700) != 0, errno != EEXIST {
            return "cannot create \(dir): \(Errno.last)"
        }
        var st = stat()
        guard lstat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, st.st_uid == uid else {
            return "\(dir) is not a directory owned by uid \(uid)"
        }
        if st.st_mode & 0o077 != 0, chmod(dir, 0o700) != 0 {
            return "\(dir) is open to other users and cannot be closed: \(Errno.last)"
        }
        return nil
    }

    /// Removes the sockets of supervisors that no longer run (killed before they could).
    static func removeStale(uid: uid_t) {
        let dir = directory(uid: uid)
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            guard name.hasSuffix(".sock"), let pid = pid_t(name.dropLast(5)), pid > 0 else { continue }
            if kill(pid, 0) != 0, errno == ESRCH { unlink(dir + "/" + name) }
        }
    }

    /// Connects to the supervisor of the mount at `mountpoint`, and checks it is that: the
    /// socket sits in its owner's private directory, and the process at the other end is the
    /// parent of the process serving the mount.
    static func connect(mountpoint: String) throws -> Int32 {
        let noSupervisor =
            "no credfs supervisor serves \(mountpoint) (a mount made with -f or by systemd is upgraded by restarting its unit)"
        // The process serving now; a takeover in between changes it, so look again once.
        for attempt in 0..<3 {
            guard let server = servingPID(mountpoint) else {
                throw Failure(message: "cannot read \(mountpoint)/status to find its server")
            }
            guard let supervisor = Supervisor.processStat(server)?.parent, supervisor > 1 else {
                if attempt < 2 { continue }
                throw Failure(message: noSupervisor)
            }
            guard let owner = realUID(supervisor) else { continue }
            let dir = directory(uid: owner)
            var st = stat()
            guard lstat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR, st.st_uid == owner, st.st_mode & 0o077 == 0
            else { throw Failure(message: noSupervisor) }
            let path = path(supervisor: supervisor, uid: owner)
            let connection = credfs_connect_seqpacket(path)
            guard connection >= 0 else {
                if errno == EACCES || errno == EPERM {
                    throw Failure(message: "only root or the mount's owner may upgrade \(mountpoint)")
                }
                throw Failure(message: noSupervisor)
            }
            var peer: pid_t = 0
            var peerUid: uid_t = 0
            guard credfs_peer(connection, &peer, &peerUid) == 0, peer == supervisor, peerUid == owner,
                Supervisor.processStat(server)?.parent == supervisor
            else {
                close(connection)
                if attempt < 2 { continue }
                throw Failure(message: "\(path) is not the supervisor of \(mountpoint)")
            }
            return connection
        }
        throw Failure(message: noSupervisor)
    }

    /// The real uid of `pid` (`/proc/PID/status`; the owner of `/proc/PID` is root for a
    /// process that is not dumpable, as the supervisor is not).
    static func realUID(_ pid: pid_t) -> uid_t? {
        guard let text = SmallFile.text("/proc/\(pid)/status"),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("Uid:") })
        else { return nil }
        return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first.flatMap { uid_t($0) }
    }

    /// The `pid` in the mount's `status`.
    static func servingPID(_ mountpoint: String) -> pid_t? {
        struct Serving: Decodable { var pid: Int32 }
        guard let text = SmallFile.text(mountpoint + "/status"),
            let status = try? JSONDecoder().decode(Serving.self, from: Data(text.utf8)), status.pid > 0
        else { return nil }
        return status.pid
    }

    /// Sends the request with the binary open at `binary`, and waits for the one-line answer:
    /// it comes once the new process serves or the upgrade failed (bounded by the
    /// supervisor's own deadlines: 5 s + 5 s + 10 s + 10 s).
    static func request(_ connection: Int32, binary: Int32, name: String) throws -> String {
        let bytes = Array((request + "\n" + binaryField + name).utf8.prefix(4000))
        var fds = [binary]
        let sent = bytes.withUnsafeBytes { raw in
            credfs_send_message(connection, nil, 0, raw.baseAddress, raw.count, &fds, 1)
        }
        guard sent == 0 else { throw Failure(message: "cannot send the request: \(Errno.last)") }
        var poller = pollfd(fd: connection, events: Int16(POLLIN), revents: 0)
        let deadline = ContinuousClock.now + .seconds(60)
        var buffer = [UInt8](repeating: 0, count: 1024)
        while ContinuousClock.now < deadline {
            let ready = poll(&poller, 1, 1000)
            if ready < 0, errno != EINTR { break }
            if ready <= 0 { continue }
            let n = recv(connection, &buffer, buffer.count, 0)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            return String(decoding: buffer.prefix(n), as: UTF8.self).split(separator: "\n").first.map(String.init)
                ?? ""
        }
        return ""
    }

    /// One line to the caller, never waiting (a caller that went away just misses it).
    static func reply(_ connection: Int32, _ line: String) {
        let bytes = Array((line + "\n").utf8)
        _ = bytes.withUnsafeBytes { credfs_send_message(connection, nil, 0, $0.baseAddress, $0.count, nil, 0) }
    }
}
