import CFuse3
import FoundationEssentials
import Glibc
import Posix
import Synchronization

/// sd_notify(3) without libsystemd: datagrams to `$NOTIFY_SOCKET` (a path, or `@name` in
/// the abstract namespace). A no-op when the variable is not set.
///
/// Never waits: its callers are the refresher and the start of serving. A message the
/// socket does not take now (a stalled service manager, a full queue) is kept, merged with
/// later ones (`READY=1` until it went, the latest `STATUS=`), and sent from a thread of
/// its own when the socket takes it again.
final class SystemdNotifier: Sendable {
    private let socketPath: String?

    private struct Pending {
        var sentReady = false
        var ready = false
        var status: String?
        var stopping = false
        /// A retry thread is running.
        var retrying = false

        var isEmpty: Bool { !ready && status == nil && !stopping }

        var message: String {
            var lines: [String] = []
            if ready { lines.append("READY=1") }
            if let status { lines.append("STATUS=\(status)") }
            if stopping { lines.append("STOPPING=1") }
            return lines.joined(separator: "\n")
        }
    }
    private let pending = Mutex(Pending())

    init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let path = environment["NOTIFY_SOCKET"] ?? ""
        socketPath = path.isEmpty ? nil : path
    }

    /// `READY=1` (once) with a status line.
    func ready(status: String) {
        update {
            if !$0.sentReady {
                $0.ready = true
                $0.sentReady = true
            }
            $0.status = status
        }
    }

    func status(_ line: String) { update { $0.status = line } }

    /// `STOPPING=1`; the process is about to end, so this one tries for up to `within`.
    func stopping(within: Duration = .milliseconds(500)) {
        update { $0.stopping = true }
        let end = ContinuousClock.now + within
        while !pending.withLock({ $0.isEmpty }), ContinuousClock.now < end {
            var none = pollfd(fd: -1, events: 0, revents: 0)
            _ = poll(&none, 0, 10)
            attempt()
        }
    }

    /// Whether something is still waiting for the socket (for tests).
    var isPending: Bool { pending.withLock { !$0.isEmpty } }

    private func update(_ change: (inout Pending) -> Void) {
        guard socketPath != nil else { return }
        pending.withLock { change(&$0) }
        guard !attempt() else { return }
        let start = pending.withLock { pending -> Bool in
            defer { pending.retrying = true }
            return !pending.retrying
        }
        guard start else { return }
        let started = startThread(name: "credfs-notify") { [self] in
            var delay: Int32 = 10
            while true {
                var none = pollfd(fd: -1, events: 0, revents: 0)
                _ = poll(&none, 0, delay)
                delay = min(delay * 2, 1000)
                let done = attempt()
                let stop = pending.withLock { pending -> Bool in
                    guard done || pending.isEmpty else { return false }
                    pending.retrying = false
                    return true
                }
                if stop { return }
            }
        }
        if !started { pending.withLock { $0.retrying = false } }
    }

    /// Sends what is pending, without waiting. Returns true when nothing is left to send
    /// (sent, or refused for a reason no retry mends).
    @discardableResult
    private func attempt() -> Bool {
        pending.withLock { pending -> Bool in
            guard !pending.isEmpty else { return true }
            switch send(pending.message) {
            case .sent, .failed:
                pending.ready = false
                pending.status = nil
                pending.stopping = false
                return true
            case .later:
                return false
            }
        }
    }

    private enum Outcome { case sent, later, failed }

    private func send(_ message: String) -> Outcome {
        guard let socketPath else { return .failed }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .later }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(socketPath.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.count < capacity else { return .failed }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.enumerated() { raw[i] = byte }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + path.count + (path.first == 0 ? 0 : 1))
        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes {
                    sendto(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL), sa, length)
                }
            }
        }
        if sent >= 0 { return .sent }
        return [EAGAIN, EWOULDBLOCK, ENOBUFS, EINTR, ENOMEM].contains(errno) ? .later : .failed
    }
}
