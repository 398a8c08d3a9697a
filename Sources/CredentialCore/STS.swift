import CCurl
import FoundationEssentials

// STS, the parts both STS providers share: where it is (``STSEndpoint``), how a request is
// encoded (``STSAnswer/percentEncode(_:)``, ``STSAnswer/encode(_:)``), how a GET is signed
// (``RPCSignature``), and how its answer is read (``STSAnswer/parse(action:status:body:now:)``).
// `oidc-role-arn` (OIDCProvider.swift) and `ram-role-arn` (RamRoleArnProvider.swift) keep
// only their own requests.

/// Where STS is (docs/contract.md, "Command line", `--sts-endpoint`): the flag, else
/// `sts[-vpc].<$ALIBABA_CLOUD_STS_REGION>.aliyuncs.com` (`-vpc` with
/// `$ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED=true`), else `sts.aliyuncs.com`; HTTPS unless the
/// endpoint flag names a scheme (tests use `http://127.0.0.1:PORT`).
public enum STSEndpoint {
    public static func resolve(flag: String?, environment: ProviderEnvironment) -> String {
        if let flag, !flag.isEmpty {
            var url = flag.contains("://") ? flag : "https://" + flag
            while url.hasSuffix("/") { url.removeLast() }
            return url
        }
        if let region = environment.stsRegion {
            return "https://sts\(environment.vpcEndpointEnabled ? "-vpc" : "").\(region).aliyuncs.com"
        }
        return "https://sts.aliyuncs.com"
    }

    public static func resolve(flag: String?, environment: [String: String]) -> String {
        resolve(flag: flag, environment: ProviderEnvironment(environment))
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

    /// `application/x-www-form-urlencoded` / RPC query encoding, and credfs's only
    /// percent-encoder: RFC 3986 unreserved characters (`A-Z a-z 0-9 - _ . ~`) stay, every
    /// other byte of the UTF-8 is `%XX` with upper-case hex (space as %20).
    public static func percentEncode(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"),
                UInt8(ascii: "."), UInt8(ascii: "~"):
                out.append(byte)
            default:
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func encode(_ parameters: [(String, String)]) -> String {
        parameters.map { percentEncode($0.0) + "=" + percentEncode($0.1) }.joined(separator: "&")
    }
}

/// Alibaba Cloud's RPC-style request signature, version 1.0 (HMAC-SHA1):
///
/// 1. the canonicalized query: every parameter but `Signature`, sorted by name (byte
///    order), each `percentEncode(name)=percentEncode(value)`, joined with `&`;
/// 2. the string to sign: `GET&%2F&` + percentEncode(canonicalized query);
/// 3. the signature: base64(HMAC-SHA1(key: AccessKeySecret + "&", string to sign)),
///    sent as one more query parameter, `Signature`.
///
/// Percent-encoding is RFC 3986's (``STSAnswer/percentEncode(_:)``): unreserved characters
/// stay, everything else is `%XX`, a space is `%20`, `*` is `%2A`, `~` stays.
public enum RPCSignature {
    public static func canonicalizedQuery(_ parameters: [(String, String)]) -> String {
        parameters
            .filter { $0.0 != "Signature" }
            .sorted { Array($0.0.utf8).lexicographicallyPrecedes(Array($1.0.utf8)) }
            .map { STSAnswer.percentEncode($0.0) + "=" + STSAnswer.percentEncode($0.1) }
            .joined(separator: "&")
    }

    public static func stringToSign(method: String = "GET", canonicalizedQuery: String) -> String {
        method + "&" + STSAnswer.percentEncode("/") + "&" + STSAnswer.percentEncode(canonicalizedQuery)
    }

    /// base64(HMAC-SHA1(secret + "&", text)).
    public static func signature(of text: String, secret: String) -> String {
        let key = Array((secret + "&").utf8)
        let message = Array(text.utf8)
        var code = [UInt8](repeating: 0, count: 20)
        // HMAC-SHA1 cannot fail for in-memory inputs; a key beyond Int32 cannot come from STS.
        let done =
            key.count <= Int(Int32.max)
            && code.withUnsafeMutableBufferPointer { out in
                credfs_hmac_sha1(key, Int32(key.count), message, message.count, out.baseAddress) == 1
            }
        return done ? Data(code).base64EncodedString() : ""
    }

    /// The signature of `parameters` for a GET.
    public static func sign(_ parameters: [(String, String)], secret: String) -> String {
        signature(of: stringToSign(canonicalizedQuery: canonicalizedQuery(parameters)), secret: secret)
    }

    /// The whole query string of a signed GET: the canonicalized query, then `&Signature=…`.
    public static func signedQuery(_ parameters: [(String, String)], secret: String) -> String {
        let canonical = canonicalizedQuery(parameters)
        let signature = signature(of: stringToSign(canonicalizedQuery: canonical), secret: secret)
        return canonical + "&Signature=" + STSAnswer.percentEncode(signature)
    }
}
