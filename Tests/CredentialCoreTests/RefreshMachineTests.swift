import Foundation
import Testing

@testable import CredentialCore

@Suite struct RefreshMachineTests {
    let t0 = Fixture.t0

    func at(_ seconds: TimeInterval) -> Date { t0.addingTimeInterval(seconds) }

    func isClose(_ a: Date?, _ b: Date, within tolerance: TimeInterval = 1e-6) -> Bool {
        guard let a else { return false }
        return abs(a.timeIntervalSince(b)) <= tolerance
    }

    /// A machine that fetched `credentials` at `t0` with the given jitter.
    /// The steady schedule only: no spread of the first set over the whole period.
    static var steady: RefreshPolicy {
        var policy = RefreshPolicy()
        policy.spreadFraction = 0
        return policy
    }

    func machine(
        holding credentials: Credentials = Fixture.sts(), policy: RefreshPolicy = RefreshMachineTests.steady,
        jitter: Double = 0
    ) -> RefreshMachine {
        var m = RefreshMachine(policy: policy, now: t0)
        let began = m.begin(at: t0)
        #expect(began)
        let outcome = m.succeeded(credentials, at: t0, jitter: jitter)
        #expect(outcome == .rotated(generation: 1))
        return m
    }

    @Test func startsPendingAndDueAtOnce() {
        let m = RefreshMachine(policy: RefreshPolicy(), now: t0)
        #expect(m.state(at: t0) == .pending)
        #expect(m.nextRefresh == t0)
        #expect(m.isDue(at: t0))
        #expect(!m.isDue(at: at(-1)))
        #expect(m.serving(at: t0) == nil)
        #expect(m.published == nil)
        #expect(m.upstreamRequests == 0)
        #expect(m.consecutiveFailures == 0)
        #expect(m.lastRefresh == nil)
    }

    @Test func firstSuccessPublishesGenerationOneFresh() throws {
        let m = machine()
        #expect(m.state(at: t0) == .fresh)
        let published = try #require(m.serving(at: t0))
        #expect(published.generation == 1)
        #expect(published.credentials == Fixture.sts())
        #expect(published.fetchedAt == t0)
        #expect(m.lastRefresh == t0)
        #expect(m.upstreamRequests == 1)
        #expect(!m.inFlight)
    }

    @Test func prefetchOneHourLifetime() {
        // Lead: min(15 min, 60 min / 3) = 15 min, moved earlier by up to 10% of it (90 s).
        let early = machine(jitter: 0)
        #expect(isClose(early.prefetchAt, at(45 * 60)))
        #expect(isClose(early.nextRefresh, Fixture.expiration.addingTimeInterval(-900)))
        #expect(!early.isDue(at: at(45 * 60 - 0.001)))
        #expect(early.isDue(at: at(45 * 60)))

        let late = machine(jitter: 0.999)
        // 900 + 0.999 * 0.1 * 900 = 989.91 s before expiry, i.e. 43:30.09 after the fetch.
        #expect(isClose(late.nextRefresh, Fixture.expiration.addingTimeInterval(-989.91)))
        #expect(isClose(late.nextRefresh, at(2610.09)))
        // Always inside (expiry - 990 s, expiry - 900 s].
        for jitter in stride(from: 0.0, to: 1.0, by: 0.05) {
            let next = machine(jitter: jitter).nextRefresh
            #expect(next > at(43 * 60 + 30) && next <= at(45 * 60))
        }
    }

    @Test func prefetchThirtyMinuteLifetime() {
        // Lead: min(15 min, 30 min / 3) = 10 min, jitter up to 60 s more.
        let exp = at(1800)
        let early = machine(holding: Fixture.sts(expiration: exp), jitter: 0)
        #expect(isClose(early.nextRefresh, exp.addingTimeInterval(-600)))
        #expect(isClose(early.nextRefresh, at(20 * 60)))
        let late = machine(holding: Fixture.sts(expiration: exp), jitter: 0.999)
        #expect(isClose(late.nextRefresh, exp.addingTimeInterval(-659.94)))
        #expect(isClose(late.nextRefresh, at(1140.06)))
    }

    @Test func explicitRefreshBefore() {
        var policy = RefreshPolicy(refreshBefore: 300)
        policy.spreadFraction = 0
        let early = machine(policy: policy, jitter: 0)
        #expect(isClose(early.nextRefresh, Fixture.expiration.addingTimeInterval(-300)))
        let late = machine(policy: policy, jitter: 0.5)
        #expect(isClose(late.nextRefresh, Fixture.expiration.addingTimeInterval(-315)))
        #expect(policy.refreshLead(lifetime: 3600) == 300)
        #expect(RefreshPolicy().refreshLead(lifetime: 3600) == 900)
        #expect(RefreshPolicy().refreshLead(lifetime: 600) == 200)
    }

