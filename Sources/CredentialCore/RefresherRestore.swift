import FoundationEssentials

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
