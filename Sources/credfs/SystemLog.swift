import CFuse3
import Glibc
import Logging
import Synchronization

/// A swift-log handler that sends each line to the system log (`/dev/log`, read by
/// journald or rsyslog) as `credfs[PID]`, facility daemon. Used by a background daemon
/// that has no `--log-file`; lines are dropped when there is no system log.
struct SystemLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let label: String
    static let socket = Mutex<Int32>(-1)

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

    static func send(_ bytes: [UInt8]) {
        socket.withLock { fd in
            if fd < 0 {
                fd = Glibc.socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
                guard fd >= 0 else { return }
                var address = sockaddr_un()
                address.sun_family = sa_family_t(AF_UNIX)
                withUnsafeMutableBytes(of: &address.sun_path) { raw in
                    for (i, byte) in "/dev/log".utf8.enumerated() { raw[i] = byte }
                }
                let connected = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                    }
                }
                if connected != 0 {
                    close(fd)
                    fd = -1
                    return
                }
            }
            _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        }
    }
}

/// Log lines appended to a file (`--log-file`), one `write` each.
final class FileHandleOutputStream: TextOutputStream, Sendable {
    let fd: Int32

    init?(appendingTo path: String) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0o600)
        if fd < 0 { return nil }
    }

    deinit { close(fd) }

    func write(_ string: String) {
        let bytes = Array(string.utf8)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    }
}
