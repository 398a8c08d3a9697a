import FoundationEssentials
import Logging
import Synchronization

/// A source of credentials: one fetch per call, validated, or a ``CredentialError``.
public protocol CredentialProvider: Sendable {
    /// The provider's name as `status` and the log show it (`uri`, `demo`, …).
    var name: String { get }
    func fetch() async throws -> Credentials
    /// Secrets this provider knows besides the credentials it returns (a source's key, an
    /// OIDC token): taken out of any upstream text credfs keeps.
    var secrets: [String] { get }
    /// Cheap state worth keeping across a takeover (a metadata token, a discovered role
    /// name), so the next process serving the mount skips the requests whose answers still
    /// hold. nil: nothing to keep. May hold secrets: carried in memory only, never logged.
    var cachedState: ProviderCachedState? { get }
    /// Takes a predecessor's ``cachedState``; what the provider does not recognise, or no
    /// longer trusts (expired, another endpoint, malformed), is ignored.
    func restoreCachedState(_ state: ProviderCachedState)
}

extension CredentialProvider {
    public var secrets: [String] { [] }
    public var cachedState: ProviderCachedState? { nil }
    public func restoreCachedState(_ state: ProviderCachedState) {}
}

/// The one source of wall-clock time in credfs: the refresher, the providers (request
/// timestamps, the instant an answer's Expiration is judged at), the view source and the
/// credentials URI server (through the refresher) and the mount's start all read it. The
/// executable makes one and hands it down; nothing in the core has a default, and tests
/// inject a virtual one. Wall time is only for what is compared with an Expiration (or
/// shown as a date); intervals (timeouts, deadlines, backoff between restarts) use
/// `ContinuousClock`.
public protocol RefreshClock: Sendable {
    func now() -> Date
    func sleep(until deadline: Date) async throws
}

/// The wall clock: the only `Date()` in credfs, made by the executable's commands alone.
public struct SystemRefreshClock: RefreshClock {
    public init() {}
    public func now() -> Date { Date() }
    public func sleep(until deadline: Date) async throws {
        let seconds = deadline.timeIntervalSince(now())
        if seconds > 0 { try await Task.sleep(for: .seconds(min(seconds, 86_400))) }
    }
}

/// Drives a ``RefreshMachine`` against a ``CredentialProvider``: one background loop, at
/// most one upstream request in flight, reads that never touch the network.
public final class Refresher: Sendable {
    public let provider: any CredentialProvider
    public let clock: any RefreshClock
    let random: @Sendable () -> Double
    let logger: Logger
    /// Called after each new generation is published, from the refresher's own task (never
    /// from a reader), so it may notify the kernel.
    let onPublish: @Sendable (Published) -> Void
    /// Called with a new generation just before anyone can be served it, from the
    /// refresher's own task: what must know a generation before readers do (the takeover
    /// state) is told here.
    let beforePublish: @Sendable (Published) -> Void
    /// Called when the credentials held expire without a replacement (from the refresh loop).
    let onExpire: @Sendable () -> Void
    /// Called after each failed refresh with its error and the count of failures in a row.
    let onFailure: @Sendable (String, Int) -> Void

    struct Inner {
        var machine: RefreshMachine
        var flight: Task<Void, Never>?
        var loggedExpiry = false
        var loggedSkew = false
    }
    let inner: Mutex<Inner>
    let wakeup = Wakeup()

