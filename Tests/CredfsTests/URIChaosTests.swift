import Foundation
import Testing

/// The `uri` source through a real mount, against a FakeHTTPServer-based credentials URI:
/// one GET per refresh, and the whole chaos matrix.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(4)))
struct URIChaosTests {
    @Test func oneGETPerRefresh() async throws {
        let uri = FakeURIServer()
        try await uri.start()
        defer { Task { await uri.stop() } }
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", uri.url], environment: RamRoleArnTests.environment())
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        for n in 2...4 {
            uri.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(n))
        }
        #expect(uri.requests == 4)
        print("uri (mount): 4 refreshes, \(uri.requests) GET")
    }

    @Test func chaosMatrixKeepsLastGoodAndRecovers() async throws {
        let uri = FakeURIServer()
        try await uri.start()
        defer { Task { await uri.stop() } }
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", uri.url], environment: RamRoleArnTests.environment())
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        // URI: 5 s connect / 10 s read, so a hung server is given up after about 10 s.
        let measured = try runChaosMatrix(
            daemon: daemon, hangBound: 11.5, setChaos: { chaos in uri.set { $0.chaos = chaos } },
            rotate: { uri.rotate() })
        #expect(measured.count == Chaos.allCases.count)
    }
}
