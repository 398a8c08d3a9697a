import FoundationEssentials

// Provider configuration, resolved once: the `ALIBABA_CLOUD_*` variables are named here
// (``CloudVariable``) and read here (``ProviderEnvironment``); the flags the executable
// parsed (``ProviderFlags``) and the environment are resolved into one validated
// ``ProviderConfiguration`` (a flag wins over its variable; an empty value counts as
// unset), or one one-line error; the providers are built from that and read no variable
// themselves.

/// The variables credfs reads (and writes, in the `env` view), each named once.
public enum CloudVariable {
    public static let prefix = "ALIBABA_CLOUD_"
    public static let accessKeyId = "ALIBABA_CLOUD_ACCESS_KEY_ID"
    public static let accessKeySecret = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"
    public static let securityToken = "ALIBABA_CLOUD_SECURITY_TOKEN"
    public static let credentialsURI = "ALIBABA_CLOUD_CREDENTIALS_URI"
    public static let ecsMetadata = "ALIBABA_CLOUD_ECS_METADATA"
    public static let ecsMetadataDisabled = "ALIBABA_CLOUD_ECS_METADATA_DISABLED"
    public static let imdsV1Disabled = "ALIBABA_CLOUD_IMDSV1_DISABLED"
    public static let roleArn = "ALIBABA_CLOUD_ROLE_ARN"
    public static let oidcProviderArn = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN"
    public static let oidcTokenFile = "ALIBABA_CLOUD_OIDC_TOKEN_FILE"
    public static let roleSessionName = "ALIBABA_CLOUD_ROLE_SESSION_NAME"
    public static let stsRegion = "ALIBABA_CLOUD_STS_REGION"
    public static let vpcEndpointEnabled = "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED"
}

/// The one reader of the `ALIBABA_CLOUD_*` variables.
public struct ProviderEnvironment: Sendable {
    public let variables: [String: String]

    public init(_ variables: [String: String] = ProcessInfo.processInfo.environment) {
        self.variables = variables
    }

    /// The value of `name`; nil when unset or empty.
    public func value(_ name: String) -> String? {
        guard let value = variables[name], !value.isEmpty else { return nil }
        return value
    }

    /// True when `name` is `true` (in any case).
    public func isTrue(_ name: String) -> Bool { variables[name]?.lowercased() == "true" }

    /// Both variables of the AccessKey pair are set (the `auto` chain's test for `env`).
    public var hasAccessKey: Bool {
        value(CloudVariable.accessKeyId) != nil && value(CloudVariable.accessKeySecret) != nil
    }

    /// The `env` provider's read, done at every fetch: the AccessKey pair and an optional
    /// SecurityToken, checked as every answer is.
    public func accessKey(now: Date) throws(CredentialError) -> Credentials {
        guard hasAccessKey else {
            throw CredentialError(
                "\(CloudVariable.accessKeyId) and \(CloudVariable.accessKeySecret) must both be set")
        }
        return try AnswerParser.validate(
            accessKeyId: value(CloudVariable.accessKeyId), accessKeySecret: value(CloudVariable.accessKeySecret),
            securityToken: value(CloudVariable.securityToken), expiration: nil, tokenRequired: false, now: now)
    }

    public var credentialsURI: String? { value(CloudVariable.credentialsURI) }
    public var ecsRole: String? { value(CloudVariable.ecsMetadata) }
    public var ecsMetadataDisabled: Bool { isTrue(CloudVariable.ecsMetadataDisabled) }
    public var imdsV1Disabled: Bool { isTrue(CloudVariable.imdsV1Disabled) }
    public var roleSessionName: String? { value(CloudVariable.roleSessionName) }
    public var stsRegion: String? { value(CloudVariable.stsRegion) }
    public var vpcEndpointEnabled: Bool { isTrue(CloudVariable.vpcEndpointEnabled) }
}

/// The sources credfs can fetch from (`--provider`).
public enum ProviderKind: String, CaseIterable, Sendable {
    case auto, uri, env, demo
    case ecsRamRole = "ecs-ram-role"
    case oidcRoleArn = "oidc-role-arn"
    case ramRoleArn = "ram-role-arn"
    case process

