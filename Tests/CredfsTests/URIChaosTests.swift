import Foundation
import Testing

/// The `uri` source through a real mount, against a FakeHTTPServer-based credentials URI:
/// one GET per refresh, and the whole chaos matrix.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(4)))
struct URIChaosTests {
    @Test func oneGETPerRefresh() async throws {
        let uri = FakeURIServer()
        try await uri.start()
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", uri.url], environment: Fixtures.ramRoleArnEnvironment())
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
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", uri.url], environment: Fixtures.ramRoleArnEnvironment())
        defer { daemon.stop() }
        // URI: 5 s connect / 10 s read, so a hung server is given up after about 10 s.
        try runChaosMatrix(daemon: daemon, fake: uri, hangBound: 11.5)
    }
}
