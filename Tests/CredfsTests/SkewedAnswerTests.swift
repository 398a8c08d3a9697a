import Foundation
import Testing

/// A real mount against an upstream whose `Date` runs 60 s ahead and whose answer expires
/// 24 s ahead of the local clock: by the cloud's clock it has expired (issue 26). Once it
/// drove the daemon to 1,081 requests in 2 s and dropped good credentials.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct SkewedAnswerTests {
    @Test func anAnswerExpiredByTheCloudsClockIsRejectedWithBackoff() async throws {
        // Generation 1: 290 s left by the fake's (the cloud's) clock, 350 s by ours.
        let server = FakeCredentialServer(lifetime: 290, clockOffset: 60)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        #expect(try daemon.status()["state"] as? String == "fresh")

        // From now on every answer is a new set whose Expiration lies 24 s ahead of the
        // local clock, 36 s behind the fake's.
        server.state.withLock {
            $0.lifetime = -36
            $0.rotateOnEachRequest = true
        }
        server.rotate()
        let before = server.requests
        let asked = Date()
        daemon.signal(SIGHUP)
        do {
            try waitUntil("three rejected answers", timeout: 30) {
                try daemon.status()["consecutiveFailures"] as? Int ?? 0 >= 3
            }
        } catch {
            let status = try daemon.status()
            let facts = ["state", "generation", "consecutiveFailures", "lastError"].map { "\($0) \(status[$0] ?? "?")" }
            Issue.record(
                "\(error): \(server.requests - before) upstream requests meanwhile; \(facts.joined(separator: ", "))")
            return
        }
        let status = try daemon.status()
        let sent = server.requests - before
        let failures = status["consecutiveFailures"] as? Int ?? 0
        print(
            "skewed upstream: \(sent) requests, \(failures) failures in \(String(format: "%.1f", Date().timeIntervalSince(asked))) s"
        )
        // Each request is one failure (one more may be in flight): backoff, no busy loop.
        #expect(sent <= failures + 1, "\(sent) requests for \(failures) failures")
        #expect(status["state"] as? String == "stale")
        #expect(status["generation"] as? Int == 1)
        let lastError = status["lastError"] as? String ?? ""
        #expect(lastError.hasPrefix("answer already expired by the cloud's clock: Expiration "), "\(lastError)")
        #expect(lastError.contains("ahead of the local clock"), "\(lastError)")
        // Reads stay valid: the held generation.
        #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(1))
        #expect(daemon.read("credentials").text?.contains(FakeCredentialServer.accessKeyId(1)) == true)
        #expect(daemon.log.contains("already expired by the cloud's clock"))
    }
}