    /// The kinds that may sign AssumeRole for `ram-role-arn`.
    public static var sources: [ProviderKind] { allCases.filter { $0 != .auto && $0 != .ramRoleArn } }
}

/// The provider flags as given on the command line (nil: not given), filled by the
/// executable's argument parser.
public struct ProviderFlags: Sendable {
    public static let defaultIMDSEndpoint = "http://100.100.100.200"
    public static let defaultDemoLifetime = 60

    public var provider: ProviderKind = .auto
    public var uri: String?
    public var demoLifetime: Int = ProviderFlags.defaultDemoLifetime
    public var imdsEndpoint: String = ProviderFlags.defaultIMDSEndpoint
    public var role: String?
    public var command: String?
    public var roleArn: String?
    public var sourceProvider: ProviderKind?
    public var externalId: String?
    public var oidcProviderArn: String?
    public var oidcTokenFile: String?
    public var roleSessionName: String?
    public var duration: Int = OIDCProvider.defaultDuration
    public var policy: String?
    public var policyFile: String?
    public var stsEndpoint: String?

    public init(provider: ProviderKind = .auto) { self.provider = provider }
}

/// The ECS metadata service and role (`ecs-ram-role`, and in the `auto` chain).
public struct EcsSettings: Sendable, Equatable {
    public var endpoint: String
    public var role: String?
    public var imdsV1Disabled: Bool
}

/// AssumeRoleWithOIDC's parameters.
public struct OIDCSettings: Sendable, Equatable {
    public var roleArn: String
    public var oidcProviderArn: String
    public var tokenFile: String
    public var sessionName: String?
    public var durationSeconds: Int
    public var policy: String?
    public var endpoint: String
}

/// AssumeRole's parameters and the source that signs it.
public struct RamRoleSettings: Sendable, Equatable {
    public var source: ProviderSetting
    public var roleArn: String
    public var sessionName: String?
    public var durationSeconds: Int
    public var externalId: String?
    public var policy: String?
    public var endpoint: String
}

/// The `auto` chain: what each step finds in the environment, in the order it is tried.
public struct AutoChain: Sendable, Equatable {
    /// `env`: the AccessKey pair is set.
    public var accessKey: Bool
    /// `oidc-role-arn`: its three variables are set.
    public var oidc: OIDCSettings?
    /// `ecs-ram-role`: nil when `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`.
    public var ecs: EcsSettings?
    /// `uri`: `ALIBABA_CLOUD_CREDENTIALS_URI`.
    public var uri: String?

    /// The sources the chain will try, first to last.
    public var order: [ProviderKind] {
        (accessKey ? [.env] : []) + (oidc != nil ? [.oidcRoleArn] : []) + (ecs != nil ? [.ecsRamRole] : [])
            + (uri != nil ? [.uri] : [])
    }
}

/// One resolved source.
public indirect enum ProviderSetting: Sendable, Equatable {
    case uri(String)
    case env
    case demo(lifetime: Int)
    case ecsRamRole(EcsSettings)
    case process(argv: [String])
    case oidcRoleArn(OIDCSettings)
    case ramRoleArn(RamRoleSettings)
    case auto(AutoChain)
}

/// A validated provider configuration, and the provider it builds.
public struct ProviderConfiguration: Sendable {
    public let setting: ProviderSetting
    /// Read again by the `env` provider at every fetch.
    public let environment: ProviderEnvironment

    /// Resolves `flags` against `environment`. Relative OIDC token file paths are made
    /// absolute against `workingDirectory` (a background daemon leaves it). Throws the
    /// first problem, as one line naming the flag and the variable.
    public init(
        flags: ProviderFlags, environment: ProviderEnvironment = ProviderEnvironment(),
        workingDirectory: String = FileManager.default.currentDirectoryPath
    ) throws(CredentialError) {
        let resolver = Resolver(flags: flags, environment: environment, workingDirectory: workingDirectory)
        let policy = try resolver.validate()
        self.setting = try resolver.setting(flags.provider, policy: nonEmpty(policy))
        self.environment = environment
    }

    /// The provider this configuration describes.
    public func makeProvider(
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        metadataHTTP: HTTPFetcher = HTTPFetcher(timeouts: .metadata, proxy: .never),
        clock: any RefreshClock
    ) -> any CredentialProvider {
        Self.provider(setting, environment: environment, http: http, metadataHTTP: metadataHTTP, clock: clock)
    }

