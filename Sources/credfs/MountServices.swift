import CredentialCore
import FuseBridge
import ServiceLifecycle
import Synchronization

/// A slot filled once, read from other threads.
final class Holder<T: AnyObject & Sendable>: Sendable {
    private let stored = Mutex<T?>(nil)
    var value: T? {
        get { stored.withLock { $0 } }
        set { stored.withLock { $0 = newValue } }
    }
}

/// Serves FUSE until the mount goes away; on SIGTERM/SIGINT unmounts and returns.
struct FuseService: Service {
    let fs: FuseFileSystem
    func run() async throws {
        await withGracefulShutdownHandler {
            await fs.waitUntilStopped()
        } onGracefulShutdown: {
            fs.stop()
        }
    }
}

/// Keeps the credentials fresh until shutdown.
struct RefresherService: Service {
    let refresher: Refresher
    func run() async throws {
        try await cancelWhenGracefulShutdown { [refresher] in
            await refresher.run()
        }
    }
}
