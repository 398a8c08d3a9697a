import FoundationEssentials
import Logging
import Synchronization

/// `uri`: GET a credentials URI (docs/contract.md, "Providers"), 5 s connect / 10 s read.
public struct URIProvider: CredentialProvider {
    public let name = "uri"
    let url: String
    let http: HTTPFetcher
    let clock: any RefreshClock

    public init(
        url: String, http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        clock: any RefreshClock
    ) {
        self.url = url
        self.http = http
        self.clock = clock
    }

    public func fetch() async throws -> Credentials {
        let response = try await http.send(url: url)
        return try AnswerParser.parseFlat(status: response.status, body: response.body, now: clock.now())
    }
}

/// `env`: the `ALIBABA_CLOUD_ACCESS_KEY_ID` family of variables, read once per fetch
/// (through ``ProviderEnvironment/accessKey(now:)``).
public struct EnvironmentProvider: CredentialProvider {
    public let name = "env"
    let environment: ProviderEnvironment
    let clock: any RefreshClock

    public init(
        _ environment: ProviderEnvironment = ProviderEnvironment(), clock: any RefreshClock
    ) {
        self.environment = environment
        self.clock = clock
    }

    public init(environment: [String: String], clock: any RefreshClock) {
        self.init(ProviderEnvironment(environment), clock: clock)
    }

    /// True when the two required variables are set (the `auto` chain's test).
    public var isAvailable: Bool { environment.hasAccessKey }

    public func fetch() async throws -> Credentials {
        try environment.accessKey(now: clock.now())
    }
}

/// `demo`: clearly fake STS-shaped credentials (`STS.DEMO…`), each set valid for
/// `lifetime` seconds from the moment it is issued; the refresher replaces them before
/// they expire, as it would real ones.
public struct DemoProvider: CredentialProvider {
    public let name = "demo"
    let lifetime: Int
    let clock: any RefreshClock

    public init(lifetime: Int, clock: any RefreshClock) {
        self.lifetime = lifetime
        self.clock = clock
    }

    public func fetch() async throws -> Credentials {
        let issued = Timestamp.wholeSeconds(clock.now())
        func random(_ count: Int) -> String {
            let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
            return String((0..<count).map { _ in alphabet[Int.random(in: 0..<alphabet.count)] })
        }
        return Credentials(
            accessKeyId: "STS.DEMO" + random(16),
            accessKeySecret: "DEMO-SECRET-not-a-real-key-" + random(12),
            securityToken: "DEMO-TOKEN-not-a-real-token-" + random(40),
            expiration: issued.addingTimeInterval(TimeInterval(lifetime)))
    }
}

/// `auto`: the SDKs' default-chain order (docs/contract.md, "Providers"): environment variables, OIDC
/// (when its three variables are set), the ECS metadata service (unless
/// `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`), then the credentials URI (when set).
///
/// `env` and OIDC are chosen by their variables alone. The metadata service is probed by
/// a real fetch that gives up as soon as the token request gets no HTTP answer at all, so
/// off ECS the probe costs one connect timeout (1 s; a service that accepts and never
/// answers, 1 s more); a failed probe moves on to the URI. The first source that delivers
/// is kept for the life of the provider, as the SDKs keep theirs, and `name` becomes
/// `auto:<source>` so the log and `status` say which it is. Until one delivers, each fetch
/// walks the chain again, and the error names what was tried.
public final class AutoProvider: CredentialProvider {
    let environment: ProviderEnvironment
    /// `env` comes first when its pair is set.
    let accessKey: Bool
    let ecs: EcsMetadataProvider?
    let oidc: OIDCProvider?
    let uri: URIProvider?
    let clock: any RefreshClock
    let logger: Logger
    let chosen = Mutex<(any CredentialProvider)?>(nil)

    public var name: String { chosen.withLock { $0.map { "auto:" + $0.name } } ?? "auto" }

