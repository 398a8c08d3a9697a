import Foundation
import Synchronization
import Testing

@testable import CredentialCore

@Suite struct HTTPDateTests {
    @Test func parsesIMFFixdate() throws {
        let date = try #require(HTTPDate.parse("Sun, 06 Nov 1994 08:49:37 GMT"))
        #expect(date.timeIntervalSince1970 == 784_111_777)
        #expect(HTTPDate.parse("  Tue, 21 May 2024 10:39:29 GMT ") == Fixture.expiration)
        #expect(HTTPDate.parse("Thu, 29 Feb 2024 00:00:00 GMT")?.timeIntervalSince1970 == 1_709_164_800)
        #expect(HTTPDate.parse("Fri, 31 Dec 9999 23:59:59 GMT")?.timeIntervalSince1970 == 253_402_300_799)
    }

    @Test func formatRoundTrips() {
        #expect(HTTPDate.format(Date(timeIntervalSince1970: 784_111_777)) == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.format(Date(timeIntervalSince1970: 0)) == "Thu, 01 Jan 1970 00:00:00 GMT")
        var seconds: TimeInterval = 0
        while seconds < 4_000_000_000 {
            let date = Date(timeIntervalSince1970: seconds)
            #expect(HTTPDate.parse(HTTPDate.format(date)) == date)
            seconds += 86_400 * 37 + 3_661
        }
    }

    @Test func rejectsEverythingElse() {
        for text in [
            "", "Sun, 06 Nov 1994 08:49:37", "Sunday, 06-Nov-94 08:49:37 GMT", "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT", "Sun, 06 Nov 1969 08:49:37 GMT", "Sun, 06 Xyz 1994 08:49:37 GMT",
            "Sun, 0x Nov 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 GMT\u{0}", "Sun, -6 Nov 1994 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT", "Abc, 06 Nov 1994 08:49:37 GMT", "Sun, 29 Feb 2023 08:49:37 GMT",
            "Sun,\u{E9}06 Nov 1994 08:49:37 GMT",
        ] {
            #expect(HTTPDate.parse(text) == nil, "\(text)")
        }
    }
}

/// The refresh machine against a cloud clock 10 minutes ahead of or behind the local one.
@Suite struct ClockSkewTests {
    let t0 = Fixture.t0
    func at(_ seconds: TimeInterval) -> Date { t0.addingTimeInterval(seconds) }

    /// A machine that heard `skew` from the upstream, then got credentials that expire an
    /// hour after the fetch by the cloud's clock.
    func machine(skew: TimeInterval) -> (RefreshMachine, Credentials) {
        var policy = RefreshPolicy()
        policy.spreadFraction = 0
        var m = RefreshMachine(policy: policy, now: t0)
        _ = m.begin(at: t0)
        m.observeClock(serverDate: at(skew), at: t0)
        let credentials = Fixture.sts(expiration: at(skew + 3600))
        #expect(m.succeeded(credentials, at: t0, jitter: 0) == .rotated(generation: 1))
        return (m, credentials)
    }

    @Test func localClockBehindFollowsTheCloud() throws {
        let (m, _) = machine(skew: 600)
        #expect(m.clockSkew == 600)
        #expect(m.effectiveSkew == 600)
        // The set expires at local t0+3600 (cloud t0+4200): never served after that.
        #expect(m.serving(at: at(3599.999)) != nil)
        #expect(m.serving(at: at(3600)) == nil)
        #expect(m.state(at: at(3600)) == .expired)
        #expect(m.localExpiry == at(3600))
        // Refreshed 15 minutes before the cloud's expiry, not the local reading of it.
        #expect(m.nextRefresh == at(2700))
        let status = StatusSnapshot(machine: m, provider: "uri", mountedAt: t0, version: "v", now: t0)
        #expect(status.secondsRemaining == 3600)
        #expect(status.clockSkewSeconds == 600)
        #expect(String(decoding: Render.statusFile(status), as: UTF8.self).contains("\"clockSkewSeconds\": 600"))
    }

