import Foundation
import Testing

@testable import CredentialCore

/// The credential sources' values, environments and fakes that several suites use (the
/// metadata, ram-role-arn, OIDC, auto-chain, proxy, HTTPS and takeover suites).
enum Fixtures {
    /// An environment for a daemon that must not reach any real metadata service.
    static func environment(_ extra: [String: String] = [:]) -> [String: String] {
        var environment = Host.hermeticEnvironment
        for key in [
            "ALIBABA_CLOUD_ECS_METADATA", "ALIBABA_CLOUD_IMDSV1_DISABLED", "ALIBABA_CLOUD_ACCESS_KEY_ID",
            "ALIBABA_CLOUD_ACCESS_KEY_SECRET", "ALIBABA_CLOUD_CREDENTIALS_URI", "ALIBABA_CLOUD_ROLE_ARN",
            "ALIBABA_CLOUD_OIDC_PROVIDER_ARN", "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            "ALIBABA_CLOUD_ECS_METADATA_DISABLED",
        ] {
            environment[key] = nil
        }
        for (key, value) in extra { environment[key] = value }
        return environment
    }

    // MARK: through a real mount

    static let assumedRoleArn = "acs:ram::1234567890123456:role/credfs-assumed"
    static let envKey = "LTAI5tFakeTestKey0001"
    static let envSecret = "fake-env-secret-0001-do-not-leak"
    static let policy = #"{"Version":"1","Statement":[{"Effect":"Allow","Action":"oss:Get*","Resource":"*"}]}"#

    /// The daemon's environment: only the env source's variables, nothing else of the chain.
    static func ramRoleArnEnvironment(_ extra: [String: String] = [:]) -> [String: String] {
        var environment = environment()
        for key in [
            "ALIBABA_CLOUD_SECURITY_TOKEN", "ALIBABA_CLOUD_ROLE_SESSION_NAME", "ALIBABA_CLOUD_STS_REGION",
            "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED",
        ] {
            environment[key] = nil
        }
        environment["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"
        environment["ALIBABA_CLOUD_ACCESS_KEY_ID"] = envKey
        environment["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = envSecret
        for (key, value) in extra { environment[key] = value }
        return environment
    }

    static func fakeAssumeRole(_ keys: [String: FakeAssumeRoleServer.Key]? = nil) -> FakeAssumeRoleServer {
        FakeAssumeRoleServer(keys: keys ?? [envKey: .init(secret: envSecret, token: nil)])
    }

    static let oidcRoleArn = "acs:ram::1234567890123456:role/credfs-test"
    static let oidcProviderArn = "acs:ram::1234567890123456:oidc-provider/ack-rrsa-test"

    struct OIDCSetup {
        let dir: TempDir
        var tokenFile: String { dir.path + "/token" }
        init(token: String) throws {
            dir = try TempDir()
            try token.write(toFile: dir.path + "/token", atomically: true, encoding: .utf8)
        }
        func write(_ token: String) throws {
            try token.write(toFile: tokenFile, atomically: true, encoding: .utf8)
        }
        var environment: [String: String] {
            Fixtures.environment([
                "ALIBABA_CLOUD_ROLE_ARN": Fixtures.oidcRoleArn,
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": Fixtures.oidcProviderArn,
                "ALIBABA_CLOUD_OIDC_TOKEN_FILE": tokenFile, "ALIBABA_CLOUD_ECS_METADATA_DISABLED": "true",
            ])
        }
    }

    /// The chain's four sources, each a fake (AutoChainTests, AutoChainErrorTests).
    struct AutoChainFakes {
        let ecs = FakeMetadataServer()
        let sts = FakeSTSServer()
        let uri = FakeCredentialServer()
        let dir: TempDir
        init() async throws {
            dir = try TempDir()
            try "oidc-token-A".write(toFile: dir.path + "/token", atomically: true, encoding: .utf8)
            try await ecs.start()
            try await sts.start()
            try await uri.start()
        }
        func stop() async {
            await ecs.stop()
            await sts.stop()
            await uri.stop()
            dir.remove()
        }
        var env: [String: String] {
            [
                "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI5tAutoEnvKey0001",
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "auto-env-secret",
            ]
        }
        var oidc: [String: String] {
            [
                "ALIBABA_CLOUD_ROLE_ARN": Fixtures.oidcRoleArn,
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": Fixtures.oidcProviderArn,
                "ALIBABA_CLOUD_OIDC_TOKEN_FILE": dir.path + "/token",
            ]
        }
        var uriVariable: [String: String] { ["ALIBABA_CLOUD_CREDENTIALS_URI": uri.url] }
        func auto(_ environment: [String: String], imds: String? = nil) -> AutoProvider {
            AutoProvider(
                environment: environment, imdsEndpoint: imds ?? ecs.endpoint, stsEndpoint: sts.endpoint,
                clock: SystemRefreshClock())
        }
        var counts: (ecs: Int, sts: Int, uri: Int) { (ecs.requests, sts.requests, uri.requests) }
    }
}
