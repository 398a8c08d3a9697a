import Foundation

/// The states of SPEC section 5.
public enum RefreshState: String, Sendable {
    /// No credentials yet.
    case pending
    /// Valid credentials, refresh schedule on track.
    case fresh
    /// Valid credentials, a refresh is in flight.
    case refreshing
    /// Valid credentials, but the last refresh failed.
    case stale
    /// The last credentials expired and nothing has replaced them.
    case expired
}

/// When to refresh, and how to back off (SPEC section 4). All times in seconds.
public struct RefreshPolicy: Sendable, Equatable {
    /// Refresh when this much lifetime is left; nil: min(15 min, lifetime / 3).
    public var refreshBefore: TimeInterval?
    public var jitterFraction: TimeInterval = 0.10
    public var backoffBase: TimeInterval = 1
    public var backoffCap: TimeInterval = 60
    /// A zero-delay retry would spin: full jitter is drawn from [minimumRetry, backoff].
    public var minimumRetry: TimeInterval = 0.1
    public var unchangedPollMax: TimeInterval = 30
    public var unchangedPollMin: TimeInterval = 1

    public init(refreshBefore: TimeInterval? = nil) { self.refreshBefore = refreshBefore }

    /// How long before expiry a set fetched with `lifetime` should be replaced.
    public func refreshLead(lifetime: TimeInterval) -> TimeInterval {
        refreshBefore ?? min(15 * 60, lifetime / 3)
    }
}

/// The credentials being served, with the facts about them that views need.
public struct Published: Sendable {
    public let credentials: Credentials
    /// 1 for the first credentials, +1 at each rotation.
    public let generation: Int
    /// When the answer carrying them arrived: the files' `st_mtime`.
    public let fetchedAt: Date
}

/// The refresher as an explicit state machine: every input carries the time it happens at
/// and every random draw is passed in, so tests drive it without clocks or sleeps.
///
/// The driver calls ``begin(at:)`` when ``nextRefresh`` is due (or on demand), then exactly
/// one of ``succeeded(_:at:jitter:)`` or ``failed(_:at:jitter:)``.
public struct RefreshMachine: Sendable {
    public let policy: RefreshPolicy
    public private(set) var published: Published?
    /// When the current set should be replaced (prefetch point, with its jitter).
    public private(set) var prefetchAt: Date?
    public private(set) var nextRefresh: Date
    public private(set) var lastRefresh: Date?
    public private(set) var consecutiveFailures = 0
    public private(set) var lastError: String?
    public private(set) var upstreamRequests = 0
    public private(set) var inFlight = false

    public init(policy: RefreshPolicy, now: Date) {
        self.policy = policy
        self.nextRefresh = now
    }

    public func state(at now: Date) -> RefreshState {
        guard let published else { return .pending }
        if !published.credentials.isValid(at: now) { return .expired }
        if consecutiveFailures > 0 { return .stale }
        return inFlight ? .refreshing : .fresh
    }

    /// The credentials to serve at `now`: nil while pending or once expired.
    public func serving(at now: Date) -> Published? {
        guard let published, published.credentials.isValid(at: now) else { return nil }
        return published
    }

    public func isDue(at now: Date) -> Bool { !inFlight && now >= nextRefresh }

    /// Starts an upstream request. Returns false if one is already in flight (single-flight).
    public mutating func begin(at now: Date) -> Bool {
        guard !inFlight else { return false }
        inFlight = true
        upstreamRequests += 1
        return true
    }

    /// Asks for a refresh as soon as possible (SIGHUP).
    public mutating func requestNow(at now: Date) {
        nextRefresh = min(nextRefresh, now)
    }

    public enum Outcome: Sendable, Equatable {
        /// A new generation was published.
        case rotated(generation: Int)
        /// The upstream repeated the credentials already held.
        case unchanged
    }