    @Test func refreshBeforeLongerThanLifetimeDoesNotSpin() {
        // 60 s credentials with --refresh-before 15 min: never sooner than 1 s away.
        let m = machine(
            holding: Fixture.sts(expiration: at(60)), policy: RefreshPolicy(refreshBefore: 900))
        // (the spread window opens 30 s in, after the steady point: nothing to spread)
        #expect(isClose(m.nextRefresh, at(1)))
        // A 1 s lifetime: half of it.
        let short = machine(
            holding: Fixture.sts(expiration: at(1)), policy: RefreshPolicy(refreshBefore: 900))
        #expect(isClose(short.nextRefresh, at(0.5)))
    }

    @Test func neverExpiringCredentialsAreNotRefreshed() {
        let m = machine(holding: Fixture.accessKeyPair())
        #expect(m.nextRefresh == .distantFuture)
        #expect(m.state(at: .distantFuture.addingTimeInterval(-1)) == .fresh)
        let snapshot = StatusSnapshot(machine: m, provider: "env", mountedAt: t0, version: "v", now: t0)
        #expect(snapshot.nextRefresh == nil)
        #expect(snapshot.expiration == nil)
        #expect(snapshot.secondsRemaining == nil)
    }

    @Test func backoffDoublesToTheCapWithFullJitter() {
        var m = RefreshMachine(policy: RefreshPolicy(), now: t0)
        let ceilings: [TimeInterval] = [1, 2, 4, 8, 16, 32, 60, 60, 60]
        var now = t0
        for (index, ceiling) in ceilings.enumerated() {
            let began = m.begin(at: now)
            #expect(began)
            m.failed("boom \(index)", at: now, jitter: 0.999_999)
            #expect(m.consecutiveFailures == index + 1)
            #expect(m.backoffCeiling == ceiling)
            let delay = m.nextRefresh.timeIntervalSince(now)
            #expect(delay >= 0.1 && delay <= ceiling)
            #expect(delay > ceiling - 0.001)
            #expect(m.lastError == "boom \(index)")
            now = m.nextRefresh
        }
        #expect(m.state(at: now) == .pending)
        #expect(m.upstreamRequests == ceilings.count)
    }

    @Test func backoffWithZeroJitterRetriesAfterTheMinimum() {
        var m = RefreshMachine(policy: RefreshPolicy(), now: t0)
        var now = t0
        for _ in 0..<8 {
            let began = m.begin(at: now)
            #expect(began)
            m.failed("boom", at: now, jitter: 0)
            #expect(isClose(m.nextRefresh, now.addingTimeInterval(0.1)))
            now = m.nextRefresh
        }
    }

    @Test func backoffMidJitterIsProportional() {
        var m = RefreshMachine(policy: RefreshPolicy(), now: t0)
        for _ in 0..<4 {
            _ = m.begin(at: t0)
            m.failed("boom", at: t0, jitter: 0.5)
        }
        // Ceiling 8 s: 0.1 + 0.5 * 7.9.
        #expect(isClose(m.nextRefresh, at(4.05)))
    }

    @Test func successResetsTheBackoff() {
        var m = machine()
        for _ in 0..<5 {
            _ = m.begin(at: at(2700))
            m.failed("boom", at: at(2700), jitter: 0.999)
        }
        #expect(m.backoffCeiling == 16)
        _ = m.begin(at: at(2800))
        m.succeeded(Fixture.sts(secret: "next", expiration: at(2800 + 3600)), at: at(2800), jitter: 0)
        #expect(m.consecutiveFailures == 0)
        #expect(m.lastError == nil)
        _ = m.begin(at: at(2900))
        m.failed("again", at: at(2900), jitter: 0.999_999)
        #expect(m.backoffCeiling == 1)
        #expect(m.nextRefresh.timeIntervalSince(at(2900)) <= 1)
    }

