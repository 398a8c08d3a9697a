import CredentialCore
import FuseBridge
import Listeners
import Synchronization

/// A slot filled once, read from other threads.
final class Holder<T: AnyObject & Sendable>: Sendable {
    private let stored = Mutex<T?>(nil)
    var value: T? {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }
}

/// What a mount runs until it ends: the FUSE loop, the refresher and the listeners.
///
/// ``run(_:)`` returns when the mount goes away (an unmount, a handover) or after
/// ``shutdown()`` (SIGTERM, SIGINT). Then the listeners stop accepting and the refresher is
/// cancelled. A shutdown or a SIGHUP that comes before ``run(_:)`` (while mounting) is kept
/// and acted on once it runs: signals are trapped before the mount appears.
final class MountServices: Sendable {
    struct Parts: Sendable {
        let fs: FuseFileSystem
        let refresher: Refresher
        let listeners: [HTTPListener]
    }

    private struct State: Sendable {
        var shutdownRequested = false
        var hangupRequested = false
        var parts: Parts?
    }
    private let state = Mutex(State())

    /// SIGTERM, SIGINT: the listeners stop accepting, then the mount is detached (its open
    /// files served for a moment more, ``FuseFileSystem/stop(grace:)``).
    func shutdown() async {
        let parts = state.withLock { s -> Parts? in
            s.shutdownRequested = true
            return s.parts
        }
        if let parts { await Self.stop(parts) }
    }

    /// SIGHUP: refresh now. Remembered until the refresher runs: a successor starts with
    /// carried credentials and no fetch due, so a SIGHUP during its start must not be lost.
    func hangup() {
        let refresher = state.withLock { s -> Refresher? in
            if s.parts == nil { s.hangupRequested = true }
            return s.parts?.refresher
        }
        refresher?.requestRefresh()
    }

    /// Serves until the mount goes away or ``shutdown()``; returns once the refresher has
    /// stopped and the listeners are closed.
    func run(_ parts: Parts) async {
        let (hangup, shutdown) = state.withLock { s in
            s.parts = parts
            return (s.hangupRequested, s.shutdownRequested)
        }
        if hangup { parts.refresher.requestRefresh() }
        if shutdown { await Self.stop(parts) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await parts.refresher.run() }
            await parts.fs.waitUntilStopped()
            group.cancelAll()
        }
        for listener in parts.listeners { await listener.close() }
    }

    private static func stop(_ parts: Parts) async {
        for listener in parts.listeners { await listener.close() }
        parts.fs.stop()
    }
}
