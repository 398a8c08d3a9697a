import Foundation
import Testing

@testable import CredentialCore

@Suite struct CredentialViewSourceTests {
    static let credentialViews: [CredentialView] = [
        .credentials, .accessKeyId, .accessKeySecret, .token, .expiration,
    ]
    let mountedAt = Fixture.t0.addingTimeInterval(-5)

    func source(_ provider: ScriptedProvider, clock: VirtualClock, initialWait: TimeInterval = 0.2)
        -> (
            Refresher, CredentialViewSource
        )
    {
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let source = CredentialViewSource(
            refresher: refresher, initialWait: initialWait, mountedAt: mountedAt, version: "9.9.9")
        return (refresher, source)
    }

    func statusJSON(_ content: ViewContent) throws -> [String: Any] {
        guard case .bytes(let bytes, _, _) = content else {
            Issue.record("status is not bytes: \(content)")
            return [:]
        }
        return try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
    }

    @Test func peekWhilePendingIsEmpty() throws {
        let (_, source) = source(ScriptedProvider { Fixture.sts() }, clock: VirtualClock(Fixture.t0))
        for view in Self.credentialViews {
            #expect(source.peek(view) == .bytes([], mtime: mountedAt))
        }
        let status = try statusJSON(source.peek(.status))
        #expect(status["state"] as? String == "pending")
        #expect(status["version"] as? String == "9.9.9")
    }

    @Test func openWhilePendingAsksToWaitTheInitialWait() async {
        let (_, source) = source(ScriptedProvider { Fixture.sts() }, clock: VirtualClock(Fixture.t0))
        // The caller (the FUSE bridge) parks the open for this long; nothing blocks here.
        #expect(source.open(.credentials) == .pending(timeout: .milliseconds(200)))
        #expect(source.open(.accessKeyId) == .pending(timeout: .milliseconds(200)))
    }

    @Test func statusNeverWaits() async throws {
        let (_, source) = source(
            ScriptedProvider { Fixture.sts() }, clock: VirtualClock(Fixture.t0), initialWait: 5)
        let (content, elapsed) = await offPool { () -> (ViewContent, TimeInterval) in
            let start = Date()
            let content = source.open(.status)
            return (content, Date().timeIntervalSince(start))
        }
        #expect(elapsed < 1)
        #expect(try statusJSON(content)["state"] as? String == "pending")
    }

    @Test func publishedSTSCredentialsFillEveryView() async throws {
        let clock = VirtualClock(Fixture.t0)
        let (refresher, source) = source(ScriptedProvider { Fixture.sts() }, clock: clock)
        await refresher.refresh()
        let mtime = Fixture.t0
        let expected: [CredentialView: [UInt8]] = [
            .credentials: Render.credentialsFile(Fixture.sts()),
            .accessKeyId: Array(Fixture.accessKeyId.utf8),
            .accessKeySecret: Array(Fixture.secret.utf8),
            .token: Array(Fixture.token.utf8),
            .expiration: Array("2024-05-21T10:39:29Z".utf8),
        ]
        for view in Self.credentialViews {
            let bytes = try #require(expected[view])
            #expect(source.peek(view) == .bytes(bytes, mtime: mtime, generation: 1))
            #expect(source.open(view) == .bytes(bytes, mtime: mtime, generation: 1))
        }
        let status = try statusJSON(source.open(.status))
        #expect(status["state"] as? String == "fresh")
        #expect(status["generation"] as? Int == 1)
        #expect(status["provider"] as? String == "test")
        #expect(status["accessKeyId"] as? String == "STS.N*********7")
        #expect(status["mountedAt"] as? String == Timestamp.format(mountedAt))
    }