    @Test func unchangedAnswerPastThePrefetchPointPollsAtATenthOfRemaining() throws {
        var m = machine()
        // (time of the repeat, seconds until the next ask): max(1, min(30, remaining / 10)).
        let cases: [(TimeInterval, TimeInterval)] = [
            (2700, 30),  // 900 s left: 90 → 30
            (3400, 20),  // 200 s left
            (3550, 5),  // 50 s left
            (3590, 1),  // 10 s left
            (3595, 1),  // 5 s left: 0.5 → 1
        ]
        for (time, delay) in cases {
            let began = m.begin(at: at(time))
            #expect(began)
            let outcome = m.succeeded(Fixture.sts(), at: at(time), jitter: 0.7)
            #expect(outcome == .unchanged)
            #expect(isClose(m.nextRefresh, at(time + delay)))
            #expect(try #require(m.serving(at: at(time))).generation == 1)
            #expect(m.state(at: at(time)) == .fresh)
            #expect(m.lastRefresh == at(time))
        }
        // Never a new generation, and the fetch time (st_mtime) is the first one.
        #expect(m.published?.generation == 1)
        #expect(m.published?.fetchedAt == t0)
        #expect(m.upstreamRequests == 1 + cases.count)
    }

    @Test func unchangedAnswerBeforeThePrefetchPointGoesBackToIt() {
        var m = machine()
        let prefetch = m.nextRefresh
        m.requestNow(at: at(100))
        let began = m.begin(at: at(100))
        #expect(began)
        let outcome = m.succeeded(Fixture.sts(), at: at(100), jitter: 0.3)
        #expect(outcome == .unchanged)
        #expect(m.nextRefresh == prefetch)
        #expect(isClose(m.nextRefresh, at(2700)))
    }

    @Test func unchangedAfterFailuresClearsThem() {
        var m = machine()
        _ = m.begin(at: at(2700))
        m.failed("boom", at: at(2700), jitter: 0)
        #expect(m.state(at: at(2700)) == .stale)
        _ = m.begin(at: at(2701))
        let outcome = m.succeeded(Fixture.sts(), at: at(2701), jitter: 0)
        #expect(outcome == .unchanged)
        #expect(m.state(at: at(2701)) == .fresh)
        #expect(m.consecutiveFailures == 0)
        #expect(isClose(m.nextRefresh, at(2731)))
    }

    @Test func failureKeepsServingTheLastGoodCredentials() throws {
        var m = machine()
        let began = m.begin(at: at(2700))
        #expect(began)
        m.failed("uri: HTTP 503", at: at(2700), jitter: 0.5)
        let served = try #require(m.serving(at: at(2700)))
        #expect(served.generation == 1)
        #expect(served.credentials == Fixture.sts())
        #expect(m.state(at: at(2700)) == .stale)
        #expect(m.lastError == "uri: HTTP 503")
        #expect(m.consecutiveFailures == 1)
        // Still served a second before expiry.
        #expect(m.serving(at: at(3599))?.generation == 1)
        #expect(m.state(at: at(3599)) == .stale)
    }

    @Test func expiredCredentialsAreNotServed() {
        var m = machine()
        _ = m.begin(at: at(2700))
        m.failed("boom", at: at(2700), jitter: 0)
        #expect(m.serving(at: at(3599.999)) != nil)
        #expect(m.serving(at: Fixture.expiration) == nil)
        #expect(m.state(at: Fixture.expiration) == .expired)
        #expect(m.serving(at: at(7200)) == nil)
        #expect(m.state(at: at(7200)) == .expired)
        // Without any failure too: expiry alone makes it expired.
        let quiet = machine()
        #expect(quiet.state(at: Fixture.expiration) == .expired)
        #expect(quiet.serving(at: Fixture.expiration) == nil)
        let snapshot = StatusSnapshot(
            machine: quiet, provider: "uri", mountedAt: t0, version: "v", now: at(4000))
        #expect(snapshot.state == .expired)
        #expect(snapshot.secondsRemaining == 0)
        #expect(snapshot.generation == 1)
    }

    @Test func recoversWithTheNextGeneration() throws {
        var m = machine()
        for time in [2700.0, 3000, 3600, 3700] {
            _ = m.begin(at: at(time))
            m.failed("boom", at: at(time), jitter: 0.5)
        }
        #expect(m.state(at: at(3700)) == .expired)
        let fresh = Fixture.sts(
            id: "STS.NewKeyId0000000001", secret: "new", token: "newtoken", expiration: at(3800 + 3600))
        let began = m.begin(at: at(3800))
        #expect(began)
        let outcome = m.succeeded(fresh, at: at(3800), jitter: 0)
        #expect(outcome == .rotated(generation: 2))
        let served = try #require(m.serving(at: at(3800)))
        #expect(served.generation == 2)
        #expect(served.credentials == fresh)
        #expect(served.fetchedAt == at(3800))
        #expect(m.state(at: at(3800)) == .fresh)
        #expect(m.consecutiveFailures == 0)
        #expect(m.lastError == nil)
        #expect(isClose(m.nextRefresh, at(3800 + 2700)))
    }

