import FoundationEssentials
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `--metrics HOST:PORT`: answers `GET /metrics` with the Prometheus text exposition that
/// `render` produces (``Render/metrics(_:pinnedGroups:)`` of the current status snapshot).
///
/// It holds no secret, so it may listen on any address (a Prometheus server usually scrapes
/// from another host); it never causes an upstream request, answers only `GET`/`HEAD` of
/// `/metrics`, keeps at most ``maxConnections`` connections and closes one that sends
/// nothing for ``idleTimeout``. HTTP parsing is SwiftNIO's.
public final class MetricsServer: Sendable {
    public static let maxConnections = 32
    public static let idleTimeout = TimeAmount.seconds(10)
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    let channel: any Channel

    /// Binds `host:port`. Throws a ``CredentialError`` naming the address if it cannot.
    public static func bind(
        host: String, port: Int, render: @escaping @Sendable () -> [UInt8]
    ) async throws -> MetricsServer {
        let open = ConnectionCount()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 64)
            .childChannelInitializer { channel in
                let admitted = open.count.withLock { count -> Bool in
                    guard count < MetricsServer.maxConnections else { return false }
                    count += 1
                    return true
                }
                guard admitted else { return channel.close() }
                channel.closeFuture.whenComplete { _ in open.count.withLock { $0 -= 1 } }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        IdleStateHandler(readTimeout: MetricsServer.idleTimeout))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(render: render))
                }
            }
        do {
            let channel = try await bootstrap.bind(host: host, port: port).get()
            return MetricsServer(channel: channel)
        } catch {
            let reason = (error as? IOError).map { String(cString: strerror($0.errnoCode)) } ?? "\(error)"
            throw CredentialError("cannot listen on \(host):\(port) for metrics: \(reason)")
        }
    }

    init(channel: any Channel) { self.channel = channel }

    final class ConnectionCount: Sendable {
        let count = Mutex(0)
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

    /// The answer to one request: status, content type and body.
    static func answer(method: HTTPMethod, uri: String, render: () -> [UInt8]) -> (
        HTTPResponseStatus, String, [UInt8]
    ) {
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard path == "/metrics" else {
            return (.notFound, "text/plain; charset=utf-8", Array("only /metrics is served\n".utf8))
        }
        guard method == .GET || method == .HEAD else {
            return (.methodNotAllowed, "text/plain; charset=utf-8", Array("only GET /metrics is served\n".utf8))
        }
        return (.ok, contentType, render())
    }

    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let render: @Sendable () -> [UInt8]
        init(render: @escaping @Sendable () -> [UInt8]) { self.render = render }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            // Only the head matters; a body, if any, is read and dropped.
            guard case .head(let head) = unwrapInboundIn(data) else { return }
            let (status, type, body) = MetricsServer.answer(method: head.method, uri: head.uri, render: render)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: type)
            headers.add(name: "Content-Length", value: String(body.count))
            headers.add(name: "Cache-Control", value: "no-store")
            let keepAlive = head.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
                promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { context.close(promise: nil) }
            }
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is IdleStateHandler.IdleStateEvent {
                context.close(promise: nil)
            } else {
                context.fireUserInboundEventTriggered(event)
            }
        }
    }
}
