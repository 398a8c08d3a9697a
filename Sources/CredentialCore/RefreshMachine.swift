import FoundationEssentials
import Glibc  // pow

/// The states `status` shows (docs/contract.md, "`status`").
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

/// When to refresh, and how to back off (docs/contract.md, "Refreshing"). All times in seconds.
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
    /// A set fetched off schedule (the first after start, or the first after failures)
    /// plans its prefetch anywhere in this fraction of the time between the fetch and the
    /// steady prefetch point, so daemons that start (or recover) together spread over a
    /// whole refresh period instead of marching in step (docs/operations.md, fleet policy).
    public var spreadFraction: TimeInterval = 1.0
    /// The spread window opens this long after the fetch (at most half the lifetime), so a
    /// daemon that has just started does not ask again at once.
    public var spreadMinDelay: TimeInterval = 60
    /// Skew the local clock may be behind the cloud's before credfs follows the cloud's.
    public var skewTolerance: TimeInterval = 5
    /// The least lifetime an answer must have left, by the cloud's clock, to be accepted:
    /// less is of no use to a reader, and would plan the next request at once
    /// (docs/decisions.md, "Too short to serve").
    public var minimumLifetime: TimeInterval = 1

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
///
/// Its state is three values, so combinations that cannot happen cannot be written: what is
/// held (``held``: nothing, or a set with its schedule), the upstream request (``request``:
/// one scheduled, or one in flight since an instant) and the health of the last answers
/// (``health``: healthy, or failing with a count and an error). The other fields are counts
/// and facts that only accumulate.
public struct RefreshMachine: Sendable {
    /// The set held and when to replace it.
    public struct Held: Sendable {
        public let published: Published
        /// When the set should be replaced (prefetch point, with its jitter).
        public let prefetchAt: Date
        /// When it would be replaced on the steady schedule (10% jitter); an unchanged
        /// answer before it waits for it rather than polling. nil for a carried set.
        public let steadyPrefetchAt: Date?
        /// The set was not fetched on the steady schedule (the first after start, a carried
        /// one, one that repeated a spread set): the next new set's prefetch is spread.
        var offSchedule: Bool
    }

    public enum Request: Sendable, Equatable {
        /// No request in flight; the next one is due at this instant.
        case scheduled(Date)
        /// A request began at `since`; `scheduled` is the instant that was due (moved
        /// earlier by ``requestNow(at:)``), which its outcome replaces.
        case inFlight(since: Date, scheduled: Date)
    }

    public enum Health: Sendable, Equatable {
        case healthy
        /// The last `count` (at least 1) requests failed, the last with `lastError`.
        case failing(count: Int, lastError: String)
    }

    public let policy: RefreshPolicy
    /// The set held; nil: none yet (and the first set is off schedule).
    public private(set) var held: Held?
    public private(set) var request: Request
    public private(set) var health: Health = .healthy
    /// When the last valid answer arrived.
    public private(set) var lastRefresh: Date?
    /// Upstream requests begun (carried over a takeover).
    public private(set) var upstreamRequests = 0
    /// Generations at or below this are never numbered again (a successor's floor,
    /// docs/hitless.md): the next new set is `max(generation, generationFloor) + 1`.
    public private(set) var generationFloor = 0
    /// The cloud's clock minus the local clock, from the last answer's HTTP `Date`
    /// (positive: the local clock is behind); nil until an upstream has told.
    public private(set) var clockSkew: TimeInterval?
    /// How each finished upstream request ended, counted since start.
    public private(set) var results = RefreshResults()
    /// How long each finished upstream request took (begin to answer), in seconds.
    public private(set) var durations = DurationHistogram()

    public init(policy: RefreshPolicy, now: Date) {
        self.policy = policy
        self.request = .scheduled(now)
    }

    /// The set held, if any (even expired).
    public var published: Published? { held?.published }

