import Posix
import Synchronization

/// When the daemon gives back the pages it used only to start or to refresh
/// (`ResidentPages`): once the mount is live, and after each new generation, a moment
/// later, so that the code that ran around it (logging, invalidation) is done. Requests
/// close together share one pass; it runs on its own task, never on a FUSE thread.
enum MemoryTrim {
    private static let pending = Mutex(false)

    /// Seconds between a request and the pass.
    static let delay: Duration = .seconds(1)

    static func soon() {
        let start = pending.withLock { scheduled -> Bool in
            if scheduled { return false }
            scheduled = true
            return true
        }
        guard start else { return }
        Task.detached(priority: .background) {
            try? await Task.sleep(for: delay)
            pending.withLock { $0 = false }
            ResidentPages.releaseCleanFilePages()
        }
    }
}
