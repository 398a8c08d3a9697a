import ArgumentParser
import CredentialCore
import Foundation
import Logging

/// The sources this build can fetch from.
enum ProviderKind: String, ExpressibleByArgument, CaseIterable {
    case auto, uri, env, demo
    case ecsRamRole = "ecs-ram-role"
    case oidcRoleArn = "oidc-role-arn"
    case process
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

    @Option(help: "RAM role ARN for oidc-role-arn (default: $ALIBABA_CLOUD_ROLE_ARN).")
    var roleArn: String?

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
        help:
            "STS endpoint, host or URL (default: sts[-vpc].$ALIBABA_CLOUD_STS_REGION.aliyuncs.com, else sts.aliyuncs.com)."
    )
    var stsEndpoint: String?

    var environment: [String: String] { ProcessInfo.processInfo.environment }

    func validate() throws {
        if let uri { _ = try Self.checkedURI(uri, flag: "--uri") }
        guard demoLifetime >= 2 else {
            throw ValidationError("--demo-lifetime must be at least 2 seconds")
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
        guard (OIDCProvider.minimumDuration...43200).contains(duration) else {
            throw ValidationError("--duration must be between 900 and 43200 seconds")
        }
        let sessionName =
            roleSessionName ?? (provider == .oidcRoleArn ? environment["ALIBABA_CLOUD_ROLE_SESSION_NAME"] : nil)
        if let name = sessionName, !name.isEmpty {
            guard name.count >= 2, name.count <= 64,
                name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "_+=,.@-".contains($0)) })
            else {
                throw ValidationError(
                    "--role-session-name must be 2 to 64 of the characters A-Z a-z 0-9 _+=,.@-")
            }
        }
        if command != nil, provider != .process {
            throw ValidationError("--command is only for --provider process")
        }
        if provider == .process, ProcessProvider.split(command ?? "").isEmpty {
            throw ValidationError("--provider process needs --command")
        }
        if provider == .oidcRoleArn {
            guard resolvedRoleArn != nil else {
                throw ValidationError("--provider oidc-role-arn needs --role-arn or ALIBABA_CLOUD_ROLE_ARN")
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
    var resolvedOIDCProviderArn: String? {
        resolved(oidcProviderArn, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN")
    }
    var resolvedOIDCTokenFile: String? { resolved(oidcTokenFile, "ALIBABA_CLOUD_OIDC_TOKEN_FILE") }

    static func checkedURI(_ text: String, flag: String) throws -> String {
        guard let url = URLComponents(string: text), let scheme = url.scheme?.lowercased(),
            scheme == "http" || scheme == "https", let host = url.host, !host.isEmpty
        else { throw ValidationError("\(flag) must be an http:// or https:// URL") }
        return text
    }

    func makeProvider() -> any CredentialProvider {
        let environment = self.environment
        switch provider {
        case .uri: return URIProvider(url: resolvedURI!)
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
                roleArn: resolvedRoleArn!, oidcProviderArn: resolvedOIDCProviderArn!,
                tokenFile: resolvedOIDCTokenFile!,
                sessionName: roleSessionName ?? environment["ALIBABA_CLOUD_ROLE_SESSION_NAME"],
                durationSeconds: duration, policy: policy,
                endpoint: STSEndpoint.resolve(flag: stsEndpoint, environment: environment))
        case .auto:
            return AutoProvider(
                environment: environment, imdsEndpoint: imdsEndpoint, role: role, stsEndpoint: stsEndpoint)
        }
    }
}

/// A duration flag: `90`, `90s`, `15m` or `1h`.
struct Seconds: ExpressibleByArgument {
    var value: TimeInterval

    init?(argument: String) {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600]
        var text = argument
        var scale = 1.0
        if let last = text.last, let unit = units[last] {
            scale = unit
            text.removeLast()
        }
        guard let number = Double(text), number.isFinite, number >= 0 else { return nil }
        value = number * scale
    }
}

/// Octal permission bits, `0400` or `440`.
struct Octal: ExpressibleByArgument {
    var value: mode_t
    init?(argument: String) {
        guard let bits = UInt32(argument, radix: 8), bits <= 0o777 else { return nil }
        value = mode_t(bits)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