    static func provider(
        _ setting: ProviderSetting, environment: ProviderEnvironment, http: HTTPFetcher, metadataHTTP: HTTPFetcher,
        clock: any RefreshClock
    ) -> any CredentialProvider {
        switch setting {
        case .uri(let url): return URIProvider(url: url, http: http, clock: clock)
        case .env: return EnvironmentProvider(environment, clock: clock)
        case .demo(let lifetime): return DemoProvider(lifetime: lifetime, clock: clock)
        case .ecsRamRole(let ecs):
            return EcsMetadataProvider(
                endpoint: ecs.endpoint, role: ecs.role, imdsV1Disabled: ecs.imdsV1Disabled, http: metadataHTTP,
                clock: clock)
        case .process(let argv): return ProcessProvider(argv: argv, clock: clock)
        case .oidcRoleArn(let oidc):
            return OIDCProvider(
                roleArn: oidc.roleArn, oidcProviderArn: oidc.oidcProviderArn, tokenFile: oidc.tokenFile,
                sessionName: oidc.sessionName, durationSeconds: oidc.durationSeconds, policy: oidc.policy,
                endpoint: oidc.endpoint, http: http, clock: clock)
        case .ramRoleArn(let ram):
            return RamRoleArnProvider(
                source: provider(
                    ram.source, environment: environment, http: http, metadataHTTP: metadataHTTP, clock: clock),
                roleArn: ram.roleArn, sessionName: ram.sessionName, durationSeconds: ram.durationSeconds,
                externalId: ram.externalId, policy: ram.policy, endpoint: ram.endpoint, http: http, clock: clock)
        case .auto(let chain):
            return AutoProvider(
                chain: chain, environment: environment, http: http, metadataHTTP: metadataHTTP, clock: clock)
        }
    }

    /// The `auto` chain the environment gives; `role` (`--role`) names the ECS role,
    /// `stsEndpoint` (`--sts-endpoint`) where OIDC goes.
    /// A relative OIDC token file is made absolute against `workingDirectory` (a background
    /// daemon leaves it), as for `--provider oidc-role-arn`.
    public static func autoChain(
        _ environment: ProviderEnvironment, imdsEndpoint: String = ProviderFlags.defaultIMDSEndpoint,
        role: String? = nil, stsEndpoint: String? = nil, workingDirectory: String? = nil
    ) -> AutoChain {
        let endpoint = STSEndpoint.resolve(flag: stsEndpoint, environment: environment)
        var oidc: OIDCSettings?
        if let roleArn = environment.value(CloudVariable.roleArn),
            let providerArn = environment.value(CloudVariable.oidcProviderArn),
            let given = environment.value(CloudVariable.oidcTokenFile)
        {
            let tokenFile =
                given.hasPrefix("/")
                ? given : (workingDirectory ?? FileManager.default.currentDirectoryPath) + "/" + given
            oidc = OIDCSettings(
                roleArn: roleArn, oidcProviderArn: providerArn, tokenFile: tokenFile,
                sessionName: environment.roleSessionName, durationSeconds: OIDCProvider.defaultDuration,
                policy: nil, endpoint: endpoint)
        }
        let ecs =
            environment.ecsMetadataDisabled
            ? nil
            : EcsSettings(
                endpoint: imdsEndpoint, role: nonEmpty(role) ?? environment.ecsRole,
                imdsV1Disabled: environment.imdsV1Disabled)
        return AutoChain(accessKey: environment.hasAccessKey, oidc: oidc, ecs: ecs, uri: environment.credentialsURI)
    }

    /// `text` when it is an http:// or https:// URL with a host; else the error names `what`.
    public static func checkedURI(_ text: String, _ what: String) throws(CredentialError) -> String {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else { throw CredentialError("\(what) must be an http:// or https:// URL") }
        return text
    }

    /// The policy file's text (white space around it dropped); nil without one.
    public static func policy(fromFile path: String?) throws(CredentialError) -> String? {
        guard let path else { return nil }
        let text = SmallFile.trimmed(try SmallFile.read(path, what: "policy file"))
        guard !text.isEmpty else { throw CredentialError("the policy file \(path) is empty") }
        return text
    }
}

