import FoundationEssentials
import Logging
import Synchronization

/// `ecs-ram-role`: the RAM role of an ECS instance, from its metadata service
/// (docs/contract.md, "Providers"), with the metadata service's own 1 s connect / 1 s read timeouts.
///
/// Once the metadata token and the role name are known, a refresh is one GET:
/// - the IMDSv2 token (`PUT /latest/api/token`) is kept and sent until
///   ``tokenRenewBefore`` before its TTL ends, and dropped early if the service answers
///   401 or 403 to it;
/// - the role name (from the configuration, else `GET …/security-credentials/`) is kept
///   and looked up again only when the service answers 404 for it.
///
/// When the token request fails the request goes out without a token (IMDSv1), unless
/// `imdsV1Disabled` (`ALIBABA_CLOUD_IMDSV1_DISABLED=true`).
public final class EcsMetadataProvider: CredentialProvider {
    public let name = "ecs-ram-role"
    /// The metadata token's lifetime asked for, in seconds (the SDKs' 21600, six hours).
    public static let tokenTTL = 21600
    /// A token is replaced once less than this is left of its TTL.
    public static let tokenRenewBefore: TimeInterval = 300
    static let credentialsPath = "/latest/meta-data/ram/security-credentials/"

    let endpoint: String
    let configuredRole: String?
    let imdsV1Disabled: Bool
    let http: HTTPFetcher
    let clock: any RefreshClock
    let logger: Logger

    struct State {
        var token: String?
        var tokenRenewAt: Date?
        var discoveredRole: String?
    }
    let state = Mutex(State())

    /// - Parameters:
    ///   - endpoint: the metadata service's base URL (`http://100.100.100.200`).
    ///   - role: the role name (`--role` or `$ALIBABA_CLOUD_ECS_METADATA`, resolved by
    ///     ``ProviderConfiguration``); nil to discover it.
    ///   - imdsV1Disabled: refuse to ask without a metadata token.
    public init(
        endpoint: String = "http://100.100.100.200", role: String? = nil, imdsV1Disabled: Bool = false,
        http: HTTPFetcher = HTTPFetcher(timeouts: .metadata, proxy: .never),
        clock: any RefreshClock,
        logger: Logger = Logger(label: "credfs.ecs-ram-role")
    ) {
        var base = endpoint
        while base.hasSuffix("/") { base.removeLast() }
        self.endpoint = base
        self.configuredRole = role.flatMap { $0.isEmpty ? nil : $0 }
        self.imdsV1Disabled = imdsV1Disabled
        // A proxy must never see metadata traffic, whatever fetcher was passed in.
        self.http = http.direct()
        self.clock = clock
        self.logger = logger
    }

    public func fetch() async throws -> Credentials {
        try await fetch(probing: false)
    }

    /// One refresh. With `probing` (the `auto` chain), a metadata service that does not
    /// answer the token request at all is reported at once instead of being asked again
    /// without a token, so the probe costs at most one connect timeout (1 s) off ECS.
    public func fetch(probing: Bool) async throws(CredentialError) -> Credentials {
        let token = try await metadataToken(probing: probing)
        var role = try await roleName(token: token)
        var response = try await get(Self.credentialsPath + Self.pathComponent(role), token: token)
        if response.status == 404, configuredRole == nil {
            // The role attached to the instance changed: look it up again, once.
            state.withLock { $0.discoveredRole = nil }
            logger.notice(
                "the metadata service does not know role \(role) any more; looking the role up again")
            role = try await roleName(token: token)
            response = try await get(Self.credentialsPath + Self.pathComponent(role), token: token)
        }
        if response.status == 401 || response.status == 403, token != nil {
            // The service no longer takes our token (restarted, or revoked): get a new one next time.
            state.withLock {
                $0.token = nil
                $0.tokenRenewAt = nil
            }
        }
        do {
            return try AnswerParser.parseFlat(status: response.status, body: response.body, now: clock.now())
        } catch {
            throw CredentialError("ECS metadata role \(role): \(error.message)")
        }
    }

    /// The cached IMDSv2 token, a new one, or nil for IMDSv1.
    func metadataToken(probing: Bool) async throws(CredentialError) -> String? {
        let started = clock.now()
        if let cached = state.withLock({ s -> String? in
            guard let token = s.token, let renewAt = s.tokenRenewAt, started < renewAt else { return nil }
            return token
        }) {
            return cached
        }
        let reason: String
        do {
            let response = try await http.send(
                .PUT, url: endpoint + "/latest/api/token",
                headers: [("X-aliyun-ecs-metadata-token-ttl-seconds", String(Self.tokenTTL))])
            if response.status == 200, let token = Self.usableToken(response.body) {
                state.withLock {
                    $0.token = token
                    $0.tokenRenewAt = started.addingTimeInterval(
                        TimeInterval(Self.tokenTTL) - Self.tokenRenewBefore)
                }
                return token
            }
            reason = response.status == 200 ? "unusable token in the answer" : "HTTP \(response.status)"
        } catch {
            if probing {
                throw CredentialError("ECS metadata service not reachable: \(error.message)")
            }
            reason = error.message
        }
        if imdsV1Disabled {
            throw CredentialError(
                "ECS metadata token request failed (\(reason)) and ALIBABA_CLOUD_IMDSV1_DISABLED=true forbids asking without one"
            )
        }
        logger.notice(
            "ECS metadata token request failed; asking without a token (IMDSv1)",
            metadata: ["error": "\(reason)"])
        return nil
    }

