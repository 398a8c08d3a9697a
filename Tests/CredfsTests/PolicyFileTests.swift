import Foundation
import Testing

/// A `--policy-file` that becomes unreadable while mounted. A running server keeps the
/// policy it read at start; a successor (a takeover after kill -9) reads it again: it must
/// still serve the carried set, and its refreshes fail with a lastError that names the file
/// (never a role session without the policy it was given).
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct PolicyFileTests {
    @Test func anUnreadablePolicyFileKeepsTheHeldSetAndSaysWhy() async throws {
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let work = try TempDir()
        defer { work.remove() }
        let policy = work.path + "/policy.json"
        try Fixtures.policy.write(toFile: policy, atomically: true, encoding: .utf8)
        let mount = try Supervised(
            [
                "--provider", "ram-role-arn", "--source-provider", "env", "--role-arn", Fixtures.assumedRoleArn,
                "--sts-endpoint", sts.endpoint, "--policy-file", policy,
            ], environment: Fixtures.ramRoleArnEnvironment())
        defer { try? mount.stop() }
        try waitUntil("generation 1") { (try? mount.status()["generation"] as? Int) == 1 }
        #expect(sts.read { $0.seen.last?.query["Policy"] } == Fixtures.policy)
        let held = try #require(readFile(mount.path("credentials")).bytes)

        try FileManager.default.removeItem(atPath: policy)
        let old = try mount.serverPID()
        kill(old, SIGKILL)
        try waitUntil("a successor", timeout: 10) {
            (try? mount.serverPID()).map { $0 != old && $0 > 0 } ?? false
        }
        sts.rotate()
        kill(try mount.serverPID(), SIGHUP)
        try waitUntil("a failed refresh", timeout: 10) {
            (try mount.status()["consecutiveFailures"] as? Int ?? 0) >= 1
        }
        let status = try mount.status()
        let lastError = status["lastError"] as? String ?? ""
        print("policy file gone: lastError \(lastError)")
        #expect(lastError.contains("policy file \(policy)"), "\(status)")
        #expect(status["generation"] as? Int == 1)
        #expect(readFile(mount.path("credentials")).bytes == held, "the held set changed")
        // No AssumeRole without the policy: STS saw the first request only.
        #expect(sts.requests == 1)
    }
}
