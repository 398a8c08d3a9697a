import Foundation
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
            let refresher = Refresher(provider: DatedProvider(skew: skew), random: { 0 }, logger: .quiet)
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