    @Test func localClockAheadKeepsTheLocalClock() {
        // The cloud is 10 minutes behind: its hour-long set looks 50 minutes long here.
        let (m, _) = machine(skew: -600)
        #expect(m.clockSkew == -600)
        #expect(m.effectiveSkew == 0)
        #expect(m.serving(at: at(2999.999)) != nil)
        #expect(m.serving(at: at(3000)) == nil)
        // Lead: min(15 min, 50 min / 3).
        #expect(m.nextRefresh == at(2100))
        let status = StatusSnapshot(machine: m, provider: "uri", mountedAt: t0, version: "v", now: t0)
        #expect(status.secondsRemaining == 3000)
        #expect(status.clockSkewSeconds == -600)
    }

    @Test func aFewSecondsAreTolerated() {
        let (m, _) = machine(skew: 4)
        #expect(m.effectiveSkew == 0)
        #expect(m.serving(at: at(3603.5)) != nil)
        let (n, _) = machine(skew: 6)
        #expect(n.effectiveSkew == 6)
        #expect(n.serving(at: at(3600)) == nil)
    }

    @Test func noSkewUntilAnUpstreamTells() {
        let m = RefreshMachine(policy: RefreshPolicy(), now: t0)
        #expect(m.clockSkew == nil)
        let status = StatusSnapshot(machine: m, provider: "env", mountedAt: t0, version: "v", now: t0)
        #expect(status.clockSkewSeconds == nil)
        #expect(String(decoding: Render.statusFile(status), as: UTF8.self).contains("\"clockSkewSeconds\": null"))
    }

    @Test func unchangedPollingFollowsTheCloud() {
        var (m, credentials) = machine(skew: 600)
        // At local 3000 (cloud 3600 + 0 ... 600 s before the cloud's expiry) the same set comes back.
        _ = m.begin(at: at(3000))
        #expect(m.succeeded(credentials, at: at(3000), jitter: 0) == .unchanged)
        // A tenth of the 600 s left by the cloud's clock, capped at 30 s.
        #expect(m.nextRefresh == at(3030))
    }
}

/// The refresher picks the skew up from the HTTP answers of one fetch (virtual clock).
@Suite struct RefresherSkewTests {
    struct DatedProvider: CredentialProvider {
        let name = "dated"
        let skew: TimeInterval
        func fetch() async throws -> Credentials {
            let cloudNow = Date().addingTimeInterval(skew)
            ServerClockProbe.report(Timestamp.wholeSeconds(cloudNow))
            return Fixture.sts(expiration: Timestamp.wholeSeconds(cloudNow).addingTimeInterval(3600))
        }
    }

    @Test func aFetchThatSawADateSetsTheSkew() async {
        for skew in [600.0, -600.0] {
            let refresher = Refresher(
                provider: DatedProvider(skew: skew), clock: SystemRefreshClock(), random: { 0 }, logger: .quiet)
            await refresher.refresh()
            let measured = refresher.machine.clockSkew ?? 0
            #expect(abs(measured - skew) <= 2, "\(measured)")
            let status = refresher.status(mountedAt: Date(), version: "v")
            #expect(status.clockSkewSeconds.map { abs(Double($0) - skew) <= 2 } == true)
            // Cloud time: an hour less up to 2 s of rounding and latency.
            let remaining = status.secondsRemaining ?? 0
            if skew > 0 {
                #expect(remaining > 3590 && remaining <= 3600, "\(remaining)")
            } else {
                #expect(remaining > 2990 && remaining <= 3000, "\(remaining)")
            }
        }
    }
}

/// An answer that the cloud's clock says has expired, or nearly (issue 26): a mount holds a
/// set valid for 290 s more, and the upstream answers with an Expiration 24 s ahead of the
/// local clock and a `Date` 60 s ahead. It must not replace the held set, and it counts as
/// a failure with backoff (not a new generation planned in the past: a busy loop).
@Suite struct ExpiredByTheCloudTests {
    let t0 = Fixture.t0
    func at(_ seconds: TimeInterval) -> Date { t0.addingTimeInterval(seconds) }

