import FoundationEssentials

/// Validates upstream answers (SPEC section 3, last paragraph) and turns them into
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

    /// The checks every source shares: non-empty key pair, a token where required, and an
    /// Expiration that parses and lies in the future (required whenever a token is).
    public static func validate(
        accessKeyId: String?, accessKeySecret: String?, securityToken: String?, expiration: String?,
        tokenRequired: Bool, now: Date
    ) throws(CredentialError) -> Credentials {
        guard let accessKeyId, !accessKeyId.isEmpty else { throw CredentialError("empty AccessKeyId") }
        guard let accessKeySecret, !accessKeySecret.isEmpty else {
            throw CredentialError("empty AccessKeySecret")
        }
        if tokenRequired, securityToken?.isEmpty ?? true {
            throw CredentialError("empty SecurityToken")
        }
        var expires: Date?
        if let expiration {
            guard let parsed = Timestamp.parse(expiration) else {
                throw CredentialError("Expiration is not an RFC 3339 time")
            }
            expires = Timestamp.wholeSeconds(parsed)
        } else if tokenRequired {
            throw CredentialError("no Expiration in the answer")
        }
        if let expires, expires <= now {
            throw CredentialError("answer already expired (Expiration \(Timestamp.format(expires)))")
        }
        let token = securityToken.flatMap { $0.isEmpty ? nil : $0 }
        return Credentials(
            accessKeyId: accessKeyId, accessKeySecret: accessKeySecret, securityToken: token,
            expiration: expires)
    }
}