    @Test func rotationBumpsTheGenerationEachTime() {
        var m = machine()
        for generation in 2...5 {
            let time = TimeInterval(generation) * 2700
            _ = m.begin(at: at(time))
            let c = Fixture.sts(secret: "s\(generation)", expiration: at(time + 3600))
            let outcome = m.succeeded(c, at: at(time), jitter: 0)
            #expect(outcome == .rotated(generation: generation))
            #expect(m.serving(at: at(time))?.generation == generation)
        }
    }

    @Test func singleFlight() {
        var m = RefreshMachine(policy: RefreshPolicy(), now: t0)
        let first = m.begin(at: t0)
        #expect(first)
        let second = m.begin(at: t0)
        #expect(!second)
        let third = m.begin(at: at(5))
        #expect(!third)
        #expect(m.upstreamRequests == 1)
        #expect(m.inFlight)
        #expect(!m.isDue(at: at(5)))
        m.succeeded(Fixture.sts(), at: at(1), jitter: 0)
        #expect(!m.inFlight)
        let next = m.begin(at: at(2))
        #expect(next)
        #expect(m.state(at: at(2)) == .refreshing)
        #expect(m.upstreamRequests == 2)
        let snapshot = StatusSnapshot(
            machine: m, provider: "uri", mountedAt: t0, version: "v", now: at(2))
        #expect(snapshot.state == .refreshing)
        #expect(snapshot.nextRefresh == nil)
    }

    @Test func requestNowMakesTheRefreshDue() {
        var m = machine()
        #expect(!m.isDue(at: at(10)))
        m.requestNow(at: at(10))
        #expect(m.nextRefresh == at(10))
        #expect(m.isDue(at: at(10)))
        // Never postpones a refresh that is already earlier.
        m.requestNow(at: at(20))
        #expect(m.nextRefresh == at(10))
    }

    @Test func aRequestInFlightKeepsTheInstantThatWasDue() {
        var m = machine()
        let due = m.nextRefresh
        let began = m.begin(at: at(60))
        #expect(began)
        #expect(m.request == .inFlight(since: at(60), scheduled: due))
        #expect(!m.isDue(at: .distantFuture))
        // SIGHUP while in flight moves the instant; the outcome replaces it.
        m.requestNow(at: at(61))
        #expect(m.request == .inFlight(since: at(60), scheduled: at(61)))
        #expect(
            StatusSnapshot(machine: m, provider: "uri", mountedAt: t0, version: "v", now: at(61)).nextRefresh == nil)
        m.failed("down", at: at(62), jitter: 0)
        #expect(!m.inFlight)
        #expect(isClose(m.nextRefresh, at(62.1)))
        #expect(m.health == .failing(count: 1, lastError: "down"))
        // Begin to answer: 2 s (the first request took 0 s).
        #expect(m.durations.count == 2 && m.durations.sum == 2)
    }

    @Test func aCarriedSetIsServedAndTheNextNewOneSpread() throws {
        var m = RefreshMachine(policy: RefreshPolicy(), now: at(600))
        m.restore(
            Published(credentials: Fixture.sts(), generation: 7, fetchedAt: t0), upstreamRequests: 9,
            lastRefresh: t0, now: at(600), jitter: 0)
        #expect(m.state(at: at(600)) == .fresh)
        #expect(m.serving(at: at(600))?.generation == 7)
        #expect(m.upstreamRequests == 9 && m.lastRefresh == t0)
        // Planned from its fetch: 15 min before its expiry, no spread, no steady point known.
        #expect(isClose(m.nextRefresh, Fixture.expiration.addingTimeInterval(-900)))
        #expect(m.steadyPrefetchAt == nil)

        let began = m.begin(at: at(2700))
        #expect(began)
        let next = Fixture.sts(id: "STS.NextGeneration12345", expiration: at(2700 + 3600))
        let outcome = m.succeeded(next, at: at(2700), jitter: 0.5)
        #expect(outcome == .rotated(generation: 8))
        // Off schedule: halfway (jitter 0.5) into [fetch + 60 s, steady point].
        let steady = at(2700 + 3600 - 900 - 45)
        #expect(isClose(m.steadyPrefetchAt, steady))
        #expect(isClose(m.prefetchAt, steady.addingTimeInterval(-0.5 * steady.timeIntervalSince(at(2760)))))
    }
}
