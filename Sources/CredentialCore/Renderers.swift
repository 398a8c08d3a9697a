import FoundationEssentials

/// Pure functions from credentials (or a status snapshot) to the exact bytes of each view.
public enum Render {
    /// The PAI `credentials` file: four keys in this order, a tab before each, a newline
    /// after the closing brace; lines the source did not give are left out.
    public static func credentialsFile(_ c: Credentials) -> [UInt8] {
        var lines = [
            "\t\"AccessKeyId\": \(jsonString(c.accessKeyId))",
            "\t\"AccessKeySecret\": \(jsonString(c.accessKeySecret))",
        ]
        if let token = c.securityToken { lines.append("\t\"SecurityToken\": \(jsonString(token))") }
        if let exp = c.expiration {
            lines.append("\t\"Expiration\": \(jsonString(Timestamp.format(exp)))")
        }
        return Array(("{\n" + lines.joined(separator: ",\n") + "\n}\n").utf8)
    }

    /// `expiration`: `2024-05-21T10:39:29Z`, no newline; nil when the set never expires.
    public static func expirationFile(_ c: Credentials) -> [UInt8]? {
        c.expiration.map { Array(Timestamp.format($0).utf8) }
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped;
    /// everything else, non-ASCII included, passes through as UTF-8.
    public static func jsonString(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// The `status` view: one JSON object, two-space indented, keys in the order of
    /// docs/contract.md (`status`), no secret. The serving process's fields (`pid`,
    /// `restarts`, `carriedState`; `mode`, `parkedRequests`, `openRequests`) appear when the
    /// executable supplied them.
    public static func statusFile(_ s: StatusSnapshot) -> [UInt8] {
        func str(_ v: String?) -> String { v.map(jsonString) ?? "null" }
        func time(_ v: Date?) -> String { str(v.map(Timestamp.format)) }
        func int(_ v: Int?) -> String { v.map(String.init) ?? "null" }
        var fields: [(String, String)] = [
            ("state", str(s.state.rawValue)),
            ("provider", str(s.provider)),
            ("generation", int(s.generation)),
            ("accessKeyId", str(s.maskedAccessKeyId)),
            ("expiration", time(s.expiration)),
            ("secondsRemaining", int(s.secondsRemaining)),
            ("lastRefresh", time(s.lastRefresh)),
            ("nextRefresh", time(s.nextRefresh)),
            ("consecutiveFailures", int(s.consecutiveFailures)),
            ("lastError", str(s.lastError)),
            ("upstreamRequests", int(s.upstreamRequests)),
            ("mountedAt", time(s.mountedAt)),
        ]
        if let serving = s.serving {
            fields += [
                ("pid", int(serving.pid)), ("restarts", int(serving.restarts)),
                ("carriedState", str(serving.carriedState)),
            ]
        }
        fields += [("version", str(s.version)), ("clockSkewSeconds", int(s.clockSkewSeconds))]
        if let serving = s.serving {
            fields += [
                ("mode", str(serving.mode)), ("parkedRequests", int(serving.parkedRequests)),
                ("openRequests", int(serving.openRequests)), ("versionedInodes", int(serving.versionedInodes)),
                ("openHandles", int(serving.openHandles)),
            ]
        }
        let body = fields.map { "  \(jsonString($0.0)): \($0.1)" }.joined(separator: ",\n")
        return Array(("{\n" + body + "\n}\n").utf8)
    }
}

/// The rendered bytes of every credential view of one generation, computed once (at the
/// first read after the generation is published) so that later opens and stats only copy them.
public struct CredentialViews: Sendable {
    /// By `CredentialView.allCases` order; nil where these credentials have none.
    private let table: [[UInt8]?]

    public init(_ c: Credentials, region: String = "cn-hangzhou") {
        table = CredentialView.allCases.map { Render.view($0, of: c, region: region) }
    }

    /// The bytes of `view`; nil when these credentials have none (or for `status`).
    public func bytes(of view: CredentialView) -> [UInt8]? {
        CredentialView.allCases.firstIndex(of: view).flatMap { table[$0] }
    }

    // Shorthands (the `get` command, tests).
    public var credentials: [UInt8] { bytes(of: .credentials) ?? [] }
    public var accessKeyId: [UInt8] { bytes(of: .accessKeyId) ?? [] }
    public var accessKeySecret: [UInt8] { bytes(of: .accessKeySecret) ?? [] }
    public var token: [UInt8]? { bytes(of: .token) }
    public var expiration: [UInt8]? { bytes(of: .expiration) }
    public var env: [UInt8] { bytes(of: .env) ?? [] }
    public var configJSON: [UInt8] { bytes(of: .configJSON) ?? [] }
}

extension Render {
    /// The one renderer of the credential views: the bytes of `view` for `c`, nil when `c`
    /// has none (`token` of a key pair, `expiration` of a set that never expires) and for
    /// `status` (rendered from a status snapshot, ``statusFile(_:)``).
    public static func view(_ view: CredentialView, of c: Credentials, region: String) -> [UInt8]? {
        switch view {
        case .credentials: credentialsFile(c)
        case .accessKeyId: Array(c.accessKeyId.utf8)
        case .accessKeySecret: Array(c.accessKeySecret.utf8)
        case .token: c.securityToken.map { Array($0.utf8) }
        case .expiration: expirationFile(c)
        case .env: envFile(c)
        case .configJSON: cliConfig(c, region: region)
        case .status: nil
        }
    }
}

extension Render {
    /// `export ALIBABA_CLOUD_…='…'` lines, single-quoted so any value is safe to `source`.
    public static func envFile(_ c: Credentials) -> [UInt8] {
        func quoted(_ s: String) -> String {
            "'" + s.replacing("'", with: "'\\''") + "'"
        }
        var lines = [
            "export \(CloudVariable.accessKeyId)=\(quoted(c.accessKeyId))",
            "export \(CloudVariable.accessKeySecret)=\(quoted(c.accessKeySecret))",
        ]
        if let token = c.securityToken {
            lines.append("export \(CloudVariable.securityToken)=\(quoted(token))")
        }
        return Array((lines.joined(separator: "\n") + "\n").utf8)
    }

    /// An `aliyun` CLI configuration with one profile, `default`: `StsToken` mode, or `AK`
    /// for a key pair without a token.
    public static func cliConfig(_ c: Credentials, region: String) -> [UInt8] {
        var profile = [
            ("name", "default"),
            ("mode", c.securityToken == nil ? "AK" : "StsToken"),
            ("access_key_id", c.accessKeyId),
            ("access_key_secret", c.accessKeySecret),
        ]
        if let token = c.securityToken { profile.append(("sts_token", token)) }
        profile.append(("region_id", region))
        let fields = profile.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",")
        return Array(("{\"current\":\"default\",\"profiles\":[{" + fields + "}]}\n").utf8)
    }

    /// The `aliyun` CLI "External" process answer.
    public static func processOutput(_ c: Credentials) -> [UInt8] {
        var fields = [
            ("mode", c.securityToken == nil ? "AK" : "StsToken"),
            ("access_key_id", c.accessKeyId),
            ("access_key_secret", c.accessKeySecret),
        ]
        if let token = c.securityToken { fields.append(("sts_token", token)) }
        if let exp = c.expiration { fields.append(("expiration", Timestamp.format(exp))) }
        let body = fields.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",")
        return Array(("{" + body + "}\n").utf8)
    }
}