    /// The role to ask for: configured, discovered earlier, or discovered now.
    func roleName(token: String?) async throws(CredentialError) -> String {
        if let configuredRole { return configuredRole }
        if let known = state.withLock({ $0.discoveredRole }) { return known }
        let response = try await get(Self.credentialsPath, token: token)
        guard response.status == 200 else {
            if response.status == 404 {
                throw CredentialError("ECS metadata: no RAM role is attached to this instance (HTTP 404)")
            }
            if response.status == 401 || response.status == 403, token != nil {
                state.withLock {
                    $0.token = nil
                    $0.tokenRenewAt = nil
                }
            }
            throw CredentialError("ECS metadata role lookup: HTTP \(response.status)")
        }
        let text = String(decoding: response.body, as: UTF8.self)
        let role =
            text.split(whereSeparator: \.isNewline).first.map { Text.trimmed($0) } ?? ""
        guard Self.usableRole(role) else {
            throw CredentialError(
                "ECS metadata: no RAM role is attached to this instance (empty role list)")
        }
        state.withLock { $0.discoveredRole = role }
        logger.info("ECS metadata role discovered", metadata: ["role": "\(role)"])
        return role
    }

    func get(_ path: String, token: String?) async throws(CredentialError) -> HTTPFetcher.Response {
        var headers: [(String, String)] = []
        if let token { headers.append(("X-aliyun-ecs-metadata-token", token)) }
        return try await http.send(.GET, url: endpoint + path, headers: headers)
    }

    /// A token is printable ASCII, no longer than 4 KiB: anything else is not sent as a header.
    static func usableToken(_ body: [UInt8]) -> String? {
        guard !body.isEmpty, body.count <= 4096 else { return nil }
        let trimmed = Text.trimmed(String(decoding: body, as: UTF8.self))
        guard !trimmed.isEmpty, trimmed.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return trimmed
    }

    static func pathComponent(_ role: String) -> String {
        Text.percentEncoded(role)
    }
}

extension EcsMetadataProvider {
    /// The metadata token with the instant it is to be replaced, and the discovered role
    /// name, for a successor (a takeover): its next refresh is then one GET. Tied to this
    /// endpoint. Holds the token (a secret): memory only, never logged.
    public var cachedState: ProviderCachedState? {
        let held = state.withLock { $0 }
        var values: [String: String] = [:]
        if let token = held.token, let renewAt = held.tokenRenewAt {
            values["token"] = token
            values["tokenRenewAt"] = String(renewAt.timeIntervalSince1970)
        }
        if let role = held.discoveredRole { values["role"] = role }
        guard !values.isEmpty else { return nil }
        values["endpoint"] = endpoint
        return ProviderCachedState(provider: name, values: values)
    }

    /// Takes a predecessor's token while it is still good (and never for longer than a new
    /// one would be kept), and its discovered role unless a role is configured. Anything
    /// from another endpoint, or that a fresh answer would not have been accepted as, is
    /// ignored.
    public func restoreCachedState(_ carried: ProviderCachedState) {
        guard carried.provider == name, carried.values["endpoint"] == endpoint else { return }
        let current = clock.now()
        var token: (String, Date)?
        if let text = carried.values["token"], let usable = Self.usableToken(Array(text.utf8)), usable == text,
            let seconds = carried.values["tokenRenewAt"].flatMap(Double.init), let renewAt = Timestamp.epoch(seconds),
            renewAt > current,
            renewAt <= current.addingTimeInterval(TimeInterval(Self.tokenTTL) - Self.tokenRenewBefore)
        {
            token = (usable, renewAt)
        }
        var role: String?
        if configuredRole == nil, let text = carried.values["role"], Self.usableRole(text) { role = text }
        state.withLock { s in
            if let token {
                s.token = token.0
                s.tokenRenewAt = token.1
            }
            if let role { s.discoveredRole = role }
        }
    }

    /// A role name as discovery accepts it: one path component, no whitespace, at most 256.
    static func usableRole(_ role: String) -> Bool {
        !role.isEmpty && role.count <= 256 && !role.contains("/") && role.allSatisfy({ !$0.isWhitespace })
    }
}
