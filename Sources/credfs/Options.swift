import ArgumentParser
import CredentialCore
import FoundationEssentials
import Glibc
import Logging

extension ProviderKind: ExpressibleByArgument {}

/// Where credentials come from: shared by `mount` and `get`.
struct ProviderOptions: ParsableArguments {
    /// The flags whose values can hold a secret (a URI's query token, an ExternalId, a
    /// session policy): scrubbed from argv at start (`SecretArguments`), and never put in the
    /// argv of a process credfs starts.
    static let secretFlags = ["uri", "external-id", "policy"]

    @Option(
        help: "Credential source: \(ProviderKind.allCases.map(\.rawValue).joined(separator: ", ")).")
    var provider: ProviderKind = .auto

    @Option(help: "Credentials URI for --provider uri (default: $\(CloudVariable.credentialsURI)).")
    var uri: String?

    @Option(help: "Seconds each demo credential set lives, 2 to 86400 (--provider demo).")
    var demoLifetime: Int = ProviderFlags.defaultDemoLifetime

    @Option(help: "ECS metadata service for ecs-ram-role and auto.")
    var imdsEndpoint: String = ProviderFlags.defaultIMDSEndpoint

    @Option(
        help:
            "ECS RAM role name (default: $\(CloudVariable.ecsMetadata), else asked of the metadata service)."
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
            "RAM role ARN for oidc-role-arn and ram-role-arn (default: $\(CloudVariable.roleArn), except for ram-role-arn signed by oidc-role-arn)."
    )
    var roleArn: String?

    @Option(
        help: ArgumentHelp(
            "Provider whose credentials sign AssumeRole for --provider ram-role-arn (default env).",
            discussion: "It is configured by its own flags, and refreshed on its own schedule."))
    var sourceProvider: SourceKind?

    @Option(help: "ExternalId for ram-role-arn's AssumeRole.")
    var externalId: String?

    @Option(help: "OIDC provider ARN for oidc-role-arn (default: $\(CloudVariable.oidcProviderArn)).")
    var oidcProviderArn: String?

    @Option(
        help:
            "OIDC token file for oidc-role-arn, read at every refresh (default: $\(CloudVariable.oidcTokenFile))."
    )
    var oidcTokenFile: String?

    @Option(
        help:
            "RoleSessionName for STS (default: $\(CloudVariable.roleSessionName), else credfs-<unix time>)."
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
            "STS endpoint, host or URL (default: sts[-vpc].$\(CloudVariable.stsRegion).aliyuncs.com, else sts.aliyuncs.com)."
    )
    var stsEndpoint: String?

    /// The flags as given, for the core to resolve (``ProviderConfiguration``).
    var flags: ProviderFlags {
        var flags = ProviderFlags(provider: provider)
        flags.uri = uri
        flags.demoLifetime = demoLifetime
        flags.imdsEndpoint = imdsEndpoint
        flags.role = role
        flags.command = command
        flags.roleArn = roleArn
        flags.sourceProvider = sourceProvider?.kind
        flags.externalId = externalId
        flags.oidcProviderArn = oidcProviderArn
        flags.oidcTokenFile = oidcTokenFile
        flags.roleSessionName = roleSessionName
        flags.duration = duration
        flags.policy = policy
        flags.policyFile = policyFile
        flags.stsEndpoint = stsEndpoint
        return flags
    }

    /// Flags and environment resolved by the core: a problem exits 64 with its one line.
    func validate() throws {
        var checked = flags
        // A successor taking a live mount over (docs/hitless.md) reads the policy file again
        // when it builds its provider: one it can no longer read fails every refresh there
        // (status says why) while the carried credentials are served. Exit 64 here would
        // leave the mount with no server at all.
        if Self.takingOver { checked.policyFile = nil }
        do throws(CredentialError) {
            _ = try ProviderConfiguration(flags: checked)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// Started with a live connection to take over (the supervisor's or systemd's fd store).
    static var takingOver: Bool {
        if let launch = ServerLaunch.current { return launch.stored.contains { $0.name == StoreProtocol.fuse } }
        let names = getenv(StoreProtocol.Systemd.listenNames).map { String(cString: $0) } ?? ""
        return names.split(separator: ":").contains { $0 == StoreProtocol.fuse }
    }

    /// The provider, resolved again now (validate() ran at parsing; relative paths are
    /// resolved against the working directory of this moment). Fails closed: should the
    /// policy file have gone since validation, every fetch fails.
    func makeProvider(clock: any RefreshClock) -> any CredentialProvider {
        do throws(CredentialError) {
            return try ProviderConfiguration(flags: flags).makeProvider(clock: clock)
        } catch {
            return Unavailable(name: provider.rawValue, error: error)
        }
    }

    /// The policy file's text (white space around it dropped), nil without the flag.
    var policyFromFile: Result<String?, CredentialError> {
        Result { () throws(CredentialError) in try ProviderConfiguration.policy(fromFile: policyFile) }
    }

    /// What makeProvider gives when the configuration no longer resolves: every fetch
    /// fails (never a role session without the policy it was given).
    struct Unavailable: CredentialProvider {
        let name: String
        let error: CredentialError
        func fetch() async throws -> Credentials { throw error }
    }
}

/// `--source-provider`: the kinds that can sign AssumeRole (not `auto`, not `ram-role-arn`),
/// so `--help` and a refusal list only those.
struct SourceKind: ExpressibleByArgument {
    var kind: ProviderKind
    init?(argument: String) {
        guard let kind = ProviderKind(rawValue: argument), ProviderKind.sources.contains(kind) else { return nil }
        self.kind = kind
    }
    static var allValueStrings: [String] { ProviderKind.sources.map(\.rawValue) }
}

/// A duration flag: `90`, `90s`, `15m`, `1h` or `7d`; shown in `--help` as written.
struct Seconds: ExpressibleByArgument {
    var value: TimeInterval
    var text: String

    init?(argument: String) {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
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