    @Test func accessKeyPairHasNoTokenNorExpirationView() async throws {
        let pair = Fixture.accessKeyPair()
        let (refresher, source) = source(ScriptedProvider { pair }, clock: VirtualClock(Fixture.t0))
        await refresher.refresh()
        #expect(source.open(.token) == .absent)
        #expect(source.peek(.token) == .absent)
        #expect(source.open(.expiration) == .absent)
        #expect(source.peek(.expiration) == .absent)
        #expect(
            source.open(.credentials)
                == .bytes(Render.credentialsFile(pair), mtime: Fixture.t0, generation: 1))
        #expect(
            source.open(.accessKeySecret)
                == .bytes(Array(Fixture.secret.utf8), mtime: Fixture.t0, generation: 1))
        let status = try statusJSON(source.peek(.status))
        #expect(status["state"] as? String == "fresh")
        #expect(status["expiration"] is NSNull)
    }

    @Test func viewsFollowRotation() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let (refresher, source) = source(provider, clock: clock)
        await refresher.refresh()
        #expect(
            source.open(.accessKeySecret)
                == .bytes(Array(Fixture.secret.utf8), mtime: Fixture.t0, generation: 1))

        clock.advance(by: 2700)
        let next = Fixture.sts(
            secret: "second-generation", expiration: clock.now().addingTimeInterval(3600))
        provider.answer(with: next)
        await refresher.refresh()
        let fetched = clock.now()
        #expect(
            source.open(.accessKeySecret)
                == .bytes(Array("second-generation".utf8), mtime: fetched, generation: 2))
        #expect(
            source.peek(.credentials)
                == .bytes(Render.credentialsFile(next), mtime: fetched, generation: 2))
        #expect(try statusJSON(source.peek(.status))["generation"] as? Int == 2)
    }

    @Test func expiredCredentialsAreUnavailableWithoutWaiting() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let (refresher, source) = source(provider, clock: clock, initialWait: 5)
        await refresher.refresh()
        provider.fail(with: CredentialError("uri: HTTP 503"))
        clock.advance(by: 2700)
        await refresher.refresh()
        #expect(
            source.open(.token) == .bytes(Array(Fixture.token.utf8), mtime: Fixture.t0, generation: 1))
        #expect(try statusJSON(source.peek(.status))["state"] as? String == "stale")

        clock.advance(to: Fixture.expiration)
        let (content, elapsed) = await offPool { () -> (ViewContent, TimeInterval) in
            let start = Date()
            let content = source.open(.credentials)
            return (content, Date().timeIntervalSince(start))
        }
        #expect(content == .unavailable)
        #expect(elapsed < 1)
        for view in Self.credentialViews {
            #expect(source.peek(view) == .bytes([], mtime: mountedAt))
            #expect(source.open(view) == .unavailable)
        }
        let status = try statusJSON(source.peek(.status))
        #expect(status["state"] as? String == "expired")
        #expect(status["lastError"] as? String == "uri: HTTP 503")
    }

    /// A pin starts at the first *secret* field read (docs/decisions.md, "Pinning"):
    /// `expiration`, world-readable, follows a pin but never starts one.
    @Test func expirationFollowsAPinButNeverStartsOne() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let (refresher, source) = source(provider, clock: clock)
        await refresher.refresh()
        let reader = GenerationPins.Reader(group: 77, uid: 1000)
        func generation(_ content: ViewContent) -> Int? {
            if case .bytes(_, _, let generation) = content { return generation }
            return nil
        }
        func rotate(_ n: Int) async {
            clock.advance(by: 2)
            provider.answer(
                with: Fixture.sts(id: "STS.ROTATED\(n)xxxxxxxx", expiration: clock.now().addingTimeInterval(3600)))
            await refresher.refresh()
            #expect(refresher.serving()?.generation == n)
        }
        #expect(generation(source.open(.expiration, reader: reader)) == 1)
        #expect(source.pins.count == 0)
        await rotate(2)
        // Not held to generation 1 by the expiration read.
        #expect(generation(source.open(.accessKeyId, reader: reader)) == 2)
        #expect(source.pins.count == 1)
        await rotate(3)
        // The secret read pinned generation 2, and expiration follows it.
        #expect(generation(source.open(.expiration, reader: reader)) == 2)
        #expect(generation(source.open(.token, reader: reader)) == 2)
    }

    @Test func secretViewsAreMarkedSecret() {
        #expect(CredentialView.credentials.isSecret)
        #expect(CredentialView.accessKeyId.isSecret)
        #expect(CredentialView.accessKeySecret.isSecret)
        #expect(CredentialView.token.isSecret)
        #expect(!CredentialView.expiration.isSecret)
        #expect(!CredentialView.status.isSecret)
        #expect(CredentialView.accessKeyId.rawValue == "access_key_id")
        #expect(CredentialView.accessKeySecret.rawValue == "access_key_secret")
    }
}