func nonEmpty(_ text: String?) -> String? {
    guard let text, !text.isEmpty else { return nil }
    return text
}

/// The rules: which flag or variable each value comes from, and what is refused.
struct Resolver {
    let flags: ProviderFlags
    let environment: ProviderEnvironment
    let workingDirectory: String
    let uriVariable = CloudVariable.credentialsURI
    let roleVariable = CloudVariable.roleArn

    /// `--uri` as given (an empty one is refused by validation), else the variable.
    var uri: String? { flags.uri ?? environment.credentialsURI }
    var sourceProvider: ProviderKind { flags.sourceProvider ?? .env }
    /// The kind that fetches: the provider, or the source behind ram-role-arn.
    var fetching: ProviderKind { flags.provider == .ramRoleArn ? sourceProvider : flags.provider }
    var roleArn: String? { nonEmpty(flags.roleArn) ?? environment.value(roleVariable) }
    /// The role OIDC assumes: `--role-arn` belongs to ram-role-arn when OIDC is its source.
    var oidcRoleArn: String? { flags.provider == .ramRoleArn ? environment.value(roleVariable) : roleArn }
    /// The role ram-role-arn assumes; with an OIDC source only `--role-arn` names it.
    var assumedRoleArn: String? { sourceProvider == .oidcRoleArn ? nonEmpty(flags.roleArn) : roleArn }
    var oidcProviderArn: String? {
        nonEmpty(flags.oidcProviderArn) ?? environment.value(CloudVariable.oidcProviderArn)
    }
    /// Absolute: a background daemon leaves the caller's working directory.
    var oidcTokenFile: String? {
        (nonEmpty(flags.oidcTokenFile) ?? environment.value(CloudVariable.oidcTokenFile)).map {
            $0.hasPrefix("/") ? $0 : workingDirectory + "/" + $0
        }
    }
    var stsEndpoint: String { STSEndpoint.resolve(flag: flags.stsEndpoint, environment: environment) }

    /// Throws the first problem; returns the session policy (`--policy`, or the text of
    /// `--policy-file`), read once.
    func validate() throws(CredentialError) -> String? {
        let provider = flags.provider
        if let uri = flags.uri { _ = try ProviderConfiguration.checkedURI(uri, "--uri") }
        guard (2...86_400).contains(flags.demoLifetime) else {
            throw CredentialError("--demo-lifetime must be between 2 and 86400 seconds")
        }
        if provider == .uri {
            guard let uri else { throw CredentialError("--provider uri needs --uri or \(uriVariable)") }
            if flags.uri == nil { _ = try ProviderConfiguration.checkedURI(uri, uriVariable) }
        }
        _ = try ProviderConfiguration.checkedURI(flags.imdsEndpoint, "--imds-endpoint")
        if let role = flags.role, role.isEmpty || role.contains("/") || role.contains(where: \.isWhitespace) {
            throw CredentialError("--role must be a RAM role name (no spaces or slashes)")
        }
        if let endpoint = flags.stsEndpoint {
            _ = try ProviderConfiguration.checkedURI(
                endpoint.contains("://") ? endpoint : "https://" + endpoint, "--sts-endpoint")
        }
        if flags.policyFile != nil, flags.policy != nil {
            throw CredentialError("--policy and --policy-file cannot both be given")
        }
        var policy = flags.policy
        if policy == nil { policy = try ProviderConfiguration.policy(fromFile: flags.policyFile) }
        guard (OIDCProvider.minimumDuration...43200).contains(flags.duration) else {
            throw CredentialError("--duration must be between 900 and 43200 seconds")
        }
        let sessionName =
            flags.roleSessionName
            ?? ([.oidcRoleArn, .ramRoleArn].contains(provider) ? environment.roleSessionName : nil)
        if let name = sessionName, !name.isEmpty {
            guard name.count >= 2, name.count <= 64,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_+=,.@-".contains($0)) })
            else {
                throw CredentialError("--role-session-name must be 2 to 64 of the characters A-Z a-z 0-9 _+=,.@-")
            }
        }
        if flags.sourceProvider != nil || flags.externalId != nil, provider != .ramRoleArn {
            throw CredentialError("--source-provider and --external-id are only for --provider ram-role-arn")
        }
        if let source = flags.sourceProvider, !ProviderKind.sources.contains(source) {
            throw CredentialError(
                "--source-provider must be one of \(ProviderKind.sources.map(\.rawValue).joined(separator: ", "))")
        }
        if flags.command != nil, fetching != .process {
            throw CredentialError("--command is only for --provider process (or --source-provider process)")
        }
        if fetching == .process, ProcessProvider.split(flags.command ?? "").isEmpty {
            throw CredentialError("--provider process needs --command")
        }
        if fetching == .uri, uri == nil {
            throw CredentialError("--source-provider uri needs --uri or \(uriVariable)")
        }
        if provider == .ramRoleArn, assumedRoleArn == nil {
            throw CredentialError(
                sourceProvider == .oidcRoleArn
                    ? "--provider ram-role-arn with --source-provider oidc-role-arn needs --role-arn (\(roleVariable) is the OIDC role)"
                    : "--provider ram-role-arn needs --role-arn or \(roleVariable)")
        }
        if fetching == .oidcRoleArn {
            guard oidcRoleArn != nil else {
                throw CredentialError(
                    provider == .ramRoleArn
                        ? "--source-provider oidc-role-arn needs \(roleVariable)"
                        : "--provider oidc-role-arn needs --role-arn or \(roleVariable)")
            }
            guard oidcProviderArn != nil else {
                throw CredentialError(
                    "--provider oidc-role-arn needs --oidc-provider-arn or \(CloudVariable.oidcProviderArn)")
            }
            guard oidcTokenFile != nil else {
                throw CredentialError(
                    "--provider oidc-role-arn needs --oidc-token-file or \(CloudVariable.oidcTokenFile)")
            }
        }
        return policy
    }

