import Foundation
import Synchronization
import Testing

@testable import CredentialCore

/// `ecs-ram-role` against a fake metadata service on 127.0.0.1 (never 100.100.100.200).
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct EcsMetadataTests {
    @Test func servesRotatingCredentialsWithOneGetPerRefreshOnceTokenAndRoleAreKnown() async throws {
        let fake = FakeMetadataServer(tokenMode: .required)
        try await fake.start()
        let daemon = try Daemon(
            ["--provider", "ecs-ram-role", "--imds-endpoint", fake.endpoint],
            environment: Fixtures.environment())
        defer { daemon.stop() }

        try daemon.expectFirstGeneration(provider: "ecs-ram-role")
        let first = fake.read { ($0.tokenPuts, $0.roleListGets, $0.credentialGets) }
        #expect(first == (1, 1, 1))

        let refreshes = 5
        for n in 2...(refreshes + 1) {
            fake.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(n))
            #expect(daemon.readAsNewGroup("token") == FakeCredentialServer.token(n))
        }
        let (puts, lists, gets, tokenless, ttls, rejected) = fake.read {
            (
                $0.tokenPuts, $0.roleListGets, $0.credentialGets, $0.tokenlessGets, $0.ttlHeaders,
                $0.rejectedTokens
            )
        }
        // The token and the role are asked for once; each refresh after that is one GET.
        #expect(puts == 1, "token PUTs: \(puts)")
        #expect(lists == 1, "role lookups: \(lists)")
        #expect(gets == refreshes + 1)
        #expect(tokenless == 0 && rejected == 0)
        #expect(ttls == ["21600"])
        print(
            "ecs-ram-role: \(refreshes) refreshes after the first cost \(gets - 1) upstream requests (\(puts) PUT, \(lists) role lookup in total)"
        )
        let log = daemon.log
        #expect(!log.contains("imds-token-"), "the metadata token reached the log")
        #expect(!log.contains("secret-") && !log.contains("token-1-"))
    }

    @Test func refusesIMDSv1WhenDisabledAndUsesTheTokenOnceItWorks() async throws {
        let fake = FakeMetadataServer(tokenMode: .broken(403))
        try await fake.start()
        let daemon = try Daemon(
            ["--provider", "ecs-ram-role", "--imds-endpoint", fake.endpoint, "--initial-wait", "1"],
            environment: Fixtures.environment(["ALIBABA_CLOUD_IMDSV1_DISABLED": "true"]))
        defer { daemon.stop() }

        try waitUntil("a failure in status") { try daemon.status()["lastError"] is String }
        let status = try daemon.status()
        #expect(status["state"] as? String == "pending")
        let lastError = status["lastError"] as? String ?? ""
        #expect(lastError.contains("ALIBABA_CLOUD_IMDSV1_DISABLED=true"), "\(lastError)")
        #expect(lastError.contains("HTTP 403"), "\(lastError)")
        #expect(daemon.read("credentials").error == EIO)
        // Not one request went out without a token.
        #expect(fake.read { $0.tokenlessGets + $0.roleListGets + $0.credentialGets } == 0)
        #expect(fake.read { $0.tokenPuts } >= 1)

        fake.set { $0.tokenMode = .required }
        daemon.signal(SIGHUP)
        try waitUntil("credentials once tokens work") {
            daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(1)
        }
        #expect(fake.read { $0.tokenlessGets } == 0)
    }

    @Test func fallsBackToIMDSv1WhenTheTokenEndpointIsBroken() async throws {
        let fake = FakeMetadataServer(tokenMode: .broken(404))
        try await fake.start()
        let daemon = try Daemon(
            ["--provider", "ecs-ram-role", "--imds-endpoint", fake.endpoint],
            environment: Fixtures.environment())
        defer { daemon.stop() }
        try waitUntil("credentials over IMDSv1") {
            daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(1)
        }
        #expect(fake.read { $0.tokenlessGets } == 2)  // role lookup + credentials
        #expect(daemon.log.contains("IMDSv1"))
    }

    @Test func chaosMatrixKeepsLastGoodAndRecovers() async throws {
        let fake = FakeMetadataServer(tokenMode: .required)
        try await fake.start()
        let daemon = try Daemon(
            ["--provider", "ecs-ram-role", "--imds-endpoint", fake.endpoint],
            environment: Fixtures.environment())
        defer { daemon.stop() }
        try runChaosMatrix(daemon: daemon, fake: fake, hangBound: 2.5)
        // The token survived all of it: no fault was the token's.
        #expect(fake.read { $0.tokenPuts } == 1)
        #expect(!daemon.log.contains("imds-token-"))
    }

    // MARK: the provider on its own

    @Test func tokenIsRenewedShortlyBeforeItsTTLEnds() async throws {
        let fake = FakeMetadataServer(lifetime: 86_400)
        try await fake.start()
        let clock = ManualClock(Date())
        let provider = EcsMetadataProvider(endpoint: fake.endpoint, clock: clock)
        _ = try await provider.fetch()
        clock.advance(by: 3600)
        _ = try await provider.fetch()
        #expect(fake.read { $0.tokenPuts } == 1)
        clock.advance(
            by: TimeInterval(EcsMetadataProvider.tokenTTL) - 3600 - EcsMetadataProvider.tokenRenewBefore + 1)
        _ = try await provider.fetch()
        #expect(fake.read { $0.tokenPuts } == 2)
        #expect(fake.read { $0.roleListGets } == 1)
    }

    @Test func roleIsLookedUpAgainOnlyOn404() async throws {
        let fake = FakeMetadataServer()
        try await fake.start()
        let provider = EcsMetadataProvider(endpoint: fake.endpoint, clock: SystemRefreshClock())
        _ = try await provider.fetch()
        _ = try await provider.fetch()
        #expect(fake.read { $0.roleListGets } == 1)
        fake.set { $0.role = "AnotherRole" }
        fake.rotate()
        let credentials = try await provider.fetch()
        #expect(credentials.accessKeyId == FakeCredentialServer.accessKeyId(2))
        #expect(fake.read { $0.roleListGets } == 2)
        #expect(
            fake.read { $0.requestedRoles } == [
                "EcsRamRoleTest", "EcsRamRoleTest", "EcsRamRoleTest", "AnotherRole",
            ])
    }

    @Test func configuredRoleIsNeverLookedUp() async throws {
        let fake = FakeMetadataServer()
        try await fake.start()
        let provider = EcsMetadataProvider(endpoint: fake.endpoint, role: "EcsRamRoleTest", clock: SystemRefreshClock())
        _ = try await provider.fetch()
        #expect(fake.read { $0.roleListGets } == 0)
        // A configured role that the service does not know is an error, not a lookup.
        let wrong = EcsMetadataProvider(endpoint: fake.endpoint, role: "Nope", clock: SystemRefreshClock())
        await #expect(throws: CredentialError.self) { try await wrong.fetch() }
        #expect(fake.read { $0.roleListGets } == 0)
    }

    @Test func aRejectedTokenIsDroppedAndReplaced() async throws {
        let fake = FakeMetadataServer()
        try await fake.start()
        let provider = EcsMetadataProvider(endpoint: fake.endpoint, clock: SystemRefreshClock())
        _ = try await provider.fetch()
        fake.set { $0.issued = [] }  // the service forgot every token (restart)
        await #expect(throws: CredentialError.self) { try await provider.fetch() }
        _ = try await provider.fetch()
        #expect(fake.read { $0.tokenPuts } == 2)
    }

    @Test func aHangingTokenEndpointFallsBackToIMDSv1() async throws {
        let fake = FakeMetadataServer(tokenMode: .hangs)
        try await fake.start()
        let provider = EcsMetadataProvider(endpoint: fake.endpoint, clock: SystemRefreshClock())
        let started = Date()
        let credentials = try await provider.fetch()
        let took = Date().timeIntervalSince(started)
        #expect(credentials.accessKeyId == FakeCredentialServer.accessKeyId(1))
        // The metadata service's 1 s read timeout, not the next larger one (5 s connect, 10 s
        // read of the credentials URI and STS): a loaded machine still stays well under 5 s.
        #expect(took < 5, "took \(took) s")
        print(
            "ecs-ram-role: hanging token endpoint, IMDSv1 fallback served after \(String(format: "%.2f", took)) s"
        )
    }

    @Test func noRoleAttachedSaysSo() async throws {
        let fake = FakeMetadataServer()
        fake.set { $0.role = "" }
        try await fake.start()
        let provider = EcsMetadataProvider(endpoint: fake.endpoint, clock: SystemRefreshClock())
        do {
            _ = try await provider.fetch(probing: false)
            Issue.record("fetch succeeded without a role")
        } catch {
            #expect(error.message.contains("no RAM role is attached"), "\(error.message)")
        }
    }
}

/// A wall clock the test moves by hand (the provider never sleeps on it).
final class ManualClock: RefreshClock, Sendable {
    private let time: Mutex<Date>
    init(_ start: Date) { time = Mutex(start) }
    func now() -> Date { time.withLock { $0 } }
    func advance(by seconds: TimeInterval) { time.withLock { $0 += seconds } }
    func sleep(until deadline: Date) async throws {
        while now() < deadline { try await Task.sleep(for: .milliseconds(10)) }
    }
}
