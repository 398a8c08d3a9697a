import Synchronization

/// sd_notify(3) without libsystemd: `READY=1`, `STATUS=` and `STOPPING=1` through the
/// server's store transport (``FDStore/send(_:fds:)``: never waiting). Readiness and status
/// go to systemd only (the supervisor has no use for them); `STOPPING=1` to either manager.
final class SystemdNotifier: Sendable {
    private let sentReady = Mutex(false)
    private let toSystemd: Bool

    init(manager: FDStore.Manager = FDStore.manager) {
        if case .systemd = manager { toSystemd = true } else { toSystemd = false }
    }

    /// `READY=1` (once) with a status line.
    func ready(status: String) {
        guard toSystemd else { return }
        let first = sentReady.withLock { ready -> Bool in
            defer { ready = true }
            return !ready
        }
        FDStore.send(first ? .ready(status: status) : .status(status))
    }

    func status(_ line: String) {
        guard toSystemd else { return }
        FDStore.send(.status(line))
    }

    func stopping() { FDStore.send(.stopping) }
}
