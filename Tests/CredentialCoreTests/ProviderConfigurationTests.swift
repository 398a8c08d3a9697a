import Foundation
import Testing

@testable import CredentialCore

/// Provider configuration resolved once (issue 11): a flag wins over its variable, an
/// empty value counts as unset, each missing value has its own one-line error, and the
/// `auto` chain's order comes from the environment alone. No network, no file but a
/// policy file in a temporary directory.
@Suite struct ProviderConfigurationTests {
    static let roleArn = "acs:ram::1:role/from-env"
    static let oidcEnvironment = [
        CloudVariable.roleArn: roleArn,
        CloudVariable.oidcProviderArn: "acs:ram::1:oidc-provider/env",
        CloudVariable.oidcTokenFile: "/var/run/token",
    ]

    func resolve(
        _ provider: ProviderKind, _ environment: [String: String] = [:], cwd: String = "/work",
        _ set: (inout ProviderFlags) -> Void = { _ in }
    ) throws(CredentialError) -> ProviderSetting {
        var flags = ProviderFlags(provider: provider)
        set(&flags)
        return try ProviderConfiguration(
            flags: flags, environment: ProviderEnvironment(environment), workingDirectory: cwd
        ).setting
    }

    /// The error `resolve` throws, or nil.
    func refusal(
        _ provider: ProviderKind, _ environment: [String: String] = [:],
        _ set: (inout ProviderFlags) -> Void = { _ in }
    ) -> String? {
        do throws(CredentialError) {
            _ = try resolve(provider, environment, set)
            return nil
        } catch {
            return error.message
        }
    }

    func oidc(_ setting: ProviderSetting) -> OIDCSettings? {
        if case .oidcRoleArn(let oidc) = setting { return oidc }
        return nil
    }

    func ram(_ setting: ProviderSetting) -> RamRoleSettings? {
        if case .ramRoleArn(let ram) = setting { return ram }
        return nil
    }

    func chain(_ setting: ProviderSetting) -> AutoChain? {
        if case .auto(let chain) = setting { return chain }
        return nil
    }

    @Test func theVariablesAreNamedAsTheSDKsNameThem() {
        #expect(CloudVariable.accessKeyId == "ALIBABA_CLOUD_ACCESS_KEY_ID")
        #expect(CloudVariable.credentialsURI == "ALIBABA_CLOUD_CREDENTIALS_URI")
        #expect(CloudVariable.ecsMetadataDisabled == "ALIBABA_CLOUD_ECS_METADATA_DISABLED")
        #expect(CloudVariable.oidcTokenFile == "ALIBABA_CLOUD_OIDC_TOKEN_FILE")
        #expect(CloudVariable.stsRegion.hasPrefix(CloudVariable.prefix))
    }

    @Test func aFlagWinsOverItsVariable() throws {
        let environment = Self.oidcEnvironment.merging([
            CloudVariable.roleSessionName: "env-session", CloudVariable.credentialsURI: "http://env.example/",
            CloudVariable.ecsMetadata: "env-role", CloudVariable.stsRegion: "cn-shanghai",
        ]) { a, _ in a }
        let flagged = try #require(
            oidc(
                try resolve(.oidcRoleArn, environment) {
                    $0.roleArn = "acs:ram::1:role/flag"
                    $0.oidcProviderArn = "acs:ram::1:oidc-provider/flag"
                    $0.oidcTokenFile = "/flag/token"
                    $0.roleSessionName = "flag-session"
                    $0.stsEndpoint = "sts.flag.example"
                }))
        #expect(flagged.roleArn == "acs:ram::1:role/flag")
        #expect(flagged.oidcProviderArn == "acs:ram::1:oidc-provider/flag")
        #expect(flagged.tokenFile == "/flag/token")
        #expect(flagged.sessionName == "flag-session")
        #expect(flagged.endpoint == "https://sts.flag.example")

        let fromEnvironment = try #require(oidc(try resolve(.oidcRoleArn, environment)))
        #expect(fromEnvironment.roleArn == Self.roleArn)
        #expect(fromEnvironment.oidcProviderArn == "acs:ram::1:oidc-provider/env")
        #expect(fromEnvironment.tokenFile == "/var/run/token")
        #expect(fromEnvironment.sessionName == "env-session")
        #expect(fromEnvironment.endpoint == "https://sts.cn-shanghai.aliyuncs.com")

