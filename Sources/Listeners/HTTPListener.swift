import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The one small HTTP server of credfs, behind `--serve-uri` and `--metrics`: one request a
/// connection, answered from a pure function of the request, on a listening socket it is
/// handed (``ListeningSocket``: bound now, or carried over from the previous server).
///
/// Every local user (and, for the metrics, anyone who can reach the address) may connect,
/// hold connections open or send a byte at a time. What keeps a proper request answered
/// (docs/security.md, "Listeners"):
/// - the request head must be complete within ``Limits/headTimeout`` of the connection
///   opening, however its bytes trickle in, and may be at most ``Limits/maxHeadBytes``;
/// - at ``Limits/maxConnections`` a new connection pushes out the oldest idle one: waiting
///   for its head and silent for ``Limits/idleAfter`` (a connection being answered is never
///   pushed out). A connection just accepted is not idle yet: its head may be in its socket
///   unread (a flood of reconnections must not push out a proper request before it is
///   read), so while no connection is idle newcomers are admitted past the cap, up to
///   ``Limits/maxOpen``, where a newcomer is refused;
/// - every answer says `Connection: close` and the connection ends after it, so no
///   connection waits between requests; one that does not read its answer ends after
///   ``Limits/answerTimeout``.
/// HTTP parsing is SwiftNIO's; this is the only place credfs uses NIO.
public final class HTTPListener: Sendable {
    public struct Limits: Sendable {
        public var maxConnections: Int
        public var headTimeout: Duration = .seconds(3)
        public var answerTimeout: Duration = .seconds(10)
        public var maxHeadBytes = 16 * 1024
        /// Silent this long while waiting for its head: a connection may give way at the cap.
        public var idleAfter: Duration = .milliseconds(100)
        /// Open connections past the cap while none is idle (a burst): the hard bound.
        public var maxOpen = 1024
        public init(maxConnections: Int) { self.maxConnections = maxConnections }
    }

    /// What a handler sees of a request.
    public struct Request: Sendable {
        public var method: String
        public var uri: String
        public var headers: [(name: String, value: String)]
        public init(method: String, uri: String, headers: [(name: String, value: String)] = []) {
            self.method = method
            self.uri = uri
            self.headers = headers
        }
        /// Every value of the header `name` (case-insensitive).
        public func values(_ name: String) -> [String] {
            headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
        }
    }

    /// A handler's answer.
    public struct Response: Sendable, Equatable {
        public var status: Int
        public var contentType: String
        public var body: [UInt8]
        public init(status: Int, contentType: String, body: [UInt8]) {
            self.status = status
            self.contentType = contentType
            self.body = body
        }
    }

    public typealias Respond = @Sendable (Request) -> Response

    let channel: any Channel

    init(channel: any Channel) { self.channel = channel }

    /// Serves `respond` on the listening socket `fd`, which it then owns (closes).
    public static func serve(fd: Int32, limits: Limits, respond: @escaping Respond) async throws -> HTTPListener {
        let connections = Connections()
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                guard connections.admit(channel, limits: limits) else { return channel.close() }
                // The head's deadline counts from the connection, not from its last byte.
                let deadline = channel.eventLoop.scheduleTask(in: TimeAmount(limits.headTimeout)) {
                    channel.close(promise: nil)
                }
                channel.closeFuture.whenComplete { _ in
                    deadline.cancel()
                    connections.remove(channel)
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        HeadSizeLimit(max: limits.maxHeadBytes, connections: connections))
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(
                        Responder(respond: respond, connections: connections, headDeadline: deadline, limits: limits))
                }
            }
        return HTTPListener(channel: try await bootstrap.withBoundSocket(fd).get())
    }

    /// The port it listens on.
    public var port: Int { channel.localAddress?.port ?? 0 }

    /// Stops accepting (this process's descriptor only: a copy in the fd store still
    /// listens, so the port is never free).
    public func close() async {
        try? await channel.close()
    }

    /// The open connections, shared between event loops: who gives way at the cap.
    final class Connections: Sendable {
        struct Entry {
            let channel: any Channel
            let since: NIODeadline
            var heard: NIODeadline
            var answering = false
        }
        private let entries = Mutex<[ObjectIdentifier: Entry]>([:])

        /// Admits `channel`. At the cap the oldest idle connection is closed to make room; with
        /// none idle, `channel` is admitted past the cap up to ``Limits/maxOpen``, and refused
        /// there.
        func admit(_ channel: any Channel, limits: Limits) -> Bool {
            let now = NIODeadline.now()
            let quiet = TimeAmount(limits.idleAfter)
            let (admitted, evicted) = entries.withLock { entries -> (Bool, (any Channel)?) in
                var evicted: (any Channel)?
                if entries.count >= limits.maxConnections {
                    let idle = entries.filter { !$0.value.answering && now - $0.value.heard >= quiet }
                    if let oldest = idle.min(by: { $0.value.since < $1.value.since }) {
                        entries[oldest.key] = nil
                        evicted = oldest.value.channel
                    } else if entries.count >= limits.maxOpen {
                        return (false, nil)
                    }
                }
                entries[ObjectIdentifier(channel)] = Entry(channel: channel, since: now, heard: now)
                return (true, evicted)
            }
            evicted?.close(promise: nil)
            return admitted
        }

        /// `channel` sent bytes: not idle now.
        func heard(_ channel: any Channel) {
            entries.withLock { $0[ObjectIdentifier(channel)]?.heard = .now() }
        }

        func answering(_ channel: any Channel) {
            entries.withLock { $0[ObjectIdentifier(channel)]?.answering = true }
        }

        func remove(_ channel: any Channel) {
            entries.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(channel)) }
        }

        var count: Int { entries.withLock { $0.count } }
    }

    /// Closes a connection whose bytes run past `max` before its answer.
    final class HeadSizeLimit: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer
        let max: Int
        let connections: Connections
        var received = 0
        init(max: Int, connections: Connections) {
            self.max = max
            self.connections = connections
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received += unwrapInboundIn(data).readableBytes
            connections.heard(context.channel)
            guard received <= max else {
                context.close(promise: nil)
                return
            }
            context.fireChannelRead(data)
        }
    }

    final class Responder: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let respond: Respond
        let connections: Connections
        let headDeadline: Scheduled<Void>
        let limits: Limits
        var answered = false

        init(respond: @escaping Respond, connections: Connections, headDeadline: Scheduled<Void>, limits: Limits) {
            self.respond = respond
            self.connections = connections
            self.headDeadline = headDeadline
            self.limits = limits
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            // Only the head matters; a body, if any, is dropped with the connection.
            guard case .head(let head) = unwrapInboundIn(data), !answered else { return }
            answered = true
            headDeadline.cancel()
            connections.answering(context.channel)
            let channel = context.channel
            let stuck = context.eventLoop.scheduleTask(in: TimeAmount(limits.answerTimeout)) {
                channel.close(promise: nil)
            }
            channel.closeFuture.whenComplete { _ in stuck.cancel() }

            let request = Request(
                method: head.method.rawValue, uri: head.uri, headers: head.headers.map { ($0.name, $0.value) })
            let response = respond(request)
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: response.contentType)
            headers.add(name: "Content-Length", value: String(response.body.count))
            headers.add(name: "Cache-Control", value: "no-store")
            headers.add(name: "Connection", value: "close")
            let status = HTTPResponseStatus(statusCode: response.status)
            context.write(
                wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
                promise: nil)
            if head.method != .HEAD {
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: response.body)))), promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                context.close(promise: nil)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            // A malformed request: no answer is owed, the connection just ends.
            context.close(promise: nil)
        }
    }
}
