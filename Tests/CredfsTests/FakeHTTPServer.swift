import CredentialCore
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// One request as a fake upstream saw it.
struct FakeRequest: Sendable {
    var method: String
    var path: String
    var query: [String: String]
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }

    /// `a=b&c=d`, percent-decoded (`+` is a space, as in forms).
    static func decodeForm(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            func decode(_ s: String) -> String {
                s.replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? s
            }
            out[decode(parts[0])] = parts.count > 1 ? decode(parts[1]) : ""
        }
        return out
    }

    var form: [String: String] { Self.decodeForm(String(decoding: body, as: UTF8.self)) }
}

/// How a fake answers one request.
enum FakeReply: Sendable {
    case respond(status: Int, body: String)
    /// Accept the request and never answer.
    case hang
    /// Announce the whole body (Content-Length), send half of it, close the connection.
    case closeMidAnswer(status: Int, body: String)
}

/// A plain HTTP/1.1 server on 127.0.0.1 whose every answer comes from `handler`.
final class FakeHTTPServer: Sendable {
    let handler: @Sendable (FakeRequest) -> FakeReply
    /// When set, every answer carries a `Date` header this far from the local clock (the
    /// fake's own clock), as real upstreams send theirs.
    let dateOffset: TimeInterval?
    private let channel: Mutex<Channel?> = Mutex(nil)

    init(dateOffset: TimeInterval? = nil, handler: @escaping @Sendable (FakeRequest) -> FakeReply) {
        self.handler = handler
        self.dateOffset = dateOffset
    }

    var port: Int { channel.withLock { $0?.localAddress?.port ?? 0 } }
    var baseURL: String { "http://127.0.0.1:\(port)" }

    func start() async throws {
        _ = ignoringSIGPIPE
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(server: self))
                }
            }
        let bound = try await bootstrap.bind(host: "127.0.0.1", port: 0).get()
        channel.withLock { $0 = bound }
        FakeScope.current?.add(self)
    }

    func stop() async {
        let bound = channel.withLock { c -> Channel? in
            defer { c = nil }
            return c
        }
        try? await bound?.close()
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let server: FakeHTTPServer
        var head: HTTPRequestHead?
        var body: [UInt8] = []
        init(server: FakeHTTPServer) { self.server = server }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h):
                head = h
                body = []
            case .body(var buffer):
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                guard let head else { return }
                let parts = head.uri.split(separator: "?", maxSplits: 1).map(String.init)
                let request = FakeRequest(
                    method: head.method.rawValue, path: parts.first ?? "/",
                    query: parts.count > 1 ? FakeRequest.decodeForm(parts[1]) : [:],
                    headers: head.headers.map { ($0.name, $0.value) }, body: body)
                switch server.handler(request) {
                case .hang:
                    return
                case .respond(let status, let text):
                    write(
                        context: context, status: status, announced: text.utf8.count, bytes: Array(text.utf8))
                    context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
                case .closeMidAnswer(let status, let text):
                    let bytes = Array(text.utf8)
                    write(
                        context: context, status: status, announced: bytes.count,
                        bytes: Array(bytes.prefix(bytes.count / 2)))
                    context.flush()
                    context.close(promise: nil)
                }
            }
        }

        func write(context: ChannelHandlerContext, status: Int, announced: Int, bytes: [UInt8]) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "application/json")
            headers.add(name: "Content-Length", value: String(announced))
            if let offset = server.dateOffset {
                headers.add(name: "Date", value: HTTPDate.format(Date().addingTimeInterval(offset)))
            }
            let head = HTTPResponseHead(
                version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: bytes)))), promise: nil)
        }
    }
}

/// The faults every network source must survive (issue 3's chaos matrix).
enum Chaos: String, Sendable, CaseIterable {
    case http500, notJSON, codeNotSuccess, hang, closedMidAnswer, expired, emptySecurityToken,
        over64KiB

    /// What `status.lastError` must say for it (any one of these).
    var expectedError: [String] {
        switch self {
        case .http500: return ["HTTP 500"]
        case .notJSON: return ["not a JSON"]
        case .codeNotSuccess: return ["Failure", "fake says no"]
        case .hang: return ["timed out", "no answer in time"]
        case .closedMidAnswer: return ["closed", "connection", "EOF", "eof"]
        case .expired: return ["already expired"]
        case .emptySecurityToken: return ["empty SecurityToken"]
        case .over64KiB: return ["larger than 64 KiB"]
        }
    }
}

/// A rotating set of recognisable fake credentials, as the fakes hand them out:
/// generation `n` has `STS.FAKE<n>…`, `secret-<n>-…`, `token-<n>-…` (FakeCredentialServer's values).
struct FakeGenerations {
    var generation = 1
    var lifetime: TimeInterval
    var expiration: Date?

    mutating func current() -> (id: String, secret: String, token: String, expiration: String) {
        if expiration == nil {
            expiration = Date(
                timeIntervalSince1970: (Date().timeIntervalSince1970 + lifetime).rounded(.down))
        }
        let g = generation
        return (
            FakeCredentialServer.accessKeyId(g), FakeCredentialServer.secret(g),
            FakeCredentialServer.token(g),
            ISO8601DateFormatter().string(from: expiration!)
        )
    }

    mutating func rotate() {
        generation += 1
        expiration = nil
    }
}

/// A lock around a fake's state that a handler closure can hold.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    func withLock<T>(_ body: (inout Value) -> T) -> T { mutex.withLock { body(&$0) } }
}

/// What a fake changes in a good answer to make a faulty one.
struct AnswerOverrides {
    var id: String?
    var token: String?
    var expiration: String?
    var pad = ""
}

extension Chaos {
    /// The reply of a fake that suffers this fault. `body` renders the fake's good answer
    /// with `overrides` applied; `failure` is its HTTP 500 answer, `refusal` its
    /// Code-not-Success body and `notJSON` its non-JSON body.
    func reply(
        failure: FakeReply, refusal: String, notJSON: String, body: (AnswerOverrides) -> String
    ) -> FakeReply {
        switch self {
        case .http500: return failure
        case .notJSON: return .respond(status: 200, body: notJSON)
        case .codeNotSuccess: return .respond(status: 200, body: refusal)
        case .hang: return .hang
        case .closedMidAnswer: return .closeMidAnswer(status: 200, body: body(AnswerOverrides()))
        case .expired:
            return .respond(
                status: 200,
                body: body(AnswerOverrides(id: "STS.EXPIREDxxxxxxxxxx", expiration: "2020-01-01T00:00:00Z")))
        case .emptySecurityToken:
            return .respond(status: 200, body: body(AnswerOverrides(id: "STS.NOTOKENxxxxxxxxxx", token: "")))
        case .over64KiB:
            return .respond(
                status: 200,
                body: body(AnswerOverrides(id: "STS.HUGExxxxxxxxxxxxx", pad: String(repeating: "p", count: 70_000))))
        }
    }
}