    /// Holds generation 1, expiring at t0 + 300 (the cloud's clock agreeing with ours).
    func holding() -> RefreshMachine {
        var policy = RefreshPolicy()
        policy.spreadFraction = 0
        var m = RefreshMachine(policy: policy, now: t0)
        _ = m.begin(at: t0)
        m.observeClock(serverDate: t0, at: t0)
        #expect(m.succeeded(Fixture.sts(expiration: at(300)), at: t0, jitter: 0) == .rotated(generation: 1))
        return m
    }

    /// The skewed answer of the issue, arriving at `now`.
    static func skewedAnswer(
        _ m: inout RefreshMachine, at now: Date, id: String = "STS.SKEWED-0000001", jitter: Double = 0
    )
        -> RefreshMachine.Outcome
    {
        m.observeClock(serverDate: now.addingTimeInterval(60), at: now)
        return m.succeeded(Fixture.sts(id: id, expiration: now.addingTimeInterval(24)), at: now, jitter: jitter)
    }

    @Test func isRejectedAndTheHeldSetKept() throws {
        var m = holding()
        let now = at(10)
        m.requestNow(at: now)
        let began = m.begin(at: now)
        #expect(began)
        let outcome = Self.skewedAnswer(&m, at: now)
        guard case .rejected(let reason) = outcome else {
            Issue.record("accepted: \(outcome)")
            return
        }
        #expect(
            reason
                == "answer already expired by the cloud's clock: Expiration 2024-05-21T09:40:03Z was 36 s ago "
                + "(the upstream's Date is 60 s ahead of the local clock)")
        // Still generation 1, valid (by the cloud's clock it now ends at local t0 + 240).
        #expect(m.published?.generation == 1)
        #expect(m.serving(at: now)?.credentials.accessKeyId == Fixture.accessKeyId)
        #expect(m.localExpiry == at(240))
        #expect(m.state(at: now) == .stale)
        #expect(m.consecutiveFailures == 1)
        #expect(m.lastError == reason)
        #expect(m.results.failure == 1 && m.results.success == 1)
        #expect(!m.inFlight)
        // Backed off, not due again at once.
        #expect(m.nextRefresh >= now.addingTimeInterval(m.policy.minimumRetry))
        let status = StatusSnapshot(machine: m, provider: "uri", mountedAt: t0, version: "v", now: now)
        #expect(status.lastError == reason && status.consecutiveFailures == 1 && status.state == .stale)
    }

    /// Driven as the refresher drives it, for two seconds of virtual time, against an
    /// upstream that keeps sending such answers: a handful of requests, not thousands.
    @Test func aSkewedUpstreamIsAskedWithBackoff() {
        var m = holding()
        var now = at(10)
        m.requestNow(at: now)
        var requests = 0
        var accepted = 0
        while now < at(12), requests < 10_000 {
            if m.isDue(at: now) {
                let began = m.begin(at: now)
                #expect(began)
                requests += 1
                let outcome = Self.skewedAnswer(&m, at: now, id: "STS.SKEWED-\(requests)-00000", jitter: 0.5)
                if case .rejected = outcome {} else { accepted += 1 }
            } else {
                now = max(now, m.nextRefresh)
            }
        }
        // Backoff 1, 2 s ceilings at half jitter: requests at 10, 10.55, 11.6.
        #expect(accepted == 0, "\(accepted) answers accepted")
        #expect(requests == 3, "\(requests) requests in 2 s")
        #expect(m.consecutiveFailures == requests)
        #expect(m.serving(at: now)?.generation == 1)
        #expect(m.upstreamRequests == requests + 1)
    }

    @Test func lessThanASecondLeftIsTooShort() {
        var m = holding()
        // Expirations are whole seconds: half a second before one.
        let now = at(9.5)
        _ = m.begin(at: now)
        let outcome = m.succeeded(Fixture.sts(id: "STS.SHORT-00000001", expiration: at(10)), at: now, jitter: 0)
        #expect(outcome == .rejected("answer expires too soon: Expiration 2024-05-21T09:39:39Z is less than 1 s away"))
        #expect(m.published?.generation == 1)
        #expect(m.consecutiveFailures == 1)
        // A second and a half (the demo's shortest set, 2 s, cut to whole seconds, has more
        // than one) is served.
        _ = m.begin(at: now)
        let next = m.succeeded(Fixture.sts(id: "STS.SHORT-00000002", expiration: at(11)), at: now, jitter: 0)
        #expect(next == .rotated(generation: 2))
        #expect(m.consecutiveFailures == 0 && m.lastError == nil)
    }

    /// Within the tolerated skew the local clock judges, as before.
    @Test func aToleratedSkewJudgesByTheLocalClock() {
        var m = holding()
        let now = at(10)
        _ = m.begin(at: now)
        m.observeClock(serverDate: now.addingTimeInterval(4), at: now)
        #expect(
            m.succeeded(Fixture.sts(id: "STS.CLOSE-00000001", expiration: at(13)), at: now, jitter: 0)
                == .rotated(generation: 2))
    }
}

