import Foundation

/// `uri`: GET a credentials URI (SPEC section 3), 5 s connect / 10 s read.
public struct URIProvider: CredentialProvider {
    public let name = "uri"
    let url: String
    let http: HTTPFetcher

    public init(url: String, http: HTTPFetcher = HTTPFetcher(timeouts: .standard)) {
        self.url = url
        self.http = http
    }

    public func fetch() async throws -> Credentials {
        let response = try await http.send(url: url)
        return try AnswerParser.parseFlat(status: response.status, body: response.body, now: Date())
    }
}

/// `env`: the `ALIBABA_CLOUD_ACCESS_KEY_ID` family of variables, read once per fetch.
public struct EnvironmentProvider: CredentialProvider {
    public let name = "env"
    let environment: [String: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// True when the two required variables are set (the `auto` chain's test).
    public var isAvailable: Bool {
        !(environment["ALIBABA_CLOUD_ACCESS_KEY_ID"] ?? "").isEmpty
            && !(environment["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] ?? "").isEmpty
    }

    public func fetch() async throws -> Credentials {
        guard isAvailable else {
            throw CredentialError("ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET must both be set")
        }
        return try AnswerParser.validate(
            accessKeyId: environment["ALIBABA_CLOUD_ACCESS_KEY_ID"],
            accessKeySecret: environment["ALIBABA_CLOUD_ACCESS_KEY_SECRET"],
            securityToken: environment["ALIBABA_CLOUD_SECURITY_TOKEN"], expiration: nil,
            tokenRequired: false, now: Date())
    }
}

/// `demo`: clearly fake STS-shaped credentials (`STS.DEMO…`), each set valid for
/// `lifetime` seconds from the moment it is issued; the refresher replaces them before
/// they expire, as it would real ones.
public struct DemoProvider: CredentialProvider {
    public let name = "demo"
    let lifetime: Int
    let now: @Sendable () -> Date

    public init(lifetime: Int, now: @escaping @Sendable () -> Date = { Date() }) {
        self.lifetime = lifetime
        self.now = now
    }

    public func fetch() async throws -> Credentials {
        let issued = Timestamp.wholeSeconds(now())
        func random(_ count: Int) -> String {
            let alphabet = Array("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789")
            return String((0..<count).map { _ in alphabet.randomElement()! })
        }
        return Credentials(
            accessKeyId: "STS.DEMO" + random(16),
            accessKeySecret: "DEMO-SECRET-not-a-real-key-" + random(12),
            securityToken: "DEMO-TOKEN-not-a-real-token-" + random(40),
            expiration: issued.addingTimeInterval(TimeInterval(lifetime)))
    }
}

/// `auto`: the SDKs' default-chain order, over the sources this build has: environment
/// variables, then the credentials URI. Each fetch picks again, so a source that appears
/// later is found; with none, the fetch fails and names what was tried.
public struct AutoProvider: CredentialProvider {
    public let name = "auto"
    let environment: [String: String]
    let http: HTTPFetcher

    public init(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard)
    ) {
        self.environment = environment
        self.http = http
    }

    /// The source the chain picks now, or nil with what was tried.
    public func choose() -> (any CredentialProvider)? {
        let env = EnvironmentProvider(environment: environment)
        if env.isAvailable { return env }
        if let uri = environment["ALIBABA_CLOUD_CREDENTIALS_URI"], !uri.isEmpty {
            return URIProvider(url: uri, http: http)
        }
        return nil
    }

    public func fetch() async throws -> Credentials {
        guard let chosen = choose() else {
            throw CredentialError(
                "no credential source found: tried env (ALIBABA_CLOUD_ACCESS_KEY_ID unset), uri (ALIBABA_CLOUD_CREDENTIALS_URI unset)"
            )
        }
        do {
            return try await chosen.fetch()
        } catch let error as CredentialError {
            throw CredentialError("auto chose \(chosen.name): \(error.message)")
        }
    }
}