    /// When the current set should be replaced (prefetch point, with its jitter).
    public var prefetchAt: Date? { held?.prefetchAt }

    /// When the current set would be replaced on the steady schedule.
    public var steadyPrefetchAt: Date? { held?.steadyPrefetchAt }

    /// When the next request is due (while one is in flight: the instant that was due).
    public var nextRefresh: Date {
        switch request {
        case .scheduled(let at), .inFlight(_, let at): at
        }
    }

    public var inFlight: Bool {
        guard case .inFlight = request else { return false }
        return true
    }

    public var consecutiveFailures: Int {
        guard case .failing(let count, _) = health else { return 0 }
        return count
    }

    public var lastError: String? {
        guard case .failing(_, let error) = health else { return nil }
        return error
    }

    /// The skew expiry and scheduling follow: the measured skew when the local clock is
    /// behind by more than ``RefreshPolicy/skewTolerance``, else 0 (a clock that is ahead
    /// only makes credfs more careful).
    public var effectiveSkew: TimeInterval {
        guard let clockSkew, clockSkew > policy.skewTolerance else { return 0 }
        return clockSkew
    }

    /// The cloud's time at local time `now`.
    public func cloudTime(_ now: Date) -> Date { now.addingTimeInterval(effectiveSkew) }

    /// The local instant at which the current set expires by the cloud's clock.
    public var localExpiry: Date? {
        published?.credentials.expiration.map { $0.addingTimeInterval(-effectiveSkew) }
    }

    /// An upstream answer carried the cloud's time `serverDate`; it arrived at local `now`.
    /// Call before ``succeeded(_:at:jitter:)`` so the answer is scheduled by it.
    public mutating func observeClock(serverDate: Date, at now: Date) {
        clockSkew = serverDate.timeIntervalSince(now)
    }

    public func state(at now: Date) -> RefreshState {
        guard let published else { return .pending }
        if !published.credentials.isValid(at: cloudTime(now)) { return .expired }
        if case .failing = health { return .stale }
        return inFlight ? .refreshing : .fresh
    }

    /// The credentials to serve at `now`: nil while pending or once expired.
    public func serving(at now: Date) -> Published? {
        guard let published, published.credentials.isValid(at: cloudTime(now)) else { return nil }
        return published
    }

    public func isDue(at now: Date) -> Bool {
        guard case .scheduled(let at) = request else { return false }
        return now >= at
    }

    /// Starts an upstream request. Returns false if one is already in flight (single-flight).
    public mutating func begin(at now: Date) -> Bool {
        guard case .scheduled(let due) = request else { return false }
        request = .inFlight(since: now, scheduled: due)
        upstreamRequests += 1
        return true
    }

    /// Asks for a refresh as soon as possible (SIGHUP).
    public mutating func requestNow(at now: Date) {
        reschedule(min(nextRefresh, now))
    }

    /// Moves the due instant, in flight or not.
    mutating func reschedule(_ due: Date) {
        switch request {
        case .scheduled: request = .scheduled(due)
        case .inFlight(let since, _): request = .inFlight(since: since, scheduled: due)
        }
    }

    public enum Outcome: Sendable, Equatable {
        /// A new generation was published.
        case rotated(generation: Int)
        /// The upstream repeated the credentials already held.
        case unchanged
        /// The answer expires too soon by the cloud's clock: counted as a failure, with this
        /// reason (no secret in it), and what is held is kept.
        case rejected(String)
    }

