import Foundation
import Synchronization

/// A credentials-URI server on 127.0.0.1 that speaks the real protocol over real HTTP
/// and can be told to rotate, fail or hang. Generation `n` has recognisable values
/// (`STS.FAKE<n>…`, `secret-<n>-…`, `token-<n>-…`) so a reader can tell generations apart.
final class FakeCredentialServer: FakeUpstream {
    enum Behaviour: Sendable, Equatable {
        /// 200 with the current generation.
        case serve
        /// An HTTP error status with a JSON Code/Message body.
        case status(Int)
        /// 200 with a body that is not JSON.
        case notJSON
        /// Accept the request and never answer.
        case hang
    }

    struct State {
        var generation = 1
        var behaviour = Behaviour.serve
        var requests = 0
        var rotateOnEachRequest = false
        var lifetime: TimeInterval
        var expiration: Date?
        /// The fake's clock minus the local clock: its `Date` header and the Expiration it
        /// hands out follow it (nil: no `Date` header, local clock).
        var clockOffset: TimeInterval?
    }

    let state: Locked<State>
    let http: FakeHTTPServer

    init(lifetime: TimeInterval = 3600, rotateOnEachRequest: Bool = false, clockOffset: TimeInterval? = nil) {
        (state, http) = Self.serving(
            State(rotateOnEachRequest: rotateOnEachRequest, lifetime: lifetime, clockOffset: clockOffset),
            dateOffset: clockOffset)
    }

    var port: Int { http.port }
    var url: String { "http://127.0.0.1:\(port)/credentials" }
    var requests: Int { state.withLock { $0.requests } }
    var generation: Int { state.withLock { $0.generation } }

    func setBehaviour(_ behaviour: Behaviour) { state.withLock { $0.behaviour = behaviour } }

    /// The next request gets new credentials.
    func rotate() {
        state.withLock {
            $0.generation += 1
            $0.expiration = nil
        }
    }

    static func accessKeyId(_ generation: Int) -> String {
        "STS.FAKE\(generation)x" + String(repeating: "A", count: 12)
    }
    static func secret(_ generation: Int) -> String {
        "secret-\(generation)-" + String(repeating: "s", count: 20)
    }
    static func token(_ generation: Int) -> String {
        "token-\(generation)-" + String(repeating: "t", count: 60)
    }

    /// The generation number encoded in an AccessKeyId, secret or token of this server.
    static func generation(of value: String) -> Int? {
        for prefix in ["STS.FAKE", "secret-", "token-"] where value.hasPrefix(prefix) {
            let digits = value.dropFirst(prefix.count).prefix { $0.isNumber }
            return Int(digits)
        }
        return nil
    }

    /// Decides the answer to one request (any path, any method).
    static func answer(_ request: FakeRequest, _ state: Locked<State>) -> FakeReply {
        state.withLock { s in
            s.requests += 1
            switch s.behaviour {
            case .hang: return .hang
            case .notJSON: return .respond(status: 200, body: "<html>not json</html>")
            case .status(let code):
                return .respond(status: code, body: #"{"Code":"InternalError","Message":"fake upstream is failing"}"#)
            case .serve:
                if s.rotateOnEachRequest, s.expiration != nil {
                    s.generation += 1
                    s.expiration = nil
                }
                if s.expiration == nil {
                    s.expiration = Date(
                        timeIntervalSince1970: (Date().timeIntervalSince1970 + (s.clockOffset ?? 0) + s.lifetime)
                            .rounded(.down))
                }
                let g = s.generation
                let expiration = ISO8601DateFormatter().string(from: s.expiration!)
                let body = """
                    {"Code":"Success","AccessKeyId":"\(Self.accessKeyId(g))","AccessKeySecret":"\(Self.secret(g))",\
                    "SecurityToken":"\(Self.token(g))","Expiration":"\(expiration)"}
                    """
                return .respond(status: 200, body: body)
            }
        }
    }
}
