import FoundationEssentials

/// Validates upstream answers (docs/contract.md, "Providers", last paragraph) and turns them into
/// ``Credentials``. Every rejection is a ``CredentialError`` with one line that names
/// what was wrong and never quotes a secret.
public enum AnswerParser {
    /// The largest answer body credfs accepts.
    public static let maxBodyBytes = 64 * 1024

    /// The flat layout shared by the credentials URI and the ECS metadata service:
    /// `{"Code":"Success","AccessKeyId","AccessKeySecret","SecurityToken","Expiration"}`.
    struct FlatAnswer: Decodable {
        var Code: String?
        var Message: String?
        var AccessKeyId: String?
        var AccessKeySecret: String?
        var SecurityToken: String?
        var Expiration: String?
    }

    /// Parses a credentials-URI (or ECS metadata) answer.
    ///
    /// - Parameters:
    ///   - status: the HTTP status code.
    ///   - body: the raw body, at most ``maxBodyBytes`` (larger bodies are rejected).
    ///   - now: the time the answer is judged at (Expiration must lie after it).
    public static func parseFlat(status: Int, body: [UInt8], now: Date) throws(CredentialError)
        -> Credentials
    {
        let tooLarge = body.count > maxBodyBytes
        let decoded = tooLarge ? nil : try? JSONDecoder().decode(FlatAnswer.self, from: Data(body))
        guard status == 200 else {
            if let decoded, decoded.Code != nil || decoded.Message != nil {
                throw CredentialError(
                    "HTTP \(status): \(decoded.Code ?? "no Code"): \(decoded.Message ?? "no Message")")
            }
            throw CredentialError("HTTP \(status)")
        }
        guard !tooLarge else { throw CredentialError("answer larger than 64 KiB") }
        guard let answer = decoded else {
            throw CredentialError("answer is not a JSON object with the credential fields")
        }
        guard answer.Code == "Success" else {
            let code = answer.Code.map { "Code \($0)" } ?? "no Code"
            throw CredentialError("upstream refused: \(code): \(answer.Message ?? "no Message")")
        }
        return try validate(
            accessKeyId: answer.AccessKeyId, accessKeySecret: answer.AccessKeySecret,
            securityToken: answer.SecurityToken, expiration: answer.Expiration,
            tokenRequired: true, now: now)
    }

    /// An Expiration as a source gives it: RFC 3339 text, or (a process helper) seconds
    /// since the epoch.
    public enum Expiry: Sendable, Equatable {
        case text(String)
        case epoch(Double)
    }

    /// The checks every source shares: non-empty key pair, a token where required, and an
    /// Expiration that parses and lies in the future (required whenever a token is).
    public static func validate(
        accessKeyId: String?, accessKeySecret: String?, securityToken: String?, expiration: String?,
        tokenRequired: Bool, now: Date
    ) throws(CredentialError) -> Credentials {
        try validate(
            accessKeyId: accessKeyId, accessKeySecret: accessKeySecret, securityToken: securityToken,
            expiry: expiration.map(Expiry.text), tokenRequired: tokenRequired, now: now)
    }

    /// The same, with the Expiration as text or as an epoch number. Values hold only bytes
    /// 0x21–0x7E; the Expiration must be a real instant between 1970 and 9999.
    public static func validate(
        accessKeyId: String?, accessKeySecret: String?, securityToken: String?, expiry: Expiry?,
        tokenRequired: Bool, now: Date
    ) throws(CredentialError) -> Credentials {
        guard let accessKeyId, !accessKeyId.isEmpty else { throw CredentialError("empty AccessKeyId") }
        guard let accessKeySecret, !accessKeySecret.isEmpty else {
            throw CredentialError("empty AccessKeySecret")
        }
        if tokenRequired, securityToken?.isEmpty ?? true {
            throw CredentialError("empty SecurityToken")
        }
        try checkValue(accessKeyId, field: "AccessKeyId")
        try checkValue(accessKeySecret, field: "AccessKeySecret")
        if let securityToken { try checkValue(securityToken, field: "SecurityToken") }
        var expires: Date?
        switch expiry {
        case .text(let text)?:
            guard let parsed = Timestamp.parse(text) else { throw CredentialError(badExpiration) }
            expires = Timestamp.wholeSeconds(parsed)
        case .epoch(let seconds)?:
            guard let parsed = Timestamp.epoch(seconds) else {
                throw CredentialError("Expiration is not an epoch time between 1970 and 9999")
            }
            expires = Timestamp.wholeSeconds(parsed)
        case nil:
            if tokenRequired { throw CredentialError("no Expiration in the answer") }
        }
        if let expires, expires <= now {
            throw CredentialError("answer already expired (Expiration \(Timestamp.format(expires)))")
        }
        let token = securityToken.flatMap { $0.isEmpty ? nil : $0 }
        return Credentials(
            accessKeyId: accessKeyId, accessKeySecret: accessKeySecret, securityToken: token,
            expiration: expires)
    }

    /// The error for an Expiration text that is not a real instant in range.
    static let badExpiration = "Expiration is not an RFC 3339 time between 1970 and 9999"

    /// Whether `byte` may appear in a credential value: printable ASCII without space.
    @inlinable public static func isValueByte(_ byte: UInt8) -> Bool { byte >= 0x21 && byte <= 0x7E }

    /// AccessKeyId, AccessKeySecret and SecurityToken hold only bytes 0x21–0x7E
    /// (docs/security.md, "Answers"): no CR, LF, NUL, space, control byte or non-ASCII, so every view (env,
    /// JSON, HTTP) carries them unchanged and no reader can be tricked by a line break.
    /// The error names the field, never the value (nor where in it the byte was).
    static func checkValue(_ value: String, field: String) throws(CredentialError) {
        guard value.utf8.allSatisfy(isValueByte) else {
            throw CredentialError("\(field) holds a byte outside printable ASCII (0x21-0x7E)")
        }
    }
}