    /// A valid answer arrived. `jitter` is a uniform draw from [0, 1).
    @discardableResult
    public mutating func succeeded(_ credentials: Credentials, at now: Date, jitter: Double)
        -> Outcome
    {
        // The parser judged the Expiration by the local clock; the cloud's may say it has
        // passed (or nearly): such an answer never replaces what is held, and is retried
        // with backoff like any failure.
        if let reason = tooShort(credentials, at: now) {
            failed(reason, at: now, jitter: jitter)
            return .rejected(reason)
        }
        finish(at: now)
        // Off schedule: the first set, or the first after failures.
        let spread = (held?.offSchedule ?? true) || health != .healthy
        health = .healthy
        lastRefresh = now
        // Expiry and schedule follow the cloud's clock when the local one is behind.
        let skew = effectiveSkew
        let cloudNow = now.addingTimeInterval(skew)
        if let current = held, current.published.credentials == credentials {
            // Same answer: back on the prefetch schedule if it has not come yet (the steady
            // one, when an early spread refresh found nothing new), otherwise poll until new
            // credentials come or these expire.
            held?.offSchedule = spread
            results.unchanged += 1
            if now < current.prefetchAt {
                request = .scheduled(current.prefetchAt)
            } else if let steady = current.steadyPrefetchAt, now < steady {
                request = .scheduled(steady)
            } else if let expiration = credentials.expiration {
                let remaining = expiration.timeIntervalSince(cloudNow)
                let delay = max(policy.unchangedPollMin, min(policy.unchangedPollMax, remaining / 10))
                request = .scheduled(now.addingTimeInterval(delay))
            } else {
                request = .scheduled(.distantFuture)
            }
            return .unchanged
        }
        let generation = max(published?.generation ?? 0, generationFloor) + 1
        let published = Published(credentials: credentials, generation: generation, fetchedAt: now)
        results.success += 1
        var prefetchAt = Date.distantFuture
        var steadyPrefetchAt = Date.distantFuture
        if let expiration = credentials.expiration {
            // Planned on the cloud's clock, then turned back into local time.
            let lifetime = expiration.timeIntervalSince(cloudNow)
            let lead = policy.refreshLead(lifetime: lifetime)
            let steady = expiration.addingTimeInterval(-lead - jitter * policy.jitterFraction * lead)
            // Never plan the next request sooner than half the lifetime (at most 1 s) away:
            // a --refresh-before longer than the lifetime must not turn into a busy loop.
            let earliest = cloudNow.addingTimeInterval(min(1, lifetime / 2))
            let steadyAt = max(steady, earliest)
            var planned = steadyAt
            if spread {
                // Off schedule: anywhere in the last spreadFraction of [opens, steady].
                let opens = cloudNow.addingTimeInterval(min(policy.spreadMinDelay, lifetime / 2))
                let window = max(0, steadyAt.timeIntervalSince(opens)) * min(max(policy.spreadFraction, 0), 1)
                planned = steadyAt.addingTimeInterval(-jitter * window)
            }
            steadyPrefetchAt = steadyAt.addingTimeInterval(-skew)
            prefetchAt = planned.addingTimeInterval(-skew)
        }
        held = Held(
            published: published, prefetchAt: prefetchAt, steadyPrefetchAt: steadyPrefetchAt,
            offSchedule: false)
        request = .scheduled(prefetchAt)
        return .rotated(generation: generation)
    }

    /// A successor's start (after a crash or an upgrade): serve `carried`, the generation the
    /// previous server served, and plan the next refresh as if it had arrived at its
    /// `fetchedAt`. Makes no upstream request; if the refresh point has passed, the next
    /// refresh is due at once (and a failing upstream leaves `carried` served until expiry).
    ///
    /// `clockSkew` is the previous server's measured skew, so expiry, scheduling and
    /// ``cloudTime(_:)`` (the clock pins are kept in) go on as they were; nil, or a value
    /// that is not finite or beyond ten years, leaves the skew unknown.
    public mutating func restore(
        _ carried: Published, upstreamRequests: Int, lastRefresh: Date?, now: Date, jitter: Double,
        clockSkew: TimeInterval? = nil
    ) {
        if let clockSkew, clockSkew.isFinite, abs(clockSkew) < 10 * 365 * 86_400 { self.clockSkew = clockSkew }
        self.upstreamRequests = upstreamRequests
        self.lastRefresh = lastRefresh
        var prefetchAt = Date.distantFuture
        if let expiration = carried.credentials.expiration {
            // The expiration is on the cloud's clock, `fetchedAt` on the local one.
            let skew = effectiveSkew
            let localExpiration = expiration.addingTimeInterval(-skew)
            let lifetime = localExpiration.timeIntervalSince(carried.fetchedAt)
            let lead = policy.refreshLead(lifetime: lifetime)
            let planned = localExpiration.addingTimeInterval(-lead - jitter * policy.jitterFraction * lead)
            let earliest = carried.fetchedAt.addingTimeInterval(min(1, max(lifetime, 0) / 2))
            prefetchAt = max(planned, earliest)
        }
        // A carried set was not fetched on this process's schedule: the next one spreads.
        held = Held(published: carried, prefetchAt: prefetchAt, steadyPrefetchAt: nil, offSchedule: true)
        reschedule(max(prefetchAt, now))
    }

