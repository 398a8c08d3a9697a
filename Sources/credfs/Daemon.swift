import FoundationEssentials
import Glibc
import Posix

/// `mount` without `-f`: re-execute this program with `-f` in a new session and wait on a
/// pipe until the child says the mount is live (or why it is not). No fork() of a process
/// that already runs Swift threads.
///
/// The daemon keeps nothing of its caller: stdin, stdout and stderr are /dev/null (so
/// `x=$(credfs mount … 2>&1)` returns), its log goes to `--log-file` or the system log,
/// and it leaves the caller's working directory.
enum Daemon {
    static func spawnAndWait(arguments: [String], supervise mountpoint: String) throws {
        guard let pipe = Spawn.pipe() else { throw Failure(message: "pipe: \(Errno.last)") }

        // The daemon outlives this process: it must not keep any descriptor it was not
        // given (a caller's pipe or socket would never see EOF).
        closeOnExecAll(except: [0, 1, 2])

        // The arguments (secrets among them) go in a sealed memfd, never in argv.
        let argumentsFile = ArgumentsFile.make(
            arguments: arguments, workingDirectory: FileManager.default.currentDirectoryPath)
        guard argumentsFile >= 0 else {
            close(pipe.read)
            close(pipe.write)
            throw Failure(message: "cannot pass the arguments on: \(Errno.last)")
        }
        // Both out of the way of fds 3 and 4 first, so that neither dup2 can clobber the other.
        let readyEnd = fcntl(pipe.write, F_DUPFD_CLOEXEC, 100)
        let argumentsEnd = fcntl(argumentsFile, F_DUPFD_CLOEXEC, 100)
        close(pipe.write)
        close(argumentsFile)
        defer { close(argumentsEnd) }
        guard readyEnd >= 0, argumentsEnd >= 0 else {
            close(pipe.read)
            close(readyEnd)
            throw Failure(message: "cannot pass descriptors on: \(Errno.last)")
        }

        // A supervisor (Supervisor.swift) that starts the server and starts it again on the
        // same connection if it dies.
        var spawn = Spawn(executable: "/proc/self/exe", arguments: Supervisor.arguments(mountpoint: mountpoint))
        spawn.stdin = .null
        spawn.stdout = .null
        spawn.stderr = .null
        spawn.descriptors = [
            (Supervisor.readyDescriptor, readyEnd), (Supervisor.argumentsDescriptor, argumentsEnd),
        ]
        spawn.newSession = true
        let started = spawn.start()
        close(readyEnd)
        let pid: pid_t
        switch started {
        case .success(let child): pid = child
        case .failure(let error):
            close(pipe.read)
            throw Failure(message: "cannot start the daemon: \(error)")
        }

        // Read until the child reports and closes the pipe, or closes it by exiting.
        let answer = PipeReader.read([pipe.read], limits: [4096]).outputs[0]
        close(pipe.read)
        let text = String(decoding: answer, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(String.init)
        if text == "ready" { return }
        var status: Int32 = 0
        waitpid(pid, &status, WNOHANG)
        if let text, text.hasPrefix("error: ") { throw Failure(message: String(text.dropFirst(7))) }
        throw Failure(message: "the daemon exited before the mount was live")
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
