import FoundationEssentials
import Synchronization

/// Where STS is (SPEC section 3): `--sts-endpoint`, else
/// `sts[-vpc].<$ALIBABA_CLOUD_STS_REGION>.aliyuncs.com` (`-vpc` with
/// `$ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED=true`), else `sts.aliyuncs.com`; HTTPS unless the
/// endpoint flag names a scheme (tests use `http://127.0.0.1:PORT`).
public enum STSEndpoint {
    public static func resolve(flag: String?, environment: [String: String]) -> String {
        if let flag, !flag.isEmpty {
            var url = flag.contains("://") ? flag : "https://" + flag
            while url.hasSuffix("/") { url.removeLast() }
            return url
        }
        if let region = environment["ALIBABA_CLOUD_STS_REGION"], !region.isEmpty {
            let vpc = environment["ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED"]?.lowercased() == "true"
            return "https://sts\(vpc ? "-vpc" : "").\(region).aliyuncs.com"
        }
        return "https://sts.aliyuncs.com"
    }
}

/// STS answers: `{"RequestId":…,"Credentials":{"AccessKeyId","AccessKeySecret",
/// "SecurityToken","Expiration"},…}` on success; `{"Code":…,"Message":…,"RequestId":…}`
/// with a non-200 status on failure.
public enum STSAnswer {
    struct Body: Decodable {
        struct Creds: Decodable {
            var AccessKeyId: String?
            var AccessKeySecret: String?
            var SecurityToken: String?
            var Expiration: String?
        }
        var RequestId: String?
        var Code: String?
        var Message: String?
        var Credentials: Creds?
    }

    public static func parse(action: String, status: Int, body: [UInt8], now: Date)
        throws(CredentialError) -> Credentials
    {
        let tooLarge = body.count > AnswerParser.maxBodyBytes
        let decoded = tooLarge ? nil : try? JSONDecoder().decode(Body.self, from: Data(body))
        func refusal(_ prefix: String, _ answer: Body) -> CredentialError {
            let request = answer.RequestId.map { " (RequestId \($0.prefix(64)))" } ?? ""
            let message = answer.Message.map(withoutStringToSign) ?? "no Message"
            return CredentialError(
                "STS \(action): \(prefix)\(answer.Code ?? "no Code"): \(message)\(request)")
        }
        guard status == 200 else {
            if let decoded, decoded.Code != nil || decoded.Message != nil {
                throw refusal("HTTP \(status): ", decoded)
            }
            throw CredentialError("STS \(action): HTTP \(status)")
        }
        guard !tooLarge else { throw CredentialError("STS \(action): answer larger than 64 KiB") }
        guard let answer = decoded else {
            throw CredentialError("STS \(action): answer is not a JSON object")
        }
        guard let creds = answer.Credentials else {
            if answer.Code != nil { throw refusal("", answer) }
            throw CredentialError("STS \(action): no Credentials in the answer")
        }
        do {
            return try AnswerParser.validate(
                accessKeyId: creds.AccessKeyId, accessKeySecret: creds.AccessKeySecret,
                securityToken: creds.SecurityToken, expiration: creds.Expiration, tokenRequired: true,
                now: now)
        } catch {
            throw CredentialError("STS \(action): \(error.message)")
        }
    }

    /// STS's `SignatureDoesNotMatch` message quotes its whole string to sign, which holds
    /// the signer's SecurityToken: the message is cut before it.
    static func withoutStringToSign(_ message: String) -> String {
        let bytes = Array(message.utf8)
        let lower = bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }  // ASCII only: same offsets
        guard let range = lower.firstRange(of: Array("string to sign".utf8)) else { return message }
        var kept = String(decoding: bytes[..<range.lowerBound], as: UTF8.self)
        while kept.hasSuffix(" ") || kept.hasSuffix(".") { kept.removeLast() }
        if kept.lowercased().hasSuffix("server") { kept.removeLast(6) }
        while kept.hasSuffix(" ") || kept.hasSuffix(".") { kept.removeLast() }
        return kept + " (string to sign left out)"
    }

    /// `application/x-www-form-urlencoded` / RPC query encoding: RFC 3986 unreserved
    /// characters stay, everything else is %XX (space as %20).
    public static func percentEncode(_ text: String) -> String { Redact.percentEncode(text) }

    public static func encode(_ parameters: [(String, String)]) -> String {
        parameters.map { percentEncode($0.0) + "=" + percentEncode($0.1) }.joined(separator: "&")
    }
}

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
    let now: @Sendable () -> Date
    /// The token last read: an STS error may quote it.
    let lastToken = TokenBox()

    public static let defaultDuration = 3600
    public static let minimumDuration = 900

    public var secrets: [String] { lastToken.value.withLock { $0.map { [$0] } ?? [] } }

    public init(
        roleArn: String, oidcProviderArn: String, tokenFile: String, sessionName: String? = nil,
        durationSeconds: Int = OIDCProvider.defaultDuration, policy: String? = nil, endpoint: String,
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard),
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.roleArn = roleArn
        self.oidcProviderArn = oidcProviderArn
        self.tokenFile = tokenFile
        self.sessionName = sessionName.flatMap { $0.isEmpty ? nil : $0 }
        self.durationSeconds = durationSeconds
        self.policy = policy.flatMap { $0.isEmpty ? nil : $0 }
        self.endpoint = endpoint
        self.http = http
        self.now = now
    }

    /// The three variables the SDKs read, when all are set.
    public static func fromEnvironment(
        _ environment: [String: String], endpoint: String,
        http: HTTPFetcher = HTTPFetcher(timeouts: .standard)
    ) -> OIDCProvider? {
        guard let role = environment["ALIBABA_CLOUD_ROLE_ARN"], !role.isEmpty,
            let provider = environment["ALIBABA_CLOUD_OIDC_PROVIDER_ARN"], !provider.isEmpty,
            let file = environment["ALIBABA_CLOUD_OIDC_TOKEN_FILE"], !file.isEmpty
        else { return nil }
        return OIDCProvider(
            roleArn: role, oidcProviderArn: provider, tokenFile: file,
            sessionName: environment["ALIBABA_CLOUD_ROLE_SESSION_NAME"], endpoint: endpoint, http: http)
    }

    public func fetch() async throws -> Credentials {
        let token = try Self.readToken(tokenFile)
        lastToken.value.withLock { $0 = token }
        let time = now()
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
            action: "AssumeRoleWithOIDC", status: response.status, body: response.body, now: now())
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