    /// The chain ``ProviderConfiguration`` resolved; `environment` is what `env` reads.
    public init(
        chain: AutoChain, environment: ProviderEnvironment,
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        metadataHTTP: HTTPFetcher = HTTPFetcher(timeouts: .metadata, proxy: .never),
        clock: any RefreshClock,
        logger: Logger = Logger(label: "credfs.auto")
    ) {
        self.environment = environment
        self.accessKey = chain.accessKey
        self.clock = clock
        self.logger = logger
        oidc = chain.oidc.map {
            OIDCProvider(
                roleArn: $0.roleArn, oidcProviderArn: $0.oidcProviderArn, tokenFile: $0.tokenFile,
                sessionName: $0.sessionName, durationSeconds: $0.durationSeconds, policy: $0.policy,
                endpoint: $0.endpoint, http: http, clock: clock)
        }
        ecs = chain.ecs.map {
            EcsMetadataProvider(
                endpoint: $0.endpoint, role: $0.role, imdsV1Disabled: $0.imdsV1Disabled, http: metadataHTTP,
                clock: clock)
        }
        uri = chain.uri.map { URIProvider(url: $0, http: http, clock: clock) }
    }

    /// The chain `environment` gives (``ProviderConfiguration/autoChain(_:imdsEndpoint:role:stsEndpoint:)``).
    public convenience init(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        imdsEndpoint: String = ProviderFlags.defaultIMDSEndpoint, role: String? = nil,
        stsEndpoint: String? = nil,
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        metadataHTTP: HTTPFetcher = HTTPFetcher(timeouts: .metadata, proxy: .never),
        clock: any RefreshClock,
        logger: Logger = Logger(label: "credfs.auto")
    ) {
        let environment = ProviderEnvironment(environment)
        self.init(
            chain: ProviderConfiguration.autoChain(
                environment, imdsEndpoint: imdsEndpoint, role: role, stsEndpoint: stsEndpoint),
            environment: environment, http: http, metadataHTTP: metadataHTTP, clock: clock, logger: logger)
    }

    public var secrets: [String] { choice?.secrets ?? oidc?.secrets ?? [] }

    /// The source kept after the first success, if any.
    public var choice: (any CredentialProvider)? { chosen.withLock { $0 } }

    public func fetch() async throws -> Credentials {
        if let kept = choice { return try await attempt(kept) }
        if accessKey { return try await choose(EnvironmentProvider(environment, clock: clock)) }
        if let oidc { return try await choose(oidc) }
        var tried = [
            Self.step("env", "\(CloudVariable.accessKeyId) unset"),
            Self.step(
                "oidc-role-arn",
                "\(CloudVariable.roleArn), \(CloudVariable.oidcProviderArn), \(CloudVariable.oidcTokenFile) not all set"
            ),
        ]
        if let ecs {
            do {
                let credentials = try await ecs.fetch(probing: true)
                keep(ecs)
                return credentials
            } catch {
                tried.append(Self.step("ecs-ram-role", error.message))
            }
        } else {
            tried.append(Self.step("ecs-ram-role", "\(CloudVariable.ecsMetadataDisabled)=true"))
        }
        if let uri {
            do {
                let credentials = try await uri.fetch()
                keep(uri)
                return credentials
            } catch let error as CredentialError {
                tried.append(Self.step("uri", error.message))
            }
        } else {
            tried.append(Self.step("uri", "\(CloudVariable.credentialsURI) unset"))
        }
        throw CredentialError(
            "no credential source found: tried " + tried.joined(separator: "; "), limit: Redact.maxLength)
    }

    /// The longest error of one step of the chain kept in the chain's message, so every
    /// step fits in ``Redact/maxLength``.
    public static let stepLength = 120

    /// One step of the chain: `name (why it gave nothing)`.
    static func step(_ name: String, _ why: String) -> String {
        "\(name) (\(CredentialError.line(why, limit: stepLength)))"
    }

    func choose(_ provider: any CredentialProvider) async throws -> Credentials {
        keep(provider)
        return try await attempt(provider)
    }

    func keep(_ provider: any CredentialProvider) {
        let first = chosen.withLock { kept -> Bool in
            guard kept == nil else { return false }
            kept = provider
            return true
        }
        if first {
            logger.info("auto chose a credential source", metadata: ["provider": "\(provider.name)"])
        }
    }

    func attempt(_ provider: any CredentialProvider) async throws -> Credentials {
        do {
            return try await provider.fetch()
        } catch let error as CredentialError {
            throw CredentialError("auto chose \(provider.name): \(error.message)")
        }
    }
}