    /// Why an answer arriving at `now` is of no use, or nil: it has less than
    /// ``RefreshPolicy/minimumLifetime`` left by the cloud's clock.
    func tooShort(_ credentials: Credentials, at now: Date) -> String? {
        guard let expiration = credentials.expiration else { return nil }
        let skew = effectiveSkew
        let remaining = expiration.timeIntervalSince(now.addingTimeInterval(skew))
        guard remaining < policy.minimumLifetime else { return nil }
        let byCloud = skew > 0 ? " by the cloud's clock" : ""
        let note =
            skew > 0
            ? " (the upstream's Date is \(Int(clamping: skew, rounding: .toNearestOrAwayFromZero)) s ahead of the local clock)"
            : ""
        let stamp = Timestamp.format(expiration)
        if remaining <= 0 {
            let ago = Int(clamping: -remaining, rounding: .down)
            return "answer already expired\(byCloud): Expiration \(stamp) was \(ago) s ago\(note)"
        }
        let least = Int(clamping: policy.minimumLifetime, rounding: .up)
        return "answer expires too soon\(byCloud): Expiration \(stamp) is less than \(least) s away\(note)"
    }

    /// A successor's counts that did not come with credentials (the store's floor): the
    /// upstream requests made so far, and the highest generation ever announced. Both only
    /// go up.
    public mutating func carry(upstreamRequests: Int, generationFloor: Int) {
        self.upstreamRequests = max(self.upstreamRequests, upstreamRequests)
        self.generationFloor = max(self.generationFloor, generationFloor)
    }

    /// The upstream failed or answered something invalid: keep serving what is held, and
    /// retry after a full-jitter exponential backoff. `jitter` is a uniform draw from [0, 1).
    public mutating func failed(_ error: String, at now: Date, jitter: Double) {
        finish(at: now)
        results.failure += 1
        health = .failing(count: consecutiveFailures + 1, lastError: error)
        request = .scheduled(now.addingTimeInterval(retryDelay(jitter: jitter)))
    }

