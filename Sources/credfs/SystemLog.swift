import CPosixIPC
import Glibc
import Logging
import Posix

/// A swift-log handler that sends each line to the system log (`/dev/log`, read by
/// journald or rsyslog) as `credfs[PID]`, facility daemon. Used by a background daemon
/// that has no `--log-file`; lines are dropped when there is no system log.
struct SystemLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let label: String

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(
        level: Logger.Level, message: Logger.Message, metadata explicit: Logger.Metadata?, source: String,
        file: String, function: String, line: UInt
    ) {
        let all = metadata.merging(explicit ?? [:]) { $1 }
        let fields = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let text = "\(level): \(message)\(fields.isEmpty ? "" : " " + fields)"
        let line = "<\(3 * 8 + Self.severity(level))>credfs[\(getpid())]: \(text)"
        Self.send(Array(line.utf8))
    }

    static func severity(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// One datagram to `/dev/log`, never waiting (the fd store's sender, `credfs_send_fds`).
    static func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { credfs_send_fds("/dev/log", $0.baseAddress, $0.count, nil, 0) }
    }
}

/// Log lines appended to a file (`--log-file`), one `write` each.
///
/// The daemon runs as root and the path may lie in a directory others can write to: the
/// file is opened with `O_NOFOLLOW` (a planted symlink is refused, never followed) and
/// kept only if it is a regular file with one link owned by the user credfs runs as, that
/// is root's own log or one it just created (docs/security.md, "Log file").
final class FileHandleOutputStream: TextOutputStream, Sendable {
    let fd: Int32

    /// Opens `path` for appending, or throws the one-line reason.
    init(appendingTo path: String) throws(Failure) {
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0o600)
        guard fd >= 0 else {
            let reason = errno == ELOOP ? "it is a symlink" : Errno.last
            throw Failure(message: "cannot open the log file \(path): \(reason)")
        }
        var st = stat()
        let refusal: String?
        if fstat(fd, &st) != 0 {
            refusal = Errno.last
        } else if st.st_mode & S_IFMT != S_IFREG {
            refusal = "not a regular file"
        } else if st.st_uid != geteuid() {
            refusal = "owned by uid \(st.st_uid), not by uid \(geteuid()) that credfs runs as"
        } else if st.st_nlink != 1 {
            refusal = "it has \(st.st_nlink) hard links"
        } else {
            refusal = nil
        }
        if let refusal {
            close(fd)
            throw Failure(message: "refusing the log file \(path): \(refusal)")
        }
        // Writes block like any log's: only the open was non-blocking (a FIFO at the path).
        _ = fcntl(fd, F_SETFL, O_WRONLY | O_APPEND)
        self.fd = fd
    }

    deinit { close(fd) }

    func write(_ string: String) {
        let bytes = Array(string.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
