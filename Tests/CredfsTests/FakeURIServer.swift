import Foundation

/// A credentials URI on 127.0.0.1 (`GET /credentials`, the flat
/// `{"Code":"Success","AccessKeyId",…}` layout) on ``FakeHTTPServer``, with every fault of
/// the chaos matrix. Hands out ``FakeGenerations`` (FakeCredentialServer's values), or one
/// fixed set when it stands in as the source that signs AssumeRole.
final class FakeURIServer: FakeUpstream {
    struct State: ChaosState {
        var credentials: FakeGenerations
        var chaos: Chaos?
        /// Serve this set instead of the rotating generations.
        var fixed: (id: String, secret: String, token: String, expiration: String)?
        var requests = 0
    }

    let state: Locked<State>
    let http: FakeHTTPServer

    init(lifetime: TimeInterval = 3600) {
        (state, http) = Self.serving(State(credentials: FakeGenerations(lifetime: lifetime)))
    }

    var url: String { http.baseURL + "/credentials" }
    var requests: Int { state.withLock { $0.requests } }

    static func answer(_ request: FakeRequest, _ state: Locked<State>) -> FakeReply {
        state.withLock { s -> FakeReply in
            s.requests += 1
            guard request.method == "GET", request.path == "/credentials" else {
                return .respond(status: 404, body: #"{"Code":"NotFound","Message":"no such path"}"#)
            }
            let (id, secret, token, expiration) = s.fixed ?? s.credentials.current()
            func body(
                code: String = "Success", id: String = id, token: String = token, expiration: String = expiration,
                pad: String = ""
            ) -> String {
                """
                {"Code":"\(code)","AccessKeyId":"\(id)","AccessKeySecret":"\(secret)",\
                "SecurityToken":"\(token)","Expiration":"\(expiration)"\
                \(pad.isEmpty ? "" : ",\"Padding\":\"\(pad)\"")}
                """
            }
            guard let chaos = s.chaos else { return .respond(status: 200, body: body()) }
            return chaos.reply(
                failure: .respond(status: 500, body: #"{"Code":"InternalError","Message":"fake URI is failing"}"#),
                refusal: #"{"Code":"Failure","Message":"fake says no"}"#, notJSON: "<html>not json</html>"
            ) { o in
                body(id: o.id ?? id, token: o.token ?? token, expiration: o.expiration ?? expiration, pad: o.pad)
            }
        }
    }
}
