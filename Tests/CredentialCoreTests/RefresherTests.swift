import Foundation
import Logging
import Synchronization
import Testing

@testable import CredentialCore

@Suite struct RefresherTests {
    /// Credentials valid for an hour from the clock's current time.
    static func hourFrom(_ clock: VirtualClock, secret: String = Fixture.secret) -> Credentials {
        Fixture.sts(secret: secret, expiration: clock.now().addingTimeInterval(3600))
    }

    @Test func concurrentRefreshesShareOneUpstreamRequest() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider(gated: true) { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let returned = Counter()

        // Task.immediate runs each caller synchronously up to its first suspension, which is
        // the wait on the shared flight: by the end of this loop all 20 have joined it.
        var callers: [Task<Void, Never>] = []
        for _ in 0..<20 {
            callers.append(
                Task.immediate {
                    await refresher.refresh()
                    returned.increment()
                })
        }
        #expect(await waitUntil { provider.parkedCount == 1 })
        #expect(provider.calls == 1)
        #expect(returned.value == 0)
        #expect(refresher.machine.inFlight)
        #expect(refresher.serving() == nil)

        provider.release()
        for caller in callers { await caller.value }

        #expect(returned.value == 20)
        #expect(provider.calls == 1)
        #expect(refresher.machine.upstreamRequests == 1)
        #expect(refresher.serving()?.generation == 1)
        #expect(refresher.status(mountedAt: Fixture.t0, version: "v").state == .fresh)
    }

    @Test func sequentialRefreshesEachAskUpstream() async {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        await refresher.refresh()
        await refresher.refresh()
        #expect(provider.calls == 2)
        #expect(refresher.machine.upstreamRequests == 2)
        #expect(refresher.serving()?.generation == 1)
    }

    @Test func failureKeepsServingThePreviousCredentials() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        await refresher.refresh()
        #expect(refresher.serving()?.generation == 1)

        clock.advance(by: 2700)
        provider.fail(with: CredentialError("uri: HTTP 503"))
        await refresher.refresh()

        let served = try #require(refresher.serving())
        #expect(served.generation == 1)
        #expect(served.credentials == Fixture.sts())
        let status = refresher.status(mountedAt: Fixture.t0, version: "v")
        #expect(status.state == .stale)
        #expect(status.lastError == "uri: HTTP 503")
        #expect(status.consecutiveFailures == 1)
        #expect(status.generation == 1)
        #expect(status.upstreamRequests == 2)

        // Once they expire nothing is served and the status says why.
        clock.advance(to: Fixture.expiration)
        #expect(refresher.serving() == nil)
        let expired = refresher.status(mountedAt: Fixture.t0, version: "v")
        #expect(expired.state == .expired)
        #expect(expired.lastError == "uri: HTTP 503")

