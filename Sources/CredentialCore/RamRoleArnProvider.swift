import FoundationEssentials
import Logging

/// `ram-role-arn`: STS AssumeRole, a signed RPC GET (``RPCSignature``), signed with the
/// credentials of a source provider (`env`, `ecs-ram-role`, `uri`, `process`,
/// `oidc-role-arn`, `demo`).
///
/// The source has a ``Refresher`` of its own, so its credentials are cached and replaced
/// on its own schedule (prefetch before its expiry, backoff on failure), not fetched again
/// for every AssumeRole. It has no loop of its own: each AssumeRole asks it for credentials
/// and it goes upstream only when it holds none that are valid or its schedule says a
/// refresh is due. A long-lived `env` pair is therefore read once; an ECS role's
/// credentials are fetched once per their own lifetime, however often AssumeRole runs.
/// When STS says the signing key or token is not (or no longer) valid, the source is
/// refreshed before the next AssumeRole.
public final class RamRoleArnProvider: CredentialProvider {
    public let name = "ram-role-arn"
    public let roleArn: String
    public let sessionName: String?
    public let durationSeconds: Int
    public let externalId: String?
    public let policy: String?
    public let endpoint: String
    /// The source's own refresher (its cache, schedule and backoff).
    public let source: Refresher
    let http: HTTPFetcher
    let clock: any RefreshClock
    let nonce: @Sendable () -> String

    public static let defaultDuration = 3600
    public static let minimumDuration = 900

    public init(
        source: any CredentialProvider, roleArn: String, sessionName: String? = nil,
        durationSeconds: Int = RamRoleArnProvider.defaultDuration, externalId: String? = nil,
        policy: String? = nil, endpoint: String, http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        logger: Logger = Logger(label: "credfs.source"),
        clock: any RefreshClock,
        nonce: @escaping @Sendable () -> String = { UUID().uuidString }
    ) {
        var sourceLogger = logger
        sourceLogger[metadataKey: "source"] = "\(source.name)"
        self.source = Refresher(provider: source, clock: clock, logger: sourceLogger)
        self.roleArn = roleArn
        self.sessionName = sessionName.flatMap { $0.isEmpty ? nil : $0 }
        self.durationSeconds = durationSeconds
        self.externalId = externalId.flatMap { $0.isEmpty ? nil : $0 }
        self.policy = policy.flatMap { $0.isEmpty ? nil : $0 }
        self.endpoint = endpoint
        self.http = http
        self.clock = clock
        self.nonce = nonce
    }

    /// The source's key, secret and token, and whatever its provider knows: STS may quote them.
    public var secrets: [String] {
        (source.serving()?.credentials.secrets ?? []) + source.provider.secrets
    }

    /// Upstream requests the source has made so far (its refresher's count).
    public var sourceRequests: Int { source.machine.upstreamRequests }

    /// The source's credentials: the ones its refresher holds, refreshed first only when
    /// it holds none that are valid or its own schedule says so.
    func signingCredentials() async throws(CredentialError) -> Credentials {
        if source.serving() == nil || source.machine.isDue(at: source.clock.now()) {
            await source.refresh()
        }
        if let held = source.serving() { return held.credentials }
        let why = source.machine.lastError ?? "no credentials"
        throw CredentialError("source \(source.provider.name): \(why)")
    }

    /// The AssumeRole parameters, unsigned.
    func parameters(signer: Credentials, time: Date) -> [(String, String)] {
        var parameters: [(String, String)] = [
            ("Action", "AssumeRole"), ("Format", "JSON"), ("Version", "2015-04-01"),
            ("SignatureMethod", "HMAC-SHA1"), ("SignatureVersion", "1.0"), ("SignatureNonce", nonce()),
            ("Timestamp", Timestamp.format(time)), ("AccessKeyId", signer.accessKeyId),
            ("RoleArn", roleArn),
            ("RoleSessionName", sessionName ?? "credfs-\(Int(time.timeIntervalSince1970))"),
            ("DurationSeconds", String(durationSeconds)),
        ]
        if let token = signer.securityToken, !token.isEmpty { parameters.append(("SecurityToken", token)) }
        if let externalId { parameters.append(("ExternalId", externalId)) }
        if let policy { parameters.append(("Policy", policy)) }
        return parameters
    }

    public func fetch() async throws -> Credentials {
        let signer = try await signingCredentials()
        let query = RPCSignature.signedQuery(
            parameters(signer: signer, time: clock.now()), secret: signer.accessKeySecret)
        // The query carries the source's AccessKeyId and token: HTTPFetcher's errors name
        // the URL without it.
        let response: HTTPFetcher.Response
        do {
            response = try await http.send(
                .GET, url: endpoint + "/?" + query, headers: [("Accept", "application/json")])
        } catch {
            throw CredentialError("STS AssumeRole: \(error.message)")
        }
        do {
            return try STSAnswer.parse(
                action: "AssumeRole", status: response.status, body: response.body, now: clock.now())
        } catch {
            if Self.signerRejected(error.message) { source.requestRefresh() }
            throw Self.redacting(signer, from: error)
        }
    }

    /// A second guard: whatever STS quoted back, no part of the signing secret or token
    /// reaches the log or `status`.
    static func redacting(_ signer: Credentials, from error: CredentialError) -> CredentialError {
        let message = Redact.text(error.message, secrets: signer.secrets)
        return message == error.message ? error : CredentialError(message)
    }

    /// STS refused the signing credentials themselves (revoked, expired, rotated): the
    /// source should be asked again rather than its cached set reused.
    static func signerRejected(_ message: String) -> Bool {
        ["InvalidAccessKeyId", "InvalidSecurityToken", "SignatureDoesNotMatch"].contains {
            message.contains($0)
        }
    }
}
