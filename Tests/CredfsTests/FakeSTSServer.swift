import Foundation

/// STS on 127.0.0.1, plain HTTP: answers AssumeRoleWithOIDC (RPC style, parameters in the
/// query and the form body) with rotating credentials in STS's own layout, checks the
/// request, and can be told to refuse (STS Code/Message) or misbehave (the chaos matrix).
final class FakeSTSServer: FakeUpstream {
    struct Seen: Sendable {
        var method: String
        var query: [String: String]
        var form: [String: String]
        var rawQuery: String
    }

    struct State: ChaosState {
        var credentials: FakeGenerations
        var chaos: Chaos?
        /// Answer with this STS error (status, Code, Message).
        var refuse: (Int, String, String)?
        /// The OIDC token STS accepts; nil accepts any.
        var acceptedToken: String?
        var seen: [Seen] = []
    }

    let state: Locked<State>
    let http: FakeHTTPServer

    init(lifetime: TimeInterval = 3600) {
        (state, http) = Self.serving(State(credentials: FakeGenerations(lifetime: lifetime)))
    }

    var requests: Int { read { $0.seen.count } }

    static func error(_ status: Int, _ code: String, _ message: String) -> FakeReply {
        .respond(
            status: status,
            body:
                #"{"RequestId":"FAKE-REQUEST-1","HostId":"sts.aliyuncs.com","Code":"\#(code)","Message":"\#(message)"}"#
        )
    }

    static func answer(_ request: FakeRequest, _ state: Locked<State>) -> FakeReply {
        state.withLock { s -> FakeReply in
            let form = request.form
            s.seen.append(Seen(method: request.method, query: request.query, form: form, rawQuery: ""))
            // Every parameter STS needs, where the SDKs put it.
            guard request.method == "POST", request.path == "/",
                request.header("Content-Type")?.hasPrefix("application/x-www-form-urlencoded") == true
            else { return error(400, "InvalidRequest", "expected a form POST to /") }
            guard request.query["Action"] == "AssumeRoleWithOIDC",
                request.query["Version"] == "2015-04-01",
                request.query["Format"] == "JSON", request.query["Timestamp"] != nil
            else { return error(400, "InvalidAction.NotFound", "bad Action/Version/Format") }
            guard request.query["OIDCToken"] == nil else {
                return error(400, "Leak", "OIDCToken in the URL")
            }
            guard let token = form["OIDCToken"], !token.isEmpty, form["RoleArn"] != nil,
                form["OIDCProviderArn"] != nil, form["RoleSessionName"] != nil,
                let duration = form["DurationSeconds"].flatMap(Int.init), duration >= 900
            else { return error(400, "MissingParameter", "a required parameter is missing") }
            if let refuse = s.refuse { return error(refuse.0, refuse.1, refuse.2) }
            if let accepted = s.acceptedToken, token != accepted {
                return error(
                    400, "AuthenticationFail.OIDCToken.Invalid", "the OIDC token is invalid or expired")
            }
            let (id, secret, sts, expiration) = s.credentials.current()
            func body(
                id: String = id, token: String = sts, expiration: String = expiration, pad: String = ""
            ) -> String {
                """
                {"RequestId":"FAKE-REQUEST-2","AssumedRoleUser":{"AssumedRoleId":"3000:\(form["RoleSessionName"]!)",\
                "Arn":"\(form["RoleArn"]!)/\(form["RoleSessionName"]!)"},"SourceIdentity":"x",\
                "OIDCTokenInfo":{"Subject":"system:serviceaccount:ns:sa","Issuer":"https://oidc"},\
                "Credentials":{"SecurityToken":"\(token)","AccessKeyId":"\(id)","AccessKeySecret":"\(secret)",\
                "Expiration":"\(expiration)"}\(pad.isEmpty ? "" : ",\"Padding\":\"\(pad)\"")}
                """
            }
            guard let chaos = s.chaos else { return .respond(status: 200, body: body()) }
            return chaos.reply(
                failure: error(500, "InternalError", "fake STS is failing"),
                refusal: #"{"RequestId":"R","Code":"Failure","Message":"fake says no"}"#, notJSON: "<html>sts</html>"
            ) { o in
                body(id: o.id ?? id, token: o.token ?? sts, expiration: o.expiration ?? expiration, pad: o.pad)
            }
        }
    }
}
