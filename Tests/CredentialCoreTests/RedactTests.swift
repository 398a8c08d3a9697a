import Foundation
import Synchronization
import Testing

@testable import CredentialCore

/// Text from outside (issue 10): what reaches `status` and `STATUS=` has no secret in it.
@Suite struct RedactTests {
    @Test func knownSecretsInEveryFormAndURLQueriesAreTakenOut() {
        let secret = "SECRET+value/with=signs"
        let text = """
            denied for \(secret) (\(STSAnswer.percentEncode(secret))) \
            \(STSAnswer.percentEncode(STSAnswer.percentEncode(secret))) cut: \(secret.prefix(10)) \
            at https://sts.example/?Signature=abc&AccessKeyId=LTAI5tXXXX done
            """
        let out = Redact.text(text, secrets: [secret])
        #expect(!out.contains(secret))
        #expect(!out.contains(STSAnswer.percentEncode(secret)))
        #expect(!out.contains(String(secret.prefix(8))))
        #expect(!out.contains("Signature=abc") && !out.contains("LTAI5tXXXX"))
        #expect(out.contains("https://sts.example/?(redacted) done"))
    }

    @Test func textIsOneBoundedLine() {
        let out = Redact.text(String(repeating: "line\n", count: 500), secrets: [])
        #expect(!out.contains("\n"))
        #expect(out.count <= Redact.maxLength + 1)
    }

    /// A provider that knows a secret of its own (an OIDC token, a source key).
    final class Echoing: CredentialProvider, Sendable {
        let name = "echo"
        let secrets = ["my-own-oidc-token-0123456789"]
        let answer = Mutex<Result<Credentials, CredentialError>>(.success(Fixture.sts()))
        func fetch() async throws -> Credentials { try answer.withLock { $0 }.get() }
    }

    @Test func theRefresherRedactsEveryKindBeforeStatusAndTheFailureHook() async throws {
        let clock = VirtualClock(Fixture.t0)
        let provider = Echoing()
        let reported = Mutex<[String]>([])
        let refresher = Refresher(
            provider: provider, clock: clock, random: { 0 }, logger: .quiet,
            onFailure: { message, _ in reported.withLock { $0.append(message) } })
        await refresher.refresh()
        let held = Fixture.sts()
        let planted = [
            held.accessKeySecret, held.securityToken ?? "", held.accessKeyId, provider.secrets[0],
        ]
        provider.answer.withLock {
            $0 = .failure(
                CredentialError(
                    "upstream said: \(planted.joined(separator: " ")) see https://x.example/cb?token=leaky-query"))
        }
        clock.advance(by: 2700)
        await refresher.refresh()
        let status = refresher.status(mountedAt: Fixture.t0, version: "t")
        let lastError = try #require(status.lastError)
        let everything = lastError + reported.withLock { $0.joined() }
        for secret in planted + ["leaky-query"] {
            #expect(!everything.contains(secret), "found a planted secret")
        }
        #expect(lastError.hasPrefix("upstream said: (redacted)"))
    }
}