    /// A valid answer arrived. `jitter` is a uniform draw from [0, 1).
    @discardableResult
    public mutating func succeeded(_ credentials: Credentials, at now: Date, jitter: Double)
        -> Outcome
    {
        inFlight = false
        consecutiveFailures = 0
        lastError = nil
        lastRefresh = now
        if let current = published, current.credentials == credentials {
            // Same answer: back on the prefetch schedule if it has not come yet, otherwise
            // poll until new credentials come or these expire.
            if let prefetchAt, now < prefetchAt {
                nextRefresh = prefetchAt
            } else if let expiration = credentials.expiration {
                let remaining = expiration.timeIntervalSince(now)
                let delay = max(policy.unchangedPollMin, min(policy.unchangedPollMax, remaining / 10))
                nextRefresh = now.addingTimeInterval(delay)
            } else {
                nextRefresh = .distantFuture
            }
            return .unchanged
        }
        let generation = (published?.generation ?? 0) + 1
        published = Published(credentials: credentials, generation: generation, fetchedAt: now)
        if let expiration = credentials.expiration {
            let lifetime = expiration.timeIntervalSince(now)
            let lead = policy.refreshLead(lifetime: lifetime)
            let planned = expiration.addingTimeInterval(-lead - jitter * policy.jitterFraction * lead)
            // Never plan the next request sooner than half the lifetime (at most 1 s) away:
            // a --refresh-before longer than the lifetime must not turn into a busy loop.
            let earliest = now.addingTimeInterval(min(1, lifetime / 2))
            prefetchAt = max(planned, earliest)
        } else {
            prefetchAt = .distantFuture
        }
        nextRefresh = prefetchAt!
        return .rotated(generation: generation)
    }

    /// A successor's start (after a crash or an upgrade): serve `carried`, the generation the
    /// previous server served, and plan the next refresh as if it had arrived at its
    /// `fetchedAt`. Makes no upstream request; if the refresh point has passed, the next
    /// refresh is due at once (and a failing upstream leaves `carried` served until expiry).
    public mutating func restore(
        _ carried: Published, upstreamRequests: Int, lastRefresh: Date?, now: Date, jitter: Double
    ) {
        published = carried
        self.upstreamRequests = upstreamRequests
        self.lastRefresh = lastRefresh
        if let expiration = carried.credentials.expiration {
            let lifetime = expiration.timeIntervalSince(carried.fetchedAt)
            let lead = policy.refreshLead(lifetime: lifetime)
            let planned = expiration.addingTimeInterval(-lead - jitter * policy.jitterFraction * lead)
            let earliest = carried.fetchedAt.addingTimeInterval(min(1, max(lifetime, 0) / 2))
            prefetchAt = max(planned, earliest)
        } else {
            prefetchAt = .distantFuture
        }
        nextRefresh = max(prefetchAt ?? now, now)
    }

    /// The upstream failed or answered something invalid: keep serving what is held, and
    /// retry after a full-jitter exponential backoff. `jitter` is a uniform draw from [0, 1).
    public mutating func failed(_ error: String, at now: Date, jitter: Double) {
        inFlight = false
        consecutiveFailures += 1
        lastError = error
        nextRefresh = now.addingTimeInterval(retryDelay(jitter: jitter))
    }

    /// The backoff ceiling after ``consecutiveFailures`` failures: 1, 2, 4 … 60 s.
    public var backoffCeiling: TimeInterval {
        let exponent = Double(max(consecutiveFailures - 1, 0))
        return min(policy.backoffCap, policy.backoffBase * pow(2, min(exponent, 62)))
    }

    func retryDelay(jitter: Double) -> TimeInterval {
        let ceiling = backoffCeiling
        return policy.minimumRetry + jitter * max(ceiling - policy.minimumRetry, 0)
    }
}

/// What `status` shows: a copy of the refresher's facts at one instant, no secret in it.
public struct StatusSnapshot: Sendable, Equatable {
    public var state: RefreshState
    public var provider: String
    public var generation: Int
    public var maskedAccessKeyId: String?
    public var expiration: Date?
    public var secondsRemaining: Int?
    public var lastRefresh: Date?
    public var nextRefresh: Date?
    public var consecutiveFailures: Int
    public var lastError: String?
    public var upstreamRequests: Int
    public var mountedAt: Date
    public var version: String
    /// The process serving the mount now, and how many took over since it was mounted.
    public var pid: Int = Int(getpid())
    public var restarts: Int = ServingProcess.restarts

    public init(
        machine: RefreshMachine, provider: String, mountedAt: Date, version: String, now: Date
    ) {
        let published = machine.published
        state = machine.state(at: now)
        self.provider = provider
        generation = published?.generation ?? 0
        maskedAccessKeyId = published?.credentials.maskedAccessKeyId
        expiration = published?.credentials.expiration
        secondsRemaining = expiration.map { max(0, Int($0.timeIntervalSince(now).rounded(.down))) }
        lastRefresh = machine.lastRefresh
        nextRefresh =
            machine.inFlight || machine.nextRefresh == .distantFuture ? nil : machine.nextRefresh
        consecutiveFailures = machine.consecutiveFailures
        lastError = machine.lastError
        upstreamRequests = machine.upstreamRequests
        self.mountedAt = mountedAt
        self.version = version
    }
}