        #expect(try resolve(.uri, environment) == .uri("http://env.example/"))
        #expect(try resolve(.uri, environment) { $0.uri = "http://flag.example/" } == .uri("http://flag.example/"))
        #expect(
            try resolve(.ecsRamRole, environment)
                == .ecsRamRole(
                    EcsSettings(endpoint: ProviderFlags.defaultIMDSEndpoint, role: "env-role", imdsV1Disabled: false)))
        #expect(
            try resolve(.ecsRamRole, environment) { $0.role = "flag-role" }
                == .ecsRamRole(
                    EcsSettings(endpoint: ProviderFlags.defaultIMDSEndpoint, role: "flag-role", imdsV1Disabled: false)))
    }

    @Test func anEmptyValueCountsAsUnset() throws {
        let environment = Self.oidcEnvironment.merging([CloudVariable.roleSessionName: ""]) { a, _ in a }
        let resolved = try #require(oidc(try resolve(.oidcRoleArn, environment) { $0.roleArn = "" }))
        #expect(resolved.roleArn == Self.roleArn)
        #expect(resolved.sessionName == nil)
        #expect(
            refusal(.oidcRoleArn, [CloudVariable.roleArn: "", CloudVariable.oidcProviderArn: "x"])
                == "--provider oidc-role-arn needs --role-arn or ALIBABA_CLOUD_ROLE_ARN")
        #expect(
            try resolve(.ecsRamRole, [CloudVariable.ecsMetadata: "", CloudVariable.imdsV1Disabled: "TRUE"])
                == .ecsRamRole(
                    EcsSettings(endpoint: ProviderFlags.defaultIMDSEndpoint, role: nil, imdsV1Disabled: true)))
    }

    @Test func aRelativeTokenFileIsMadeAbsolute() throws {
        let relative = Self.oidcEnvironment.merging([CloudVariable.oidcTokenFile: "token"]) { _, b in b }
        #expect(try oidc(resolve(.oidcRoleArn, relative, cwd: "/home/u"))?.tokenFile == "/home/u/token")
        // The auto chain's OIDC source too (a background daemon leaves the directory).
        #expect(try chain(resolve(.auto, relative, cwd: "/home/u"))?.oidc?.tokenFile == "/home/u/token")
    }

    @Test func eachMissingValueHasItsOwnError() {
        #expect(refusal(.uri) == "--provider uri needs --uri or ALIBABA_CLOUD_CREDENTIALS_URI")
        #expect(refusal(.uri) { $0.uri = "" } == "--uri must be an http:// or https:// URL")
        #expect(
            refusal(.uri, [CloudVariable.credentialsURI: "ftp://x"])
                == "ALIBABA_CLOUD_CREDENTIALS_URI must be an http:// or https:// URL")
        #expect(refusal(.process) == "--provider process needs --command")
        #expect(
            refusal(.env) { $0.command = "/bin/true" }
                == "--command is only for --provider process (or --source-provider process)")
        #expect(refusal(.ramRoleArn) == "--provider ram-role-arn needs --role-arn or ALIBABA_CLOUD_ROLE_ARN")
        #expect(
            refusal(.ramRoleArn, Self.oidcEnvironment) { $0.sourceProvider = .oidcRoleArn }
                == "--provider ram-role-arn with --source-provider oidc-role-arn needs --role-arn (ALIBABA_CLOUD_ROLE_ARN is the OIDC role)"
        )
        #expect(
            refusal(.ramRoleArn) {
                $0.roleArn = "acs:ram::1:role/r"
                $0.sourceProvider = .oidcRoleArn
            } == "--source-provider oidc-role-arn needs ALIBABA_CLOUD_ROLE_ARN")
        #expect(
            refusal(.ramRoleArn) {
                $0.roleArn = "acs:ram::1:role/r"
                $0.sourceProvider = .uri
            } == "--source-provider uri needs --uri or ALIBABA_CLOUD_CREDENTIALS_URI")
        #expect(refusal(.oidcRoleArn) == "--provider oidc-role-arn needs --role-arn or ALIBABA_CLOUD_ROLE_ARN")
        #expect(
            refusal(.oidcRoleArn) { $0.roleArn = "r" }
                == "--provider oidc-role-arn needs --oidc-provider-arn or ALIBABA_CLOUD_OIDC_PROVIDER_ARN")
        #expect(
            refusal(.oidcRoleArn) {
                $0.roleArn = "r"
                $0.oidcProviderArn = "p"
            } == "--provider oidc-role-arn needs --oidc-token-file or ALIBABA_CLOUD_OIDC_TOKEN_FILE")
        #expect(
            refusal(.demo) { $0.externalId = "x" }
                == "--source-provider and --external-id are only for --provider ram-role-arn")
        #expect(refusal(.demo) { $0.duration = 899 } == "--duration must be between 900 and 43200 seconds")
        #expect(refusal(.demo) { $0.demoLifetime = 1 } == "--demo-lifetime must be between 2 and 86400 seconds")
        #expect(refusal(.ecsRamRole) { $0.role = "a/b" } == "--role must be a RAM role name (no spaces or slashes)")
        #expect(
            refusal(.oidcRoleArn, Self.oidcEnvironment.merging([CloudVariable.roleSessionName: "x"]) { a, _ in a })
                == "--role-session-name must be 2 to 64 of the characters A-Z a-z 0-9 _+=,.@-")
        #expect(
            refusal(.demo) {
                $0.policy = "{}"
                $0.policyFile = "/nonexistent"
            } == "--policy and --policy-file cannot both be given")
        // Only the first problem is told, in the order the checks have always run.
        #expect(refusal(.uri) { $0.demoLifetime = 0 } == "--demo-lifetime must be between 2 and 86400 seconds")
    }

    @Test func oidcAsTheSourceOfRamRoleArnKeepsToItsVariables() throws {
        let setting = try resolve(.ramRoleArn, Self.oidcEnvironment) {
            $0.roleArn = "acs:ram::1:role/assumed"
            $0.sourceProvider = .oidcRoleArn
            $0.duration = 1800
            $0.policy = "{}"
            $0.roleSessionName = "flag-session"
        }
        let assumed = try #require(ram(setting))
        #expect(assumed.roleArn == "acs:ram::1:role/assumed")
        #expect(assumed.durationSeconds == 1800 && assumed.policy == "{}" && assumed.sessionName == "flag-session")
        let source = try #require(oidc(assumed.source))
        #expect(source.roleArn == Self.roleArn)
        #expect(source.durationSeconds == OIDCProvider.defaultDuration && source.policy == nil)
        #expect(source.sessionName == nil)
        #expect(try ram(resolve(.ramRoleArn, [CloudVariable.roleArn: Self.roleArn]))?.source == .env)
    }

    @Test func thePolicyFileIsReadOnceIntoTheSetting() throws {
        let path = NSTemporaryDirectory() + "credfs-policy-\(UUID().uuidString).json"
        try " {\"Version\":\"1\"}\n".write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let setting = try resolve(.ramRoleArn, [CloudVariable.roleArn: Self.roleArn]) { $0.policyFile = path }
        #expect(ram(setting)?.policy == "{\"Version\":\"1\"}")
    }

    @Test func theAutoChainGoesEnvOIDCMetadataURI() throws {
        let all = Self.oidcEnvironment.merging([
            CloudVariable.accessKeyId: "LTAI5tKey", CloudVariable.accessKeySecret: "secret",
            CloudVariable.credentialsURI: "http://127.0.0.1:1/",
        ]) { a, _ in a }
        #expect(try chain(resolve(.auto, all))?.order == [.env, .oidcRoleArn, .ecsRamRole, .uri])
        #expect(
            try chain(resolve(.auto, all.merging([CloudVariable.ecsMetadataDisabled: "True"]) { _, b in b }))?.order
                == [.env, .oidcRoleArn, .uri])
        // Half an AccessKey pair, two of OIDC's three variables: neither is in the chain.
        let partial = [
            CloudVariable.accessKeyId: "LTAI5tKey", CloudVariable.roleArn: Self.roleArn,
            CloudVariable.oidcProviderArn: "p",
        ]
        #expect(try chain(resolve(.auto, partial))?.order == [.ecsRamRole])
        #expect(try chain(resolve(.auto))?.order == [.ecsRamRole])

        let flagged = try #require(
            chain(
                try resolve(.auto, all) {
                    $0.role = "flag-role"
                    $0.imdsEndpoint = "http://127.0.0.1:9"
                    $0.stsEndpoint = "http://127.0.0.1:8/"
                }))
        #expect(flagged.ecs == EcsSettings(endpoint: "http://127.0.0.1:9", role: "flag-role", imdsV1Disabled: false))
        #expect(flagged.oidc?.endpoint == "http://127.0.0.1:8")
        #expect(flagged.uri == "http://127.0.0.1:1/")
    }

    @Test func theEnvProviderReadsThroughTheOnePlace() async throws {
        let none = EnvironmentProvider(
            ProviderEnvironment([CloudVariable.accessKeyId: "LTAI5tKey"]), clock: VirtualClock(Fixture.t0))
        #expect(!none.isAvailable)
        await #expect(
            throws: CredentialError(
                "ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET must both be set")
        ) {
            try await none.fetch()
        }
        let pair = EnvironmentProvider(
            ProviderEnvironment([
                CloudVariable.accessKeyId: "LTAI5tKey", CloudVariable.accessKeySecret: "secret",
                CloudVariable.securityToken: "",
            ]), clock: VirtualClock(Fixture.t0))
        let credentials = try await pair.fetch()
        #expect(credentials.accessKeyId == "LTAI5tKey" && credentials.securityToken == nil)
    }

    @Test func theProviderBuiltIsTheOneResolved() throws {
        var flags = ProviderFlags(provider: .ramRoleArn)
        flags.roleArn = Self.roleArn
        flags.sourceProvider = .demo
        let provider = try ProviderConfiguration(flags: flags, environment: ProviderEnvironment([:])).makeProvider(
            clock: SystemRefreshClock())
        let ram = try #require(provider as? RamRoleArnProvider)
        #expect(ram.roleArn == Self.roleArn)
        #expect(ram.source.provider.name == "demo")
        let auto = try ProviderConfiguration(flags: ProviderFlags(), environment: ProviderEnvironment([:]))
            .makeProvider(clock: SystemRefreshClock())
        #expect(auto.name == "auto")
    }
}