    /// Records the duration of the request in flight, if one is.
    mutating func finish(at now: Date) {
        if case .inFlight(let since, _) = request { durations.observe(max(0, now.timeIntervalSince(since))) }
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

/// What `status` shows: a copy of the refresher's facts at one instant, no secret in it,
/// and the serving process's facts as the executable supplied them.
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
    /// The process serving the mount and how it serves reads, as the executable tells it
    /// (``CredentialViewSource/reportServing(_:)``); nil: not told, and `status` shows none
    /// of these fields.
    public var serving: ServingFacts?
    /// The cloud's clock minus the local clock in whole seconds; nil until measured.
    public var clockSkewSeconds: Int?
    /// Finished upstream requests by outcome (metrics).
    public var results: RefreshResults
    /// Upstream request durations (metrics).
    public var durations: DurationHistogram

    public init(
        machine: RefreshMachine, provider: String, mountedAt: Date, version: String, now: Date
    ) {
        let published = machine.published
        state = machine.state(at: now)
        self.provider = provider
        generation = published?.generation ?? 0
        maskedAccessKeyId = published?.credentials.maskedAccessKeyId
        expiration = published?.credentials.expiration
        let cloudNow = machine.cloudTime(now)
        secondsRemaining = expiration.map { max(0, Int(clamping: $0.timeIntervalSince(cloudNow), rounding: .down)) }
        lastRefresh = machine.lastRefresh
        switch machine.request {
        case .inFlight: nextRefresh = nil
        case .scheduled(let due): nextRefresh = due == .distantFuture ? nil : due
        }
        consecutiveFailures = machine.consecutiveFailures
        lastError = machine.lastError
        upstreamRequests = machine.upstreamRequests
        self.mountedAt = mountedAt
        self.version = version
        results = machine.results
        durations = machine.durations
        clockSkewSeconds = machine.clockSkew.map { Int(clamping: $0, rounding: .toNearestOrAwayFromZero) }
    }
}

extension Int {
    /// A Double turned into an Int without trapping: NaN is 0, out-of-range values clamp.
    init(clamping value: Double, rounding rule: FloatingPointRoundingRule) {
        let rounded = value.rounded(rule)
        if rounded.isNaN {
            self = 0
        } else if rounded >= 9.2e18 {
            self = .max
        } else if rounded <= -9.2e18 {
            self = .min
        } else {
            self = Int(rounded)
        }
    }
}

/// Finished upstream requests by how they ended: a new generation, the set already held,
/// or a failure (error or rejected answer).
public struct RefreshResults: Sendable, Equatable {
    public var success = 0
    public var unchanged = 0
    public var failure = 0
    public init() {}
}

/// A cumulative histogram of durations in seconds, with Prometheus' default buckets.
public struct DurationHistogram: Sendable, Equatable {
    public static let bounds: [Double] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
    /// Observations at or below each bound (cumulative), in the order of ``bounds``.
    public private(set) var cumulative = [Int](repeating: 0, count: DurationHistogram.bounds.count)
    public private(set) var count = 0
    public private(set) var sum: Double = 0
    public init() {}

    public mutating func observe(_ seconds: Double) {
        guard seconds.isFinite else { return }
        count += 1
        sum += seconds
        for (index, bound) in Self.bounds.enumerated() where seconds <= bound { cumulative[index] += 1 }
    }
}

/// Facts about the process serving the mount and how it serves reads, for `status` and
/// the metrics: plain values the executable supplies, so the core knows no FUSE and no
/// process (``CredentialViewSource/reportServing(_:)``).
public struct ServingFacts: Sendable, Equatable {
    /// The process serving the mount now.
    public var pid: Int
    /// How many processes took over the mount since it was made (0 for the one that mounted).
    public var restarts: Int
    /// What this process took over from its predecessor (docs/hitless.md): `restored`,
    /// `behind`, `missing`, `unreadable`, or `none` for the process that mounted.
    public var carriedState: String
    /// `default`, or `kernel-cache` when opens never reach the daemon.
    public var mode: String
    /// Requests waiting for the first credentials now.
    public var parkedRequests: Int
    /// OPEN requests the daemon has answered since it started.
    public var openRequests: Int
    /// Versioned inodes (one per generation and file) the daemon holds bytes for now.
    public var versionedInodes: Int
    /// Open file and directory handles now.
    public var openHandles: Int

    public init(
        pid: Int, restarts: Int, carriedState: String, mode: String, parkedRequests: Int, openRequests: Int,
        versionedInodes: Int = 0, openHandles: Int = 0
    ) {
        self.pid = pid
        self.restarts = restarts
        self.carriedState = carriedState
        self.mode = mode
        self.parkedRequests = parkedRequests
        self.openRequests = openRequests
        self.versionedInodes = versionedInodes
        self.openHandles = openHandles
    }
}