    /// The setting for `kind`, once ``validate()`` passed (a value it guarantees is still
    /// checked, never unwrapped by force).
    func setting(_ kind: ProviderKind, policy: String?) throws(CredentialError) -> ProviderSetting {
        // As the source of ram-role-arn, OIDC keeps to its variables: the STS flags
        // (--role-arn, --role-session-name, --duration, --policy) are the AssumeRole's.
        let forRamRole = flags.provider == .ramRoleArn
        switch kind {
        case .uri:
            guard let uri else { throw CredentialError("--provider uri needs --uri or \(uriVariable)") }
            return .uri(uri)
        case .env: return .env
        case .demo: return .demo(lifetime: flags.demoLifetime)
        case .ecsRamRole:
            return .ecsRamRole(
                EcsSettings(
                    endpoint: flags.imdsEndpoint, role: nonEmpty(flags.role) ?? environment.ecsRole,
                    imdsV1Disabled: environment.imdsV1Disabled))
        case .process: return .process(argv: ProcessProvider.split(flags.command ?? ""))
        case .oidcRoleArn:
            guard let roleArn = oidcRoleArn, let providerArn = oidcProviderArn, let tokenFile = oidcTokenFile else {
                throw CredentialError("--provider oidc-role-arn needs its role, provider ARN and token file")
            }
            return .oidcRoleArn(
                OIDCSettings(
                    roleArn: roleArn, oidcProviderArn: providerArn, tokenFile: tokenFile,
                    sessionName: nonEmpty((forRamRole ? nil : flags.roleSessionName) ?? environment.roleSessionName),
                    durationSeconds: forRamRole ? OIDCProvider.defaultDuration : flags.duration,
                    policy: forRamRole ? nil : policy, endpoint: stsEndpoint))
        case .ramRoleArn:
            guard let roleArn = assumedRoleArn else {
                throw CredentialError("--provider ram-role-arn needs --role-arn or \(roleVariable)")
            }
            return .ramRoleArn(
                RamRoleSettings(
                    source: try setting(sourceProvider, policy: policy), roleArn: roleArn,
                    sessionName: nonEmpty(flags.roleSessionName ?? environment.roleSessionName),
                    durationSeconds: flags.duration, externalId: nonEmpty(flags.externalId), policy: policy,
                    endpoint: stsEndpoint))
        case .auto:
            return .auto(
                ProviderConfiguration.autoChain(
                    environment, imdsEndpoint: flags.imdsEndpoint, role: flags.role, stsEndpoint: flags.stsEndpoint,
                    workingDirectory: workingDirectory))
        }
    }
}
