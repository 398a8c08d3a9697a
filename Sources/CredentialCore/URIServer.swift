import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// `--serve-uri`: answers `GET /` on a loopback address with the credentials-URI JSON from
/// the refresher's cache (SPEC section 7), so SDKs configured with
/// `ALIBABA_CLOUD_CREDENTIALS_URI` share one refresher with the files. Never waits, never
/// causes an upstream request; 503 with a JSON Code/Message while nothing valid is held.
public final class CredentialsURIServer: Sendable {
    let refresher: Refresher
    let channel: any Channel

    /// Binds `host:port`. Throws a ``CredentialError`` naming the address if it cannot.
    public static func bind(host: String, port: Int, refresher: Refresher) async throws
        -> CredentialsURIServer
    {
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(refresher: refresher))
                }
            }
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            return CredentialsURIServer(refresher: refresher, channel: channel)
        } catch {
            let reason = (error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(error)"
            throw CredentialError("cannot listen on \(host):\(port): \(reason)")
        }
    }

    init(refresher: Refresher, channel: any Channel) {
        self.refresher = refresher
        self.channel = channel
    }

    /// The port actually bound (useful with port 0).
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// Serves until ``close()``.
    public func waitUntilClosed() async {
        try? await channel.closeFuture.get()
    }

    public func close() async {
        try? await channel.close()
    }

    /// The answer to one request: status and JSON body.
    static func answer(method: HTTPMethod, path: String, refresher: Refresher) -> (
        HTTPResponseStatus, [UInt8]
    ) {
        func error(_ code: String, _ message: String) -> [UInt8] {
            Array(
                "{\"Code\":\(Render.jsonString(code)),\"Message\":\(Render.jsonString(message))}\n".utf8)
        }
        guard path == "/" || path.hasPrefix("/?") else {
            return (.notFound, error("NotFound", "only GET / is served"))
        }
        guard method == .GET else {
            return (.methodNotAllowed, error("MethodNotAllowed", "only GET / is served"))
        }
        guard let published = refresher.serving() else {
            let state = refresher.machine.state(at: Date()).rawValue
            return (
                .serviceUnavailable,
                error("CredentialsUnavailable", "no valid credentials (state \(state))")
            )
        }
        return (.ok, Render.uriAnswer(published.credentials))
    }

    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let refresher: Refresher
        init(refresher: Refresher) { self.refresher = refresher }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            // Only the head matters; the answer goes out at the end of the request.
            switch unwrapInboundIn(data) {
            case .head(let head):
                let (status, body) = CredentialsURIServer.answer(
                    method: head.method, path: head.uri, refresher: refresher)
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: String(body.count))
                headers.add(name: "Cache-Control", value: "no-store")
                let keepAlive = head.isKeepAlive
                if !keepAlive { headers.add(name: "Connection", value: "close") }
                context.write(
                    wrapOutboundOut(
                        .head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
                    promise: nil)
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                    if !keepAlive { context.close(promise: nil) }
                }
            case .body, .end:
                break
            }
        }
    }
}

extension Render {
    /// The credentials-URI answer: `{"Code":"Success","AccessKeyId",…,"Expiration"}`.
    public static func uriAnswer(_ c: Credentials) -> [UInt8] {
        var fields = [
            ("Code", "Success"), ("AccessKeyId", c.accessKeyId), ("AccessKeySecret", c.accessKeySecret),
        ]
        if let token = c.securityToken { fields.append(("SecurityToken", token)) }
        if let exp = c.expiration { fields.append(("Expiration", Timestamp.format(exp))) }
        let body = fields.map { "\(jsonString($0.0)):\(jsonString($0.1))" }.joined(separator: ",")
        return Array(("{" + body + "}\n").utf8)
    }
}
