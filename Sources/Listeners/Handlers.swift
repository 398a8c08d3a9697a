import CredentialCore

/// `--serve-uri`: `GET /` answered with the credentials-URI JSON from the refresher's cache
/// (docs/contract.md), so SDKs configured with `ALIBABA_CLOUD_CREDENTIALS_URI` share one
/// refresher with the files. Never waits, never causes an upstream request; 503 with a
/// JSON Code/Message while nothing valid is held.
///
/// Every local user (and everything in the host's network namespace) can connect, so this
/// is as open as a 0444 `credentials` file. What it refuses: a `Host` other than the
/// loopback literal it listens on or `localhost` with its port (DNS rebinding), any request
/// with an `Origin` (a browser page); the listener bounds connections and heads.
public struct CredentialsURIHandler: Sendable {
    public static let limits = HTTPListener.Limits(maxConnections: 64)

    let refresher: Refresher
    let literal: String
    let port: Int

    /// For a listener on `host:port` (the bound port, when 0 was asked for).
    public init(refresher: Refresher, host: String, port: Int) {
        self.refresher = refresher
        literal = host.contains(":") ? "[\(host)]" : host
        self.port = port
    }

    /// Whether a request's `Host` values name this listener: the literal it listens on, or
    /// `localhost`, each bare or with the port.
    func acceptsHost(_ values: [String]) -> Bool {
        guard values.count == 1, let value = values.first?.lowercased() else { return false }
        // The official Python SDK sends the host without its port.
        return [literal, "localhost", "\(literal):\(port)", "localhost:\(port)"].contains(value)
    }

    public func respond(_ request: HTTPListener.Request) -> HTTPListener.Response {
        func error(_ status: Int, _ code: String, _ message: String) -> HTTPListener.Response {
            let body = "{\"Code\":\(Render.jsonString(code)),\"Message\":\(Render.jsonString(message))}\n"
            return HTTPListener.Response(status: status, contentType: "application/json", body: Array(body.utf8))
        }
        if !request.values("Origin").isEmpty {
            return error(403, "Forbidden", "requests from a web page are refused")
        }
        if !acceptsHost(request.values("Host")) {
            return error(403, "Forbidden", "Host must be this loopback address or localhost")
        }
        guard request.uri == "/" || request.uri.hasPrefix("/?") else {
            return error(404, "NotFound", "only GET / is served")
        }
        guard request.method == "GET" else {
            return error(405, "MethodNotAllowed", "only GET / is served")
        }
        guard let published = refresher.serving() else {
            let state = refresher.status(mountedAt: refresher.clock.now(), version: "").state.rawValue
            return error(503, "CredentialsUnavailable", "no valid credentials (state \(state))")
        }
        return HTTPListener.Response(
            status: 200, contentType: "application/json", body: Render.uriAnswer(published.credentials))
    }
}

/// `--metrics HOST:PORT`: `GET /metrics` (and `HEAD`) answered with the Prometheus text that
/// `render` produces (``Render/metrics(_:pinnedGroups:)`` of the current status snapshot).
/// It holds no secret, so it may listen on any address (a Prometheus server usually scrapes
/// from another host); it never causes an upstream request.
public struct MetricsHandler: Sendable {
    public static let limits = HTTPListener.Limits(maxConnections: 32)
    static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    let render: @Sendable () -> [UInt8]
    public init(render: @escaping @Sendable () -> [UInt8]) { self.render = render }

    public func respond(_ request: HTTPListener.Request) -> HTTPListener.Response {
        let path = request.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        let text = "text/plain; charset=utf-8"
        guard path == "/metrics" else {
            return HTTPListener.Response(status: 404, contentType: text, body: Array("only /metrics is served\n".utf8))
        }
        guard request.method == "GET" || request.method == "HEAD" else {
            return HTTPListener.Response(
                status: 405, contentType: text, body: Array("only GET /metrics is served\n".utf8))
        }
        return HTTPListener.Response(status: 200, contentType: Self.contentType, body: render())
    }
}
