import Foundation

/// STS AssumeRole on 127.0.0.1, plain HTTP. Every request is checked as STS checks it:
/// a GET to `/` with the RPC common parameters, a known AccessKeyId, the SecurityToken
/// that belongs to it (if any), a fresh SignatureNonce, a Timestamp within 15 minutes,
/// and a `Signature` that ``ReferenceRPCSigner`` (the tests' own HMAC-SHA1) recomputes.
/// Good requests get rotating credentials (`FakeCredentialServer`'s values) in STS's
/// layout; the fake can also refuse (Code/Message) or misbehave (the chaos matrix).
final class FakeAssumeRoleServer: FakeUpstream {
    /// A key STS knows: its secret, and the SecurityToken that must come with it.
    struct Key: Sendable {
        var secret: String
        var token: String?
    }

    struct Seen: Sendable {
        var method: String
        var query: [String: String]
        /// nil when the request passed every check, else the Code it got.
        var rejected: String?
    }

    struct State: ChaosState {
        var credentials: FakeGenerations
        var keys: [String: Key]
        var chaos: Chaos?
        /// Answer good requests with this STS error (status, Code, Message).
        var refuse: (Int, String, String)?
        var nonces: Set<String> = []
        var seen: [Seen] = []
    }

    let state: Locked<State>
    let http: FakeHTTPServer

    init(keys: [String: Key], lifetime: TimeInterval = 3600) {
        (state, http) = Self.serving(State(credentials: FakeGenerations(lifetime: lifetime), keys: keys))
    }

    var requests: Int { read { $0.seen.count } }
    /// Requests whose signature and parameters passed.
    var verified: Int { read { $0.seen.filter { $0.rejected == nil }.count } }

    static func answer(_ request: FakeRequest, _ state: Locked<State>) -> FakeReply {
        state.withLock { s -> FakeReply in
            let q = request.query
            s.seen.append(Seen(method: request.method, query: q, rejected: nil))
            func reject(_ status: Int, _ code: String, _ message: String) -> FakeReply {
                s.seen[s.seen.count - 1].rejected = code
                return FakeSTSServer.error(status, code, message)
            }
            guard request.method == "GET", request.path == "/" else {
                return reject(400, "InvalidRequest", "expected a GET to /")
            }
            guard q["Action"] == "AssumeRole", q["Version"] == "2015-04-01", q["Format"] == "JSON" else {
                return reject(400, "InvalidAction.NotFound", "bad Action/Version/Format")
            }
            guard q["SignatureMethod"] == "HMAC-SHA1", q["SignatureVersion"] == "1.0" else {
                return reject(400, "InvalidSignatureMethod", "bad SignatureMethod/SignatureVersion")
            }
            guard let stamp = q["Timestamp"], let time = ISO8601DateFormatter().date(from: stamp),
                stamp.hasSuffix("Z"), stamp.count == 20, abs(time.timeIntervalSinceNow) < 900
            else { return reject(400, "InvalidTimeStamp.Format", "bad or stale Timestamp") }
            guard let nonce = q["SignatureNonce"], !nonce.isEmpty else {
                return reject(400, "MissingSignatureNonce", "SignatureNonce is mandatory")
            }
            guard s.nonces.insert(nonce).inserted else {
                return reject(400, "SignatureNonceUsed", "The request signature nonce has been used.")
            }
            guard let id = q["AccessKeyId"], let key = s.keys[id] else {
                return reject(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
            }
            guard q["SecurityToken"] == key.token else {
                return reject(
                    400,
                    key.token == nil ? "InvalidSecurityToken.MismatchWithAccessKey" : "InvalidSecurityToken.Malformed",
                    "Specified SecurityToken is not valid for this access key.")
            }
            let expected = ReferenceRPCSigner.signature(q, secret: key.secret)
            guard q["Signature"] == expected else {
                // As STS says it, string to sign included: credfs must not copy it out.
                return reject(
                    400, "SignatureDoesNotMatch",
                    "Specified signature is not matched with our calculation. server string to sign is:"
                        + ReferenceRPCSigner.stringToSign(q))
            }
            guard let role = q["RoleArn"], !role.isEmpty, let session = q["RoleSessionName"], !session.isEmpty,
                let duration = q["DurationSeconds"].flatMap(Int.init), duration >= 900
            else { return reject(400, "MissingParameter", "a required parameter is missing") }
            if let refuse = s.refuse { return reject(refuse.0, refuse.1, refuse.2) }

            let (newId, secret, token, expiration) = s.credentials.current()
            func body(
                id: String = newId, token: String = token, expiration: String = expiration, pad: String = ""
            ) -> String {
                """
                {"RequestId":"FAKE-ASSUME-\(s.seen.count)","AssumedRoleUser":{"AssumedRoleId":"3000:\(session)",\
                "Arn":"\(role)/\(session)"},\
                "Credentials":{"SecurityToken":"\(token)","AccessKeyId":"\(id)","AccessKeySecret":"\(secret)",\
                "Expiration":"\(expiration)"}\(pad.isEmpty ? "" : ",\"Padding\":\"\(pad)\"")}
                """
            }
            guard let chaos = s.chaos else { return .respond(status: 200, body: body()) }
            return chaos.reply(
                failure: FakeSTSServer.error(500, "InternalError", "fake STS is failing"),
                refusal: #"{"RequestId":"R","Code":"Failure","Message":"fake says no"}"#, notJSON: "<html>sts</html>"
            ) { o in
                body(id: o.id ?? newId, token: o.token ?? token, expiration: o.expiration ?? expiration, pad: o.pad)
            }
        }
    }
}
