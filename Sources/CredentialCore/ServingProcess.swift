import FoundationEssentials
import Synchronization

/// Facts about the process serving a mount that `status` shows (see docs/hitless.md).
public enum ServingProcess {
    private static let takeovers = Atomic<Int>(0)
    private static let carried = Mutex<String?>(nil)

    /// How many servers took over the mount since it was made (0 for the one that mounted).
    public static var restarts: Int {
        get { takeovers.load(ordering: .relaxed) }
        set { takeovers.store(newValue, ordering: .relaxed) }
    }

    /// What this process took over from its predecessor: `restored` (its state), `behind`
    /// (its state, older than the generation it last announced), `missing` (no state was
    /// stored) or `unreadable`; nil for the process that mounted.
    public static var carriedState: String? {
        get { carried.withLock { $0 } }
        set { carried.withLock { $0 = newValue } }
    }
}

extension Published {
    /// The generation a previous server served, as a successor carries it over.
    public init(carried credentials: Credentials, generation: Int, fetchedAt: Date) {
        self.init(credentials: credentials, generation: generation, fetchedAt: fetchedAt)
    }
}

extension Refresher {
    /// A successor's start: serve what the previous server served, with no upstream request
    /// unless its refresh is due (``RefreshMachine/restore(_:upstreamRequests:lastRefresh:now:jitter:)``).
    /// `clockSkew`: the previous server's measured skew (``RefreshMachine/clockSkew``).
    public func restore(
        _ published: Published, upstreamRequests: Int, lastRefresh: Date?, clockSkew: TimeInterval? = nil
    ) {
        let now = clock.now()
        let jitter = random()
        inner.withLock {
            $0.machine.restore(
                published, upstreamRequests: upstreamRequests, lastRefresh: lastRefresh, now: now, jitter: jitter,
                clockSkew: clockSkew)
        }
        wakeup.signal()
    }

    /// A successor's counts and generation floor (``RefreshMachine/carry(upstreamRequests:generationFloor:)``).
    public func carry(upstreamRequests: Int, generationFloor: Int) {
        inner.withLock { $0.machine.carry(upstreamRequests: upstreamRequests, generationFloor: generationFloor) }
    }
}
