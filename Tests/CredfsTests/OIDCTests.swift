import Foundation
import Testing

@testable import CredentialCore

/// `oidc-role-arn` against a fake STS on 127.0.0.1 (never an Alibaba host).
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct OIDCTests {
    @Test func mountServesRotatingCredentialsAndRereadsTheTokenFile() async throws {
        let sts = FakeSTSServer()
        sts.set { $0.acceptedToken = "oidc-token-A" }
        try await sts.start()
        let setup = try Fixtures.OIDCSetup(token: "oidc-token-A\n")
        defer { setup.dir.remove() }
        let daemon = try Daemon(
            [
                "--provider", "oidc-role-arn", "--sts-endpoint", sts.endpoint, "--role-session-name",
                "credfs-test",
            ],
            environment: setup.environment)
        defer { daemon.stop() }

        try daemon.expectFirstGeneration(provider: "oidc-role-arn")
        let first = try #require(sts.read { $0.seen.first })
        #expect(first.form["RoleArn"] == Fixtures.oidcRoleArn)
        #expect(first.form["OIDCProviderArn"] == Fixtures.oidcProviderArn)
        #expect(first.form["OIDCToken"] == "oidc-token-A")
        #expect(first.form["RoleSessionName"] == "credfs-test")
        #expect(first.form["DurationSeconds"] == "3600")

        // The kubelet rotates the token file: every refresh reads it again.
        for (n, token) in [(2, "oidc-token-B"), (3, "oidc-token-C")] {
            try setup.write(token)
            sts.set { $0.acceptedToken = token }
            sts.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(n))
            #expect(sts.read { $0.seen.last?.form["OIDCToken"] } == token)
        }
        // One STS request per refresh.
        #expect(sts.requests == 3)
        #expect(!daemon.log.contains("oidc-token-"))
    }

    @Test func stsRefusalSurfacesCodeAndMessageButNoSecret() async throws {
        let sts = FakeSTSServer()
        sts.set {
            $0.refuse = (
                403, "AuthenticationFail.NoPermission", "You are not authorized to assume this role."
            )
        }
        try await sts.start()
        let setup = try Fixtures.OIDCSetup(token: "oidc-token-secret")
        defer { setup.dir.remove() }
        let daemon = try Daemon(
            ["--provider", "oidc-role-arn", "--sts-endpoint", sts.endpoint, "--initial-wait", "1"],
            environment: setup.environment)
        defer { daemon.stop() }
        try waitUntil("a failure in status") { try daemon.status()["lastError"] is String }
        let lastError = try daemon.status()["lastError"] as? String ?? ""
        #expect(lastError.contains("HTTP 403"), "\(lastError)")
        #expect(lastError.contains("AuthenticationFail.NoPermission"), "\(lastError)")
        #expect(lastError.contains("You are not authorized to assume this role."), "\(lastError)")
        #expect(lastError.contains("FAKE-REQUEST-1"), "\(lastError)")
        #expect(!lastError.contains("oidc-token-secret"))
        #expect(!daemon.log.contains("oidc-token-secret"))
        #expect(try daemon.state() == "pending")
    }

    @Test func chaosMatrixKeepsLastGoodAndRecovers() async throws {
        let sts = FakeSTSServer()
        try await sts.start()
        let setup = try Fixtures.OIDCSetup(token: "oidc-token-A")
        defer { setup.dir.remove() }
        let daemon = try Daemon(
            ["--provider", "oidc-role-arn", "--sts-endpoint", sts.endpoint],
            environment: setup.environment)
        defer { daemon.stop() }
        // STS has 5 s connect / 10 s read: a hung STS is given up after about 10 s.
        try runChaosMatrix(daemon: daemon, fake: sts, hangBound: 11.5)
    }

    @Test func aMissingTokenFileNamesIt() async throws {
        let provider = OIDCProvider(
            roleArn: Fixtures.oidcRoleArn, oidcProviderArn: Fixtures.oidcProviderArn,
            tokenFile: "/nonexistent/oidc-token",
            endpoint: "http://127.0.0.1:\(unusedLoopbackPort())", clock: SystemRefreshClock())
        do {
            _ = try await provider.fetch()
            Issue.record("fetched without a token file")
        } catch let error as CredentialError {
            #expect(error.message.contains("/nonexistent/oidc-token"), "\(error.message)")
        }
    }

    @Test func endpointRules() {
        #expect(
            STSEndpoint.resolve(flag: "http://127.0.0.1:8080/", environment: [:])
                == "http://127.0.0.1:8080")
        #expect(
            STSEndpoint.resolve(flag: "sts.example.test", environment: [:]) == "https://sts.example.test")
        #expect(
            STSEndpoint.resolve(flag: nil, environment: ["ALIBABA_CLOUD_STS_REGION": "cn-shanghai"])
                == "https://sts.cn-shanghai.aliyuncs.com")
        #expect(
            STSEndpoint.resolve(
                flag: nil,
                environment: [
                    "ALIBABA_CLOUD_STS_REGION": "cn-shanghai", "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED": "true",
                ])
                == "https://sts-vpc.cn-shanghai.aliyuncs.com")
        #expect(STSEndpoint.resolve(flag: nil, environment: [:]) == "https://sts.aliyuncs.com")
    }

    @Test func flagsAreValidated() throws {
        var environment = Fixtures.environment()
        environment["ALIBABA_CLOUD_ROLE_ARN"] = Fixtures.oidcRoleArn
        environment["ALIBABA_CLOUD_OIDC_PROVIDER_ARN"] = Fixtures.oidcProviderArn
        let base = ["mount", "/tmp/credfs-never", "--provider", "oidc-role-arn"]
        let missingFile = try runCredfs(base, environment: environment)
        #expect(missingFile.status == 64)
        #expect(missingFile.stderr.contains("ALIBABA_CLOUD_OIDC_TOKEN_FILE"))
        environment["ALIBABA_CLOUD_OIDC_TOKEN_FILE"] = "/tmp/x"
        #expect(try runCredfs(base + ["--duration", "899"], environment: environment).status == 64)
        #expect(try runCredfs(base + ["--duration", "43201"], environment: environment).status == 64)
        #expect(
            try runCredfs(base + ["--role-session-name", "has space"], environment: environment).status
                == 64)
        #expect(
            try runCredfs(base + ["--sts-endpoint", "ftp://x"], environment: environment).status == 64)
        #expect(!FileManager.default.fileExists(atPath: "/tmp/credfs-never"))
    }
}
