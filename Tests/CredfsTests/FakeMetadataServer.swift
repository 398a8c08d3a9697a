import Foundation
import Synchronization

/// An ECS metadata service on 127.0.0.1 that speaks the real protocol: IMDSv2 tokens
/// (`PUT /latest/api/token`), role discovery and the role's credentials, with counters
/// for every kind of request and a chaos switch on the credentials answer.
final class FakeMetadataServer: FakeUpstream {
    enum TokenMode: Sendable, Equatable {
        /// Tokens are issued; requests without a valid one get 401.
        case required
        /// Tokens are issued; requests without one are answered too.
        case optional
        /// The token endpoint answers this status; requests without a token are answered.
        case broken(Int)
        /// The token endpoint accepts and never answers; requests without a token are answered.
        case hangs
    }

    struct State: ChaosState {
        var tokenMode = TokenMode.required
        var role = "EcsRamRoleTest"
        var chaos: Chaos?
        var credentials: FakeGenerations
        var issued: [String] = []
        var tokenPuts = 0
        var ttlHeaders: [String] = []
        var roleListGets = 0
        var credentialGets = 0
        var tokenlessGets = 0
        var rejectedTokens = 0
        var requestedRoles: [String] = []
    }

    let state: Locked<State>
    let http: FakeHTTPServer

    init(lifetime: TimeInterval = 3600, tokenMode: TokenMode = .required) {
        (state, http) = Self.serving(State(tokenMode: tokenMode, credentials: FakeGenerations(lifetime: lifetime)))
    }

    var requests: Int { read { $0.tokenPuts + $0.roleListGets + $0.credentialGets } }

    static let prefix = "/latest/meta-data/ram/security-credentials/"

    static func answer(_ request: FakeRequest, _ state: Locked<State>) -> FakeReply {
        state.withLock { s -> FakeReply in
            if request.path == "/latest/api/token" {
                guard request.method == "PUT" else { return .respond(status: 405, body: "") }
                s.tokenPuts += 1
                s.ttlHeaders.append(request.header("X-aliyun-ecs-metadata-token-ttl-seconds") ?? "")
                switch s.tokenMode {
                case .broken(let status): return .respond(status: status, body: "token endpoint broken")
                case .hangs: return .hang
                case .required, .optional:
                    guard request.header("X-aliyun-ecs-metadata-token-ttl-seconds") != nil else {
                        return .respond(status: 400, body: "missing ttl")
                    }
                    let token = "imds-token-\(s.issued.count + 1)-" + String(repeating: "k", count: 20)
                    s.issued.append(token)
                    return .respond(status: 200, body: token)
                }
            }
            guard request.method == "GET", request.path.hasPrefix(prefix) else {
                return .respond(status: 404, body: "not found")
            }
            let token = request.header("X-aliyun-ecs-metadata-token")
            if token == nil { s.tokenlessGets += 1 }
            let role = String(request.path.dropFirst(prefix.count))
            if role.isEmpty { s.roleListGets += 1 } else { s.credentialGets += 1 }
            if let token, !s.issued.contains(token) {
                s.rejectedTokens += 1
                return .respond(status: 401, body: "invalid token")
            }
            if token == nil, s.tokenMode == .required {
                s.rejectedTokens += 1
                return .respond(status: 401, body: "token required")
            }
            if role.isEmpty { return .respond(status: 200, body: s.role) }
            s.requestedRoles.append(role)
            guard role == s.role else { return .respond(status: 404, body: "no such role") }
            let (id, secret, sts, expiration) = s.credentials.current()
            func body(
                id: String = id, token: String = sts, expiration: String = expiration,
                code: String = "Success", pad: String = ""
            )
                -> String
            {
                """
                {"AccessKeyId":"\(id)","AccessKeySecret":"\(secret)","Expiration":"\(expiration)",\
                "SecurityToken":"\(token)","LastUpdated":"\(ISO8601DateFormatter().string(from: Date()))",\
                "Code":"\(code)"\(pad.isEmpty ? "" : ",\"Padding\":\"\(pad)\"")}
                """
            }
            guard let chaos = s.chaos else { return .respond(status: 200, body: body()) }
            return chaos.reply(
                failure: .respond(status: 500, body: #"{"Code":"InternalError","Message":"fake metadata is failing"}"#),
                refusal: #"{"Code":"Failure","Message":"fake says no"}"#, notJSON: "<html>metadata</html>"
            ) { o in
                body(id: o.id ?? id, token: o.token ?? sts, expiration: o.expiration ?? expiration, pad: o.pad)
            }
        }
    }
}
