import ArgumentParser
import CFuse3
import FoundationEssentials
import Glibc

/// `credfs upgrade [MOUNTPOINT] [--binary PATH]`: asks the mount's supervisor to replace
/// the serving process by PATH on the same connection (docs/hitless.md).
struct Upgrade: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "upgrade",
        abstract: "Replace the daemon serving a mount by another binary, on the same connection.",
        discussion:
            "Exit 0 once the new process serves. If it cannot, exit 1 with the reason; the mount keeps being served by the previous binary."
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
        let target: String
        if let binary {
            target = binary.hasPrefix("/") ? binary : URL(fileURLWithPath: binary).standardizedFileURL.path
        } else {
            guard let own = Supervisor.ownExecutable() else {
                throw Failure(message: "cannot tell which binary this is; pass --binary")
            }
            target = own
        }
        guard access(target, X_OK) == 0 else {
            throw Failure(message: "\(target) is not an executable file: \(MountPoint.describe(errno))")
        }
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw Failure(message: "pipe: \(MountPoint.describe(errno))") }
        fds.forEach { _ = credfs_set_cloexec($0, 1) }
        defer { close(fds[0]) }
        let sent = FDStoreRequest.send(
            to: Supervisor.socketName(for: path), message: "UPGRADE=1\nBINARY=\(target)", fd: fds[1])
        close(fds[1])
        guard sent else {
            throw Failure(
                message:
                    "no credfs supervisor serves \(path) (a mount made with -f or by systemd is upgraded by restarting its unit)"
            )
        }
        // The answer comes once the new process serves, or the upgrade failed (bounded by
        // the supervisor's own timeouts: 5 s + 5 s + 10 s).
        var answer = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 512)
        var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
        let deadline = Supervisor.now() + 60
        while Supervisor.now() < deadline {
            let ready = poll(&poller, 1, 1000)
            if ready < 0, errno != EINTR { break }
            if ready <= 0 { continue }
            let n = read(fds[0], &buffer, buffer.count)
            if n > 0 {
                answer += buffer[0..<n]
                continue
            }
            if n < 0, errno == EINTR { continue }
            break
        }
        let text = String(decoding: answer, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        if text == "ok" { return }
        if text.hasPrefix("error: ") { throw Failure(message: String(text.dropFirst(7))) }
        throw Failure(message: "the supervisor of \(path) gave no answer")
    }
}

enum FDStoreRequest {
    static func send(to socket: String, message: String, fd: Int32) -> Bool {
        let bytes = Array(message.utf8)
        var fds = [fd]
        return bytes.withUnsafeBytes { raw in
            credfs_send_fds(socket, raw.baseAddress, raw.count, &fds, 1) == 0
        }
    }
}
