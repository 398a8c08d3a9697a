import FoundationEssentials
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `--serve-uri`: answers `GET /` on a loopback address with the credentials-URI JSON from
/// the refresher's cache (SPEC section 7), so SDKs configured with
/// `ALIBABA_CLOUD_CREDENTIALS_URI` share one refresher with the files. Never waits, never
/// causes an upstream request; 503 with a JSON Code/Message while nothing valid is held.
///
/// Every local user (and everything in the host's network namespace) can connect, so this
/// is as open as a 0444 `credentials` file. What it refuses: a `Host` other than the
/// loopback literal it listens on or `localhost` with its port (DNS rebinding), any request
/// with an `Origin` (a browser page), more than ``maxConnections`` connections, a
/// connection idle for ``idleTimeout``, and a request head over ``maxRequestBytes``.
public final class CredentialsURIServer: Sendable {
    let refresher: Refresher
    let channel: any Channel

    public static let maxConnections = 64
    public static let idleTimeout: TimeAmount = .seconds(10)
    public static let maxRequestBytes = 16 * 1024

    /// Binds `host:port`. Throws a ``CredentialError`` naming the address if it cannot.
    public static func bind(host: String, port: Int, refresher: Refresher) async throws
        -> CredentialsURIServer
    {
        let open = Counter()
        let hosts = HostCheck(listening: host)
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                if open.value.add(1, ordering: .relaxed).oldValue >= maxConnections {
                    open.value.subtract(1, ordering: .relaxed)
                    return channel.close()
                }
                channel.closeFuture.whenComplete { _ in open.value.subtract(1, ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    let limit = RequestSizeLimit()
                    try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: idleTimeout))
                    try channel.pipeline.syncOperations.addHandler(limit)
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        Handler(refresher: refresher, hosts: hosts, limit: limit))
                }
            }
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            hosts.port.value.store(channel.localAddress?.port ?? port, ordering: .relaxed)
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
    static func answer(
        method: HTTPMethod, path: String, headers: HTTPHeaders = HTTPHeaders(), hosts: HostCheck? = nil,
        refresher: Refresher
    ) -> (HTTPResponseStatus, [UInt8]) {
        func error(_ code: String, _ message: String) -> [UInt8] {
            Array(
                "{\"Code\":\(Render.jsonString(code)),\"Message\":\(Render.jsonString(message))}\n".utf8)
        }
        if headers.contains(name: "Origin") {
            return (.forbidden, error("Forbidden", "requests from a web page are refused"))
        }
        if let hosts, !hosts.accepts(headers["Host"]) {
            return (.forbidden, error("Forbidden", "Host must be this loopback address or localhost"))
        }
        guard path == "/" || path.hasPrefix("/?") else {
            return (.notFound, error("NotFound", "only GET / is served"))
        }
        guard method == .GET else {
            return (.methodNotAllowed, error("MethodNotAllowed", "only GET / is served"))
        }
        guard let published = refresher.serving() else {
            let state = refresher.status(mountedAt: refresher.clock.now(), version: "").state.rawValue
            return (
                .serviceUnavailable,
                error("CredentialsUnavailable", "no valid credentials (state \(state))")
            )
        }
        return (.ok, Render.uriAnswer(published.credentials))
    }

    /// A number shared between event loops.
    final class Counter: Sendable {
        let value = Atomic<Int>(0)
    }

    /// The `Host` values a request may carry: the literal the server listens on, or
    /// `localhost`, each bare or with the bound port.
    final class HostCheck: Sendable {
        let literal: String
        let port = Counter()
        init(listening host: String) { literal = host.contains(":") ? "[\(host)]" : host }

        func accepts(_ values: [String]) -> Bool {
            guard values.count == 1, let value = values.first?.lowercased() else { return false }
            let port = self.port.value.load(ordering: .relaxed)
            // The official Python SDK sends the host without its port.
            return [literal, "localhost", "\(literal):\(port)", "localhost:\(port)"].contains(value)
        }
    }

    /// Closes a connection whose request head grows past ``maxRequestBytes``; counts from
    /// the last answer, so a kept-alive connection may ask again.
    final class RequestSizeLimit: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        var received = 0

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytes
            guard received <= CredentialsURIServer.maxRequestBytes else {
                context.close(promise: nil)
                return
            }
            context.fireChannelRead(data)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is IdleStateHandler.IdleStateEvent {
                context.close(promise: nil)
                return
            }
            context.fireUserInboundEventTriggered(event)
        }
    }

    final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let refresher: Refresher
        let hosts: HostCheck
        let limit: RequestSizeLimit
        init(refresher: Refresher, hosts: HostCheck, limit: RequestSizeLimit) {
            self.refresher = refresher
            self.hosts = hosts
            self.limit = limit
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            // Only the head matters; the answer goes out at the end of the request.
            switch unwrapInboundIn(data) {
            case .head(let head):
                let (status, body) = CredentialsURIServer.answer(
                    method: head.method, path: head.uri, headers: head.headers, hosts: hosts, refresher: refresher)
                var headers = HTTPHeaders()
                headers.add(name: "Content-Type", value: "application/json")
                headers.add(name: "Content-Length", value: String(body.count))
                headers.add(name: "Cache-Control", value: "no-store")
                let keepAlive = head.isKeepAlive && status == .ok
                if !keepAlive { headers.add(name: "Connection", value: "close") }
                limit.received = 0
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

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // A malformed request: no answer is owed, the connection just ends.
            context.close(promise: nil)
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
