import FoundationEssentials
import Glibc
import Posix
import Synchronization

/// sd_notify(3) without libsystemd: `READY=1`, `STATUS=` and `STOPPING=1` through the
/// server's store transport (``FDStore/send(_:fds:to:)``). Readiness and status go to
/// systemd only (the supervisor has no use for them); `STOPPING=1` to either manager.
///
/// Never waits: its callers are the refresher and the start of serving. A message the
/// manager does not take now (stalled, or its queue full) is kept, merged with later ones
/// (`READY=1` until it went, the latest `STATUS=`), and sent from a thread of its own when
/// the manager takes it again.
final class SystemdNotifier: Sendable {
    private let manager: FDStore.Manager
    private let toSystemd: Bool

    private struct Pending {
        var sentReady = false
        var ready = false
        var status: String?
        var stopping = false
        /// A retry thread is running.
        var retrying = false

        var isEmpty: Bool { !ready && status == nil && !stopping }
    }
    private let pending = Mutex(Pending())

    init(manager: FDStore.Manager = FDStore.manager) {
        self.manager = manager
        if case .systemd = manager { toSystemd = true } else { toSystemd = false }
    }

    /// systemd's `$NOTIFY_SOCKET` as `environment` names it (none: a no-op notifier).
    convenience init(environment: [String: String]) {
        let path = environment[StoreProtocol.Systemd.notifySocket] ?? ""
        self.init(manager: path.isEmpty ? .none : .systemd(socket: path))
    }

    /// `READY=1` (once) with a status line.
    func ready(status: String) {
        guard toSystemd else { return }
        update {
            if !$0.sentReady {
                $0.ready = true
                $0.sentReady = true
            }
            $0.status = status
        }
    }

    func status(_ line: String) {
        guard toSystemd else { return }
        update { $0.status = line }
    }

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

    /// Whether something is still waiting for the manager (for tests).
    var isPending: Bool { pending.withLock { !$0.isEmpty } }

    private func update(_ change: (inout Pending) -> Void) {
        if case .none = manager { return }
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
            if pending.ready || pending.status != nil {
                let message: StoreProtocol.Message =
                    pending.ready ? .ready(status: pending.status ?? "") : .status(pending.status ?? "")
                guard send(message) else { return false }
                pending.ready = false
                pending.status = nil
            }
            if pending.stopping {
                guard send(.stopping) else { return false }
                pending.stopping = false
            }
            return true
        }
    }

    /// True when sent, or refused for good (nothing a retry mends); false: try again later.
    private func send(_ message: StoreProtocol.Message) -> Bool {
        if FDStore.send(message, to: manager) { return true }
        return ![EAGAIN, EWOULDBLOCK, ENOBUFS, EINTR, ENOMEM].contains(errno)
    }
}