    public init(
        provider: any CredentialProvider,
        policy: RefreshPolicy = RefreshPolicy(),
        clock: any RefreshClock,
        random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) },
        logger: Logger = Logger(label: "credfs.refresher"),
        beforePublish: @escaping @Sendable (Published) -> Void = { _ in },
        onPublish: @escaping @Sendable (Published) -> Void = { _ in },
        onExpire: @escaping @Sendable () -> Void = {},
        onFailure: @escaping @Sendable (String, Int) -> Void = { _, _ in }
    ) {
        self.onExpire = onExpire
        self.onFailure = onFailure
        self.provider = provider
        self.clock = clock
        self.random = random
        self.logger = logger
        self.onPublish = onPublish
        self.beforePublish = beforePublish
        self.inner = Mutex(Inner(machine: RefreshMachine(policy: policy, now: clock.now())))
    }

    /// The machine as it is now (a copy).
    public var machine: RefreshMachine { inner.withLock { $0.machine } }

    /// The credentials to serve now; nil while pending or after expiry. Never waits.
    public func serving() -> Published? {
        let now = clock.now()
        return inner.withLock { $0.machine.serving(at: now) }
    }

    /// How many more seconds `generation` will be served, by the local clock (its
    /// Expiration as the cloud's clock judges it): 0 when it is not the one served now, nil
    /// when it never expires. Never waits.
    public func secondsServed(generation: Int) -> TimeInterval? {
        let now = clock.now()
        return inner.withLock { inner -> TimeInterval? in
            guard let served = inner.machine.serving(at: now), served.generation == generation else { return 0 }
            return inner.machine.localExpiry.map { $0.timeIntervalSince(now) }
        }
    }

    /// True once any credentials were published (even if they have expired since).
    public var hasPublished: Bool { inner.withLock { $0.machine.published != nil } }

    public func status(mountedAt: Date, version: String) -> StatusSnapshot {
        let now = clock.now()
        return inner.withLock {
            StatusSnapshot(
                machine: $0.machine, provider: provider.name, mountedAt: mountedAt, version: version,
                now: now)
        }
    }

    /// Asks the loop to refresh now (SIGHUP). Returns at once.
    public func requestRefresh() {
        let now = clock.now()
        inner.withLock { $0.machine.requestNow(at: now) }
        wakeup.signal()
    }

    /// Fetches once, or joins the fetch already in flight: concurrent callers share one
    /// upstream request.
    public func refresh() async {
        let flight = inner.withLock { inner -> Task<Void, Never> in
            if let flight = inner.flight { return flight }
            let flight = Task { await self.fetchOnce() }
            inner.flight = flight
            return flight
        }
        await flight.value
    }

    /// Runs until cancelled: refreshes whenever the machine says so.
    public func run() async {
        while !Task.isCancelled {
            let now = clock.now()
            let (next, expiry) = inner.withLock { inner -> (Date, Date?) in
                // Expiry by the cloud's clock when the local one is behind.
                let exp = inner.loggedExpiry ? nil : inner.machine.localExpiry
                return (inner.machine.nextRefresh, exp)
            }
            if let expiry, now >= expiry {
                inner.withLock { $0.loggedExpiry = true }
                logger.error(
                    "credentials expired; credential files now fail with EIO until a refresh succeeds")
                onExpire()
                continue
            }
            if now >= next {
                await refresh()
                continue
            }
            let until = min(next, expiry ?? next)
            await withTaskGroup(of: Void.self) { group in
                group.addTask { try? await self.clock.sleep(until: until) }
                group.addTask { await self.wakeup.wait() }
                await group.next()
                group.cancelAll()
            }
        }
    }

    func fetchOnce() async {
        defer {
            inner.withLock { $0.flight = nil }
        }
        let started = inner.withLock { $0.machine.begin(at: clock.now()) }
        guard started else { return }
        // The HTTP answers' Date headers land in the probe: the cloud's clock.
        let probe = ServerClockProbe(clock: clock)
        let result: Result<Credentials, CredentialError> = await ServerClockProbe.$current.withValue(probe) {
            do {
                return .success(try await provider.fetch())
            } catch let error as CredentialError {
                return .failure(error)
            } catch {
                return .failure(CredentialError("\(provider.name): \(type(of: error))"))
            }
        }
        let now = clock.now()
        let jitter = random()
        observeClock(probe, at: now)
        switch result {
        case .success(let credentials):
            // The same step on a copy first: a new generation is announced before it is served.
            let upcoming = inner.withLock { inner -> Published? in
                var copy = inner.machine
                guard case .rotated = copy.succeeded(credentials, at: now, jitter: jitter) else { return nil }
                return copy.published
            }
            if let upcoming { beforePublish(upcoming) }
            let (outcome, published, failures) = inner.withLock { inner in
                let outcome = inner.machine.succeeded(credentials, at: now, jitter: jitter)
                if case .rotated = outcome { inner.loggedExpiry = false }
                return (outcome, inner.machine.published, inner.machine.consecutiveFailures)
            }
            if case .rejected(let reason) = outcome {
                onFailure(reason, failures)
                logger.warning(
                    "refresh failed", metadata: ["error": "\(reason)", "consecutiveFailures": "\(failures)"])
            } else if case .rotated(let generation) = outcome, let published {
                onPublish(published)
                logger.info(
                    "new credentials",
                    metadata: [
                        "generation": "\(generation)", "accessKeyId": "\(credentials.maskedAccessKeyId)",
                        "expiration": "\(credentials.expiration.map(Timestamp.format) ?? "never")",
                        "nextRefresh": "\(Timestamp.format(machine.nextRefresh))",
                    ])
            } else {
                logger.info("upstream repeated the credentials held; asking again later")
            }
        case .failure(let error):
            // Upstream text may quote a secret: what reaches status, STATUS= and the log
            // has every secret credfs knows and every URL query taken out.
            let (message, failures) = inner.withLock { inner in
                var known = provider.secrets
                if let held = inner.machine.published?.credentials { known += held.secrets }
                let message = Redact.text(error.message, secrets: known)
                inner.machine.failed(message, at: now, jitter: jitter)
                return (message, inner.machine.consecutiveFailures)
            }
            onFailure(message, failures)
            logger.warning(
                "refresh failed",
                metadata: ["error": "\(message)", "consecutiveFailures": "\(failures)"])
        }
    }
}

extension Refresher {
    /// Feeds the skew the last answer showed into the machine (before its outcome, so the
    /// outcome is scheduled by it); logs once when it first passes 60 s either way.
    func observeClock(_ probe: ServerClockProbe, at now: Date) {
        guard let skew = probe.skew else { return }
        let first = inner.withLock { inner -> Bool in
            inner.machine.observeClock(serverDate: now.addingTimeInterval(skew), at: now)
            guard abs(skew) > 60, !inner.loggedSkew else { return false }
            inner.loggedSkew = true
            return true
        }
        if first {
            let seconds = Int(clamping: skew, rounding: .toNearestOrAwayFromZero)
            logger.warning(
                "the local clock differs from the cloud's by more than 60 s",
                metadata: [
                    "clockSkewSeconds": "\(seconds)",
                    "following":
                        "\(skew > 0 ? "the cloud's clock for expiry and refresh" : "the local clock (it is ahead)")",
                ])
        }
    }

    /// The cloud's time now, as far as the refresher knows it.
    public func cloudNow() -> Date {
        let now = clock.now()
        return inner.withLock { $0.machine.cloudTime(now) }
    }
}

/// A one-slot wake-up signal for the refresh loop.
final class Wakeup: Sendable {
    private let state = Mutex<(signaled: Bool, waiter: CheckedContinuation<Void, Never>?)>(
        (false, nil))

    func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.signaled = true
            return nil
        }
        waiter?.resume()
    }

    /// Returns when signalled (consuming the signal) or when the task is cancelled.
    func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.signaled || Task.isCancelled {
                        s.signaled = false
                        return true
                    }
                    s.waiter = c
                    return false
                }
                if now { c.resume() }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume()
        }
    }
}