        // Recovery: the next good answer is a new generation.
        provider.answer(with: Self.hourFrom(clock, secret: "rotated"))
        await refresher.refresh()
        #expect(refresher.serving()?.generation == 2)
        #expect(refresher.serving()?.credentials.accessKeySecret == "rotated")
        #expect(refresher.status(mountedAt: Fixture.t0, version: "v").state == .fresh)
    }

    @Test func aForeignErrorIsReportedByTypeOnly() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { throw NotACredentialError() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        await refresher.refresh()
        let status = refresher.status(mountedAt: Fixture.t0, version: "v")
        #expect(status.state == .pending)
        let lastError = try #require(status.lastError)
        #expect(lastError == "test: NotACredentialError")
        #expect(!lastError.contains(Fixture.secret))
    }

    @Test func hasPublishedStaysTrueAfterExpiry() async {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        #expect(!refresher.hasPublished)
        await refresher.refresh()
        #expect(refresher.hasPublished && refresher.serving() != nil)
        clock.advance(to: Fixture.expiration)
        #expect(refresher.hasPublished && refresher.serving() == nil)
    }

    @Test func onPublishOncePerNewGeneration() async {
        let clock = VirtualClock(Fixture.t0)
        let log = PublishLog()
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(
            provider: provider, clock: clock, random: { 0 }, logger: .quiet, onPublish: log.record)

        await refresher.refresh()
        #expect(log.all == [1])
        await refresher.refresh()  // same answer
        #expect(log.all == [1])
        provider.fail(with: CredentialError("boom"))
        await refresher.refresh()  // failure
        #expect(log.all == [1])
        provider.answer(with: Fixture.sts(secret: "rotated"))
        await refresher.refresh()
        #expect(log.all == [1, 2])
        await refresher.refresh()  // same again
        #expect(log.all == [1, 2])
        #expect(provider.calls == 5)
    }

    @Test func runRefreshesAtTheScheduledTime() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let loop = Task { await refresher.run() }
        defer { loop.cancel() }

        // Due at once: the first fetch, then asleep until the prefetch point.
        #expect(await waitUntil { refresher.serving()?.generation == 1 })
        #expect(await waitUntil { clock.sleeperCount == 1 })
        #expect(provider.calls == 1)
        let prefetch = refresher.machine.nextRefresh
        #expect(prefetch == Fixture.expiration.addingTimeInterval(-900))
        #expect(clock.earliestDeadline == prefetch)

        // Just before the prefetch point nothing happens: the loop goes back to sleep.
        clock.advance(to: prefetch.addingTimeInterval(-1))
        #expect(await waitUntil { clock.sleeperCount == 1 })
        #expect(provider.calls == 1)

        // At the prefetch point it asks, and publishes the rotated set.
        provider.setAnswer { Self.hourFrom(clock, secret: "rotated") }
        clock.advance(to: prefetch)
        #expect(await waitUntil { provider.calls == 2 })
        #expect(await waitUntil { refresher.serving()?.generation == 2 })
        #expect(refresher.serving()?.credentials.accessKeySecret == "rotated")
        #expect(refresher.machine.nextRefresh == prefetch.addingTimeInterval(2700))

        loop.cancel()
        await loop.value
        #expect(provider.calls == 2)
    }

    @Test func runRetriesWithBackoffAfterAFailure() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { throw CredentialError("down") }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0.5 }, logger: .quiet)
        let loop = Task { await refresher.run() }
        defer { loop.cancel() }
        func at(_ seconds: TimeInterval) -> Date { Fixture.t0.addingTimeInterval(seconds) }
        func near(_ a: Date?, _ b: Date) -> Bool {
            a.map { abs($0.timeIntervalSince(b)) < 1e-6 } ?? false
        }

        #expect(await waitUntil { provider.calls == 1 && clock.sleeperCount == 1 })
        // First retry: 0.1 + 0.5 * (1 - 0.1) = 0.55 s later.
        #expect(near(clock.earliestDeadline, at(0.55)))
        #expect(refresher.status(mountedAt: Fixture.t0, version: "v").state == .pending)

        // Not yet: the loop stays asleep.
        clock.advance(to: at(0.5))
        #expect(clock.sleeperCount == 1)
        #expect(provider.calls == 1)

        clock.advance(to: at(0.6))
        #expect(await waitUntil { provider.calls == 2 && clock.sleeperCount == 1 })
        // Second: 0.1 + 0.5 * (2 - 0.1) = 1.05 s after the second attempt.
        #expect(near(clock.earliestDeadline, at(0.6 + 1.05)))
        #expect(refresher.machine.consecutiveFailures == 2)

        provider.setAnswer { Self.hourFrom(clock) }
        clock.advance(to: at(1.7))
        #expect(await waitUntil { refresher.serving()?.generation == 1 })
        #expect(provider.calls == 3)
        #expect(refresher.machine.consecutiveFailures == 0)
        loop.cancel()
        await loop.value
    }

    @Test func requestRefreshWakesTheLoop() async {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let loop = Task { await refresher.run() }
        defer { loop.cancel() }

        #expect(await waitUntil { provider.calls == 1 && clock.sleeperCount == 1 })
        clock.advance(by: 60)
        refresher.requestRefresh()  // SIGHUP, without the clock reaching the prefetch point
        #expect(await waitUntil { provider.calls == 2 })
        // Same answer before the prefetch point: back on the prefetch schedule, no new generation.
        #expect(await waitUntil { clock.sleeperCount == 1 })
        #expect(refresher.serving()?.generation == 1)
        #expect(refresher.machine.nextRefresh == Fixture.expiration.addingTimeInterval(-900))
        loop.cancel()
        await loop.value
    }

    @Test func runStopsWhenCancelled() async {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let loop = Task { await refresher.run() }
        #expect(await waitUntil { provider.calls == 1 && clock.sleeperCount == 1 })
        loop.cancel()
        await loop.value
        #expect(clock.sleeperCount == 0)
        clock.advance(by: 86_400)
        #expect(provider.calls == 1)
    }

    @Test func logsNeverCarryASecret() async throws {
        let clock = VirtualClock(Fixture.t0)
        let lines = LogLines()
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(
            provider: provider, clock: clock, random: { 0 }, logger: .capturing(into: lines))
        await refresher.refresh()  // new generation
        await refresher.refresh()  // unchanged
        provider.fail(with: NotACredentialError())  // an error whose text quotes the secret
        await refresher.refresh()
        provider.answer(with: Fixture.sts(secret: Fixture.secret + "-2", token: Fixture.token + "-2"))
        await refresher.refresh()  // rotation
        clock.advance(to: Fixture.expiration.addingTimeInterval(3600))
        provider.answer(with: Fixture.accessKeyPair())
        await refresher.refresh()

        let log = lines.all
        #expect(log.count >= 5)
        #expect(log.contains { $0.contains("STS.N*********7") })
        for line in log {
            #expect(!line.contains(Fixture.secret))
            #expect(!line.contains(Fixture.token))
            #expect(!line.contains("must-never-leak"))
            #expect(!line.contains(Fixture.accessKeyId))
            #expect(!line.contains("LTAI5tAbCdEfGhIjKlMn"))
        }
    }
}
