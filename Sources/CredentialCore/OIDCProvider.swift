import FoundationEssentials
import Synchronization

/// `oidc-role-arn`: STS AssumeRoleWithOIDC (unsigned RPC), as the SDKs' OIDC provider in
/// ACK RRSA pods. The OIDC token file is read again at every refresh (the kubelet rotates
/// it). The request is a POST: the OIDC token travels in the form body, never in the URL.
public struct OIDCProvider: CredentialProvider {
    public let name = "oidc-role-arn"
    public let roleArn: String
    public let oidcProviderArn: String
    public let tokenFile: String
    public let sessionName: String?
    public let durationSeconds: Int
    public let policy: String?
    public let endpoint: String
    let http: HTTPFetcher
    let clock: any RefreshClock
    /// The token last read: an STS error may quote it.
    let lastToken = TokenBox()

    public static let defaultDuration = 3600
    public static let minimumDuration = 900

    public var secrets: [String] { lastToken.value.withLock { $0.map { [$0] } ?? [] } }

    public init(
        roleArn: String, oidcProviderArn: String, tokenFile: String, sessionName: String? = nil,
        durationSeconds: Int = OIDCProvider.defaultDuration, policy: String? = nil, endpoint: String,
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        clock: any RefreshClock
    ) {
        self.roleArn = roleArn
        self.oidcProviderArn = oidcProviderArn
        self.tokenFile = tokenFile
        self.sessionName = sessionName.flatMap { $0.isEmpty ? nil : $0 }
        self.durationSeconds = durationSeconds
        self.policy = policy.flatMap { $0.isEmpty ? nil : $0 }
        self.endpoint = endpoint
        self.http = http
        self.clock = clock
    }

    public func fetch() async throws -> Credentials {
        let token = try Self.readToken(tokenFile)
        lastToken.value.withLock { $0 = token }
        let time = clock.now()
        let query: [(String, String)] = [
            ("Action", "AssumeRoleWithOIDC"), ("Format", "JSON"), ("Version", "2015-04-01"),
            ("Timestamp", Timestamp.format(time)),
        ]
        var form: [(String, String)] = [
            ("RoleArn", roleArn), ("OIDCProviderArn", oidcProviderArn), ("OIDCToken", token),
            ("RoleSessionName", sessionName ?? "credfs-\(Int(time.timeIntervalSince1970))"),
            ("DurationSeconds", String(durationSeconds)),
        ]
        if let policy { form.append(("Policy", policy)) }
        let response = try await http.send(
            .POST, url: endpoint + "/?" + STSAnswer.encode(query),
            headers: [
                ("Content-Type", "application/x-www-form-urlencoded"), ("Accept", "application/json"),
            ],
            body: Array(STSAnswer.encode(form).utf8))
        return try STSAnswer.parse(
            action: "AssumeRoleWithOIDC", status: response.status, body: response.body, now: clock.now())
    }

    /// The token file, read through ``SmallFile``: a regular file of at most 64 KiB (a
    /// FIFO, a device or a directory is an error, never a wait), white space around it
    /// dropped.
    static func readToken(_ path: String) throws(CredentialError) -> String {
        let token = SmallFile.trimmed(try SmallFile.read(path, what: "OIDC token file"))
        guard !token.isEmpty else { throw CredentialError("the OIDC token file \(path) is empty") }
        return token
    }
}

/// A secret held for redaction only.
final class TokenBox: Sendable {
    let value = Mutex<String?>(nil)
}
