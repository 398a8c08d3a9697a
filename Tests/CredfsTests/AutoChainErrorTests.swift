import Foundation
import Logging
import Testing

@testable import CredentialCore

/// `status.lastError` of an `auto` chain that found nothing names every step it tried
/// (issue 26: a cut at 300 characters hid every step after the first), bounded and
/// redacted still.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct AutoChainErrorTests {
    @Test func everyStepIsInLastError() async throws {
        let f = try await Fixtures.AutoChainFakes()
        // A metadata address and a credentials URI nobody answers, each with a long path:
        // their errors quote their URLs. Each alone was once longer than the whole message.
        let imds = "http://127.0.0.1:\(unusedLoopbackPort())/" + String(repeating: "metadata-", count: 30)
        let uri = "http://127.0.0.1:\(unusedLoopbackPort())/" + String(repeating: "long-path-", count: 40)
        let auto = f.auto(["ALIBABA_CLOUD_CREDENTIALS_URI": uri], imds: imds)
        let refresher = Refresher(
            provider: auto, clock: SystemRefreshClock(), logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() }
        )
        await refresher.refresh()
        await f.stop()
        let status = refresher.status(mountedAt: Date(), version: "t")
        let lastError = try #require(status.lastError)
        print("auto chain lastError (\(lastError.count) characters): \(lastError)")
        for step in ["env (", "oidc-role-arn (", "ecs-ram-role (", "uri ("] {
            #expect(lastError.contains(step), "\(step) missing from: \(lastError)")
        }
        #expect(lastError.contains("ecs-ram-role (ECS metadata service not reachable: "), "\(lastError)")
        #expect(lastError.count <= Redact.maxLength + 1)
        // Each step's own error is cut; every step is there.
        #expect(lastError.contains("long-path-long-path-"))
        #expect(!lastError.contains(String(repeating: "long-path-", count: 40)))
    }
}