/// The same through the refresher's own loop on a virtual clock: the provider reports the
/// upstream's `Date` as an HTTP fetch does.
@Suite struct RefresherExpiredByTheCloudTests {
    final class SkewedUpstream: CredentialProvider, Sendable {
        let name = "skewed"
        let clock: VirtualClock
        /// Local seconds from now to the Expiration it hands out.
        let expiresIn = Mutex<TimeInterval>(290 + 60)
        let calls = Counter()
        init(clock: VirtualClock) { self.clock = clock }
        func fetch() async throws -> Credentials {
            calls.increment()
            let now = clock.now()
            ServerClockProbe.report(now.addingTimeInterval(60))
            return Fixture.sts(
                id: "STS.SKEWED-\(calls.value)-0000000", expiration: now.addingTimeInterval(expiresIn.withLock { $0 }))
        }
    }

    @Test func theLoopBacksOffAndKeepsServing() async throws {
        let clock = VirtualClock(Fixture.t0)
        let upstream = SkewedUpstream(clock: clock)
        let failures = Mutex<[String]>([])
        let refresher = Refresher(
            provider: upstream, clock: clock, random: { 0.5 }, logger: .quiet,
            onFailure: { message, _ in failures.withLock { $0.append(message) } })
        await refresher.refresh()
        #expect(refresher.serving()?.generation == 1)
        upstream.expiresIn.withLock { $0 = 24 }
        refresher.requestRefresh()
        let loop = Task { await refresher.run() }
        defer { loop.cancel() }
        // The rejected answer is a failure, and the loop then sleeps until its backoff ends.
        let settled = await waitUntil {
            refresher.machine.consecutiveFailures == 1 && clock.sleeperCount == 1
        }
        #expect(settled, "the loop never slept: \(upstream.calls.value) upstream requests")
        #expect(upstream.calls.value == 2)
        // Two seconds of virtual time, one deadline at a time.
        let end = Fixture.t0.addingTimeInterval(2)
        while let deadline = clock.earliestDeadline, deadline <= end {
            let before = upstream.calls.value
            clock.advance(to: deadline)
            _ = await waitUntil { clock.sleeperCount == 1 && upstream.calls.value > before }
        }
        #expect(upstream.calls.value <= 4, "\(upstream.calls.value) upstream requests in 2 s")
        let status = refresher.status(mountedAt: Fixture.t0, version: "t")
        #expect(status.state == .stale)
        #expect(status.generation == 1)
        #expect(status.consecutiveFailures == upstream.calls.value - 1)
        #expect(
            status.lastError?.hasPrefix("answer already expired by the cloud's clock") == true,
            "\(status.lastError ?? "nil")")
        #expect(refresher.serving()?.credentials.accessKeyId == "STS.SKEWED-1-0000000")
        #expect(failures.withLock { $0.count } == upstream.calls.value - 1)
    }
}
