import ArgumentParser
import CredentialCore
import FoundationEssentials
import Glibc
import Logging

/// The sources this build can fetch from.
enum ProviderKind: String, ExpressibleByArgument, CaseIterable {
    case auto, uri, env, demo
    case ecsRamRole = "ecs-ram-role"
    case oidcRoleArn = "oidc-role-arn"
    case ramRoleArn = "ram-role-arn"
    case process

    /// The kinds that may sign AssumeRole for `ram-role-arn`.
    static var sources: [ProviderKind] { allCases.filter { $0 != .auto && $0 != .ramRoleArn } }
}

/// Where credentials come from: shared by `mount` and `get`.
struct ProviderOptions: ParsableArguments {
    @Option(
        help: "Credential source: \(ProviderKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var provider: ProviderKind = .auto

    @Option(help: "Credentials URI for --provider uri (default: $ALIBABA_CLOUD_CREDENTIALS_URI).")
    var uri: String?

    @Option(help: "Seconds each demo credential set lives (--provider demo).")
    var demoLifetime: Int = 60

    @Option(help: "ECS metadata service for ecs-ram-role and auto.")
    var imdsEndpoint: String = "http://100.100.100.200"

    @Option(
        help:
            "ECS RAM role name (default: $ALIBABA_CLOUD_ECS_METADATA, else asked of the metadata service)."
    )
    var role: String?

    @Option(
        help: ArgumentHelp(
            "Command for --provider process: program and arguments separated by spaces, run without a shell.",
            discussion:
                "No quoting: an argument cannot contain a space. It must print the aliyun CLI External JSON."
        ))
    var command: String?

    @Option(
        help:
            "RAM role ARN for oidc-role-arn and ram-role-arn (default: $ALIBABA_CLOUD_ROLE_ARN, except for ram-role-arn signed by oidc-role-arn)."
    )
    var roleArn: String?

    @Option(
        help: ArgumentHelp(
            "Provider whose credentials sign AssumeRole for ram-role-arn: \(ProviderKind.sources.map(\.rawValue).joined(separator: ", ")) (default env).",
            discussion: "It is configured by its own flags, and refreshed on its own schedule."))
    var sourceProvider: ProviderKind?

    @Option(help: "ExternalId for ram-role-arn's AssumeRole.")
    var externalId: String?

    @Option(help: "OIDC provider ARN for oidc-role-arn (default: $ALIBABA_CLOUD_OIDC_PROVIDER_ARN).")
    var oidcProviderArn: String?

    @Option(
        help:
            "OIDC token file for oidc-role-arn, read at every refresh (default: $ALIBABA_CLOUD_OIDC_TOKEN_FILE)."
    )
    var oidcTokenFile: String?

    @Option(
        help:
            "RoleSessionName for STS (default: $ALIBABA_CLOUD_ROLE_SESSION_NAME, else credfs-<unix time>)."
    )
    var roleSessionName: String?

    @Option(help: "DurationSeconds asked of STS: 900 to 43200.")
    var duration: Int = OIDCProvider.defaultDuration

    @Option(help: "A session policy (JSON) for STS.")
    var policy: String?

    @Option(
        help: ArgumentHelp(
            "A file holding the session policy (JSON) for STS: a regular file of at most 64 KiB.",
            discussion: "For fstab, where a value cannot hold a comma: -o policy_file=PATH."))
    var policyFile: String?

    @Option(
        help:
            "STS endpoint, host or URL (default: sts[-vpc].$ALIBABA_CLOUD_STS_REGION.aliyuncs.com, else sts.aliyuncs.com)."
    )
    var stsEndpoint: String?

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    func validate() throws {
        if let uri { _ = try Self.checkedURI(uri, flag: "--uri") }
        guard (2...86_400).contains(demoLifetime) else {
            throw ValidationError("--demo-lifetime must be between 2 and 86400 seconds")
        }
        if provider == .uri, resolvedURI == nil {
            throw ValidationError("--provider uri needs --uri or ALIBABA_CLOUD_CREDENTIALS_URI")
        }
        if provider == .uri,
            let env = ProcessInfo.processInfo.environment["ALIBABA_CLOUD_CREDENTIALS_URI"], uri == nil
        {
            _ = try Self.checkedURI(env, flag: "ALIBABA_CLOUD_CREDENTIALS_URI")
        }
        _ = try Self.checkedURI(imdsEndpoint, flag: "--imds-endpoint")
        if let role, role.isEmpty || role.contains("/") || role.contains(where: \.isWhitespace) {
            throw ValidationError("--role must be a RAM role name (no spaces or slashes)")
        }
        if let stsEndpoint {
            let url = stsEndpoint.contains("://") ? stsEndpoint : "https://" + stsEndpoint
            _ = try Self.checkedURI(url, flag: "--sts-endpoint")
        }
        try validatePolicyFile()
        guard (OIDCProvider.minimumDuration...43200).contains(duration) else {
            throw ValidationError("--duration must be between 900 and 43200 seconds")
        }
        let sessionName =
            roleSessionName
            ?? ([.oidcRoleArn, .ramRoleArn].contains(provider) ? environment["ALIBABA_CLOUD_ROLE_SESSION_NAME"] : nil)
        if let name = sessionName, !name.isEmpty {
            guard name.count >= 2, name.count <= 64,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_+=,.@-".contains($0)) })
            else {
                throw ValidationError(
                    "--role-session-name must be 2 to 64 of the characters A-Z a-z 0-9 _+=,.@-")
            }
        }
        if sourceProvider != nil || externalId != nil, provider != .ramRoleArn {
            throw ValidationError("--source-provider and --external-id are only for --provider ram-role-arn")
        }
        if let sourceProvider, !ProviderKind.sources.contains(sourceProvider) {
            throw ValidationError(
                "--source-provider must be one of \(ProviderKind.sources.map(\.rawValue).joined(separator: ", "))")
        }
        /// The kind that fetches: the provider, or the source behind ram-role-arn.
        let fetching = provider == .ramRoleArn ? resolvedSourceProvider : provider
        if command != nil, fetching != .process {
            throw ValidationError("--command is only for --provider process (or --source-provider process)")
        }
        if fetching == .process, ProcessProvider.split(command ?? "").isEmpty {
            throw ValidationError("--provider process needs --command")
        }
        if fetching == .uri, resolvedURI == nil {
            throw ValidationError("--source-provider uri needs --uri or ALIBABA_CLOUD_CREDENTIALS_URI")
        }
        if provider == .ramRoleArn {
            guard resolvedAssumedRoleArn != nil else {
                throw ValidationError(
                    resolvedSourceProvider == .oidcRoleArn
                        ? "--provider ram-role-arn with --source-provider oidc-role-arn needs --role-arn (ALIBABA_CLOUD_ROLE_ARN is the OIDC role)"
                        : "--provider ram-role-arn needs --role-arn or ALIBABA_CLOUD_ROLE_ARN")
            }
        }
        if fetching == .oidcRoleArn {
            guard resolvedOIDCRoleArn != nil else {
                throw ValidationError(
                    provider == .ramRoleArn
                        ? "--source-provider oidc-role-arn needs ALIBABA_CLOUD_ROLE_ARN"
                        : "--provider oidc-role-arn needs --role-arn or ALIBABA_CLOUD_ROLE_ARN")
            }
            guard resolvedOIDCProviderArn != nil else {
                throw ValidationError(
                    "--provider oidc-role-arn needs --oidc-provider-arn or ALIBABA_CLOUD_OIDC_PROVIDER_ARN")
            }
            guard resolvedOIDCTokenFile != nil else {
                throw ValidationError(
                    "--provider oidc-role-arn needs --oidc-token-file or ALIBABA_CLOUD_OIDC_TOKEN_FILE")
            }
        }
    }

    var resolvedURI: String? {
        if let uri { return uri }
        let env = ProcessInfo.processInfo.environment["ALIBABA_CLOUD_CREDENTIALS_URI"] ?? ""
        return env.isEmpty ? nil : env
    }

    /// A flag, else the variable, else nil (empty counts as unset).
    func resolved(_ flag: String?, _ variable: String) -> String? {
        if let flag, !flag.isEmpty { return flag }
        let value = environment[variable] ?? ""
        return value.isEmpty ? nil : value
    }

    var resolvedRoleArn: String? { resolved(roleArn, "ALIBABA_CLOUD_ROLE_ARN") }
    var resolvedSourceProvider: ProviderKind { sourceProvider ?? .env }
    /// The role OIDC assumes: `--role-arn` belongs to ram-role-arn when OIDC is its source.
    var resolvedOIDCRoleArn: String? {
        provider == .ramRoleArn ? resolved(nil, "ALIBABA_CLOUD_ROLE_ARN") : resolvedRoleArn
    }
    /// The role ram-role-arn assumes; with an OIDC source only `--role-arn` names it.
    var resolvedAssumedRoleArn: String? {
        resolvedSourceProvider == .oidcRoleArn ? resolved(roleArn, "") : resolvedRoleArn
    }
    var resolvedOIDCProviderArn: String? {
        resolved(oidcProviderArn, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN")
    }
    /// Absolute: a background daemon leaves the caller's working directory.
    var resolvedOIDCTokenFile: String? {
        resolved(oidcTokenFile, "ALIBABA_CLOUD_OIDC_TOKEN_FILE").map {
            $0.hasPrefix("/") ? $0 : FileManager.default.currentDirectoryPath + "/" + $0
        }
    }

    static func checkedURI(_ text: String, flag: String) throws -> String {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else { throw ValidationError("\(flag) must be an http:// or https:// URL") }
        return text
    }

    func makeProvider() -> any CredentialProvider { makeProvider(provider) }

    func makeProvider(_ kind: ProviderKind) -> any CredentialProvider {
        let policy: String?
        switch policyFromFile {
        case .failure(let error): return Unavailable(name: kind.rawValue, error: error)
        case .success(let text): policy = self.policy ?? text
        }
        let environment = self.environment
        let endpoint = STSEndpoint.resolve(flag: stsEndpoint, environment: environment)
        // As the source of ram-role-arn, OIDC keeps to its variables: the STS flags
        // (--role-arn, --role-session-name, --duration, --policy) are the AssumeRole's.
        let forRamRole = provider == .ramRoleArn
        switch kind {
        case .uri: return URIProvider(url: resolvedURI ?? "")
        case .env: return EnvironmentProvider()
        case .demo: return DemoProvider(lifetime: demoLifetime)
        case .ecsRamRole:
            return EcsMetadataProvider(
                endpoint: imdsEndpoint, role: role ?? EcsMetadataProvider.environmentRole(environment),
                imdsV1Disabled: EcsMetadataProvider.v1Disabled(environment))
        case .process:
            return ProcessProvider(argv: ProcessProvider.split(command ?? ""))
        case .oidcRoleArn:
            return OIDCProvider(
                roleArn: resolvedOIDCRoleArn ?? "", oidcProviderArn: resolvedOIDCProviderArn ?? "",
                tokenFile: resolvedOIDCTokenFile ?? "",
                sessionName: (forRamRole ? nil : roleSessionName) ?? environment["ALIBABA_CLOUD_ROLE_SESSION_NAME"],
                durationSeconds: forRamRole ? OIDCProvider.defaultDuration : duration,
                policy: forRamRole ? nil : policy, endpoint: endpoint)
        case .ramRoleArn:
            return RamRoleArnProvider(
                source: makeProvider(resolvedSourceProvider), roleArn: resolvedAssumedRoleArn ?? "",
                sessionName: roleSessionName ?? environment["ALIBABA_CLOUD_ROLE_SESSION_NAME"],
                durationSeconds: duration, externalId: externalId, policy: policy, endpoint: endpoint)
        case .auto:
            return AutoProvider(
                environment: environment, imdsEndpoint: imdsEndpoint, role: role, stsEndpoint: stsEndpoint)
        }
    }
}

/// `--policy-file` (fstab `policy_file=`): a policy JSON holds commas, which an fstab
/// option value cannot.
extension ProviderOptions {
    /// The policy file's text (white space around it dropped), nil without the flag. Read
    /// once by validate() (a bad file: exit 64) and once by makeProvider.
    var policyFromFile: Result<String?, CredentialError> {
        guard let policyFile else { return .success(nil) }
        do throws(CredentialError) {
            let text = SmallFile.trimmed(try SmallFile.read(policyFile, what: "policy file"))
            guard !text.isEmpty else { throw CredentialError("the policy file \(policyFile) is empty") }
            return .success(text)
        } catch {
            return .failure(error)
        }
    }

    func validatePolicyFile() throws {
        guard policyFile != nil else { return }
        guard policy == nil else { throw ValidationError("--policy and --policy-file cannot both be given") }
        if case .failure(let error) = policyFromFile { throw ValidationError(error.message) }
    }

    /// What makeProvider gives when the policy file vanished after validation: every
    /// fetch fails (fails closed: never a role session without the policy it was given).
    struct Unavailable: CredentialProvider {
        let name: String
        let error: CredentialError
        func fetch() async throws -> Credentials { throw error }
    }
}

/// A duration flag: `90`, `90s`, `15m` or `1h`; shown in `--help` as written.
struct Seconds: ExpressibleByArgument {
    var value: TimeInterval
    var text: String

    init?(argument: String) {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        var number = argument
        var scale = 1.0
        if let last = number.last, let unit = units[last] {
            scale = unit
            number.removeLast()
        }
        guard let value = Double(number), value.isFinite, value >= 0, (value * scale).isFinite else { return nil }
        self.value = value * scale
        self.text = argument
    }

    init(_ value: TimeInterval, written text: String) {
        self.value = value
        self.text = text
    }

    var defaultValueDescription: String { text }
}

/// Octal permission bits, `0400` or `440`; shown in `--help` as written.
struct Octal: ExpressibleByArgument {
    var value: mode_t
    var text: String
    init?(argument: String) {
        guard !argument.isEmpty, argument.utf8.count <= 6, let bits = UInt32(argument, radix: 8), bits <= 0o777
        else { return nil }
        value = mode_t(bits)
        text = argument
    }

    init(_ value: mode_t, written text: String) {
        self.value = value
        self.text = text
    }

    var defaultValueDescription: String { text }
}

/// A user or group id: 0 to 4294967294 (4294967295 means "no id" to the kernel).
struct OwnerID: ExpressibleByArgument {
    var value: UInt32
    init?(argument: String) {
        guard let id = UInt32(argument), id != UInt32.max else { return nil }
        value = id
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
