import Foundation

/// `mount` without `-f`: re-execute this program with `-f` in a new session and wait on a
/// pipe until the child says the mount is live (or why it is not). No fork() of a process
/// that already runs Swift threads.
enum Daemon {
    static func spawnAndWait(arguments: [String], supervise mountpoint: String? = nil) throws {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw Failure(message: "pipe: \(MountPoint.describe(errno))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let readEnd = fds[0]
        let writeEnd = fds[1]
        let childFd: Int32 = 3

        // The daemon outlives this process: it must not keep any descriptor it was not
        // given (a caller's pipe or socket would never see EOF).
        closeOnExecAll(except: [0, 1, 2])

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, writeEnd, childFd)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        let setsid: Int16 = 0x80  // POSIX_SPAWN_SETSID (glibc)
        posix_spawnattr_setflags(&attributes, setsid)

        // With a mount point: a supervisor (Supervisor.swift) that starts the server and
        // starts it again on the same connection if it dies.
        let argv =
            mountpoint.map { Supervisor.arguments(mountpoint: $0, readyFd: childFd, mount: arguments) }
            ?? ["credfs", "mount"] + arguments + ["--foreground", "--ready-fd", String(childFd)]
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, &cArgs, environ)
        close(writeEnd)
        guard spawned == 0 else {
            close(readEnd)
            throw Failure(message: "cannot start the daemon: \(MountPoint.describe(spawned))")
        }

        // Read until the child reports, or closes the pipe by exiting.
        var answer = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            let n = read(readEnd, &buffer, buffer.count)
            if n > 0 {
                answer += buffer[0..<n]
                continue
            }
            if n < 0, errno == EINTR { continue }
            break
        }
        close(readEnd)
        let text = String(decoding: answer, as: UTF8.self).trimmingCharacters(
            in: .whitespacesAndNewlines)
        if text == "ready" { return }
        var status: Int32 = 0
        waitpid(pid, &status, WNOHANG)
        throw Failure(
            message: text.hasPrefix("error: ")
                ? String(text.dropFirst(7)) : "the daemon exited before the mount was live")
    }
}

/// Marks every open descriptor but `keep` close-on-exec.
func closeOnExecAll(except keep: Set<Int32>) {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else {
        return
    }
    for entry in entries {
        guard let fd = Int32(entry), !keep.contains(fd) else { continue }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
    }
}

/// The child's end of the readiness pipe: one line, then closed.
final class ReadinessPipe: Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }

    func succeed() { send("ready\n") }
    func fail(_ message: String) { send("error: \(message)\n") }

    private func send(_ line: String) {
        let bytes = Array(line.utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}
