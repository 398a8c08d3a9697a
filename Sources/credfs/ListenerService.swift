import CredentialCore
import Glibc
import Listeners
import Logging

/// `--serve-uri` or `--metrics`: an ``HTTPListener`` on a socket that is carried across takeovers, never bound again (docs/hitless.md,
/// "Listeners").
struct ListenerService {
    let listener: HTTPListener

    /// The listeners `mount` was asked for, each on its carried or newly bound socket.
    static func open(
        serveUri: LoopbackAddress?, metrics: ListenAddress?, refresher: Refresher, views: CredentialViewSource,
        inherited: [String: Int32], successor: Bool, logger: Logger
    ) async throws(Failure) -> [ListenerService] {
        var services: [ListenerService] = []
        var unused = inherited
        func add(
            _ name: String, host: String, port: Int, what: String, path: String, limits: HTTPListener.Limits,
            respond: @escaping (_ port: Int) -> HTTPListener.Respond
        ) async throws(Failure) {
            let carried = unused.removeValue(forKey: name)
            guard
                let fd = try socket(
                    name: name, host: host, port: port, what: what, inherited: carried, successor: successor,
                    logger: logger)
            else { return }
            services.append(
                try await start(
                    fd: fd, host: host, what: what, path: path, limits: limits, logger: logger, respond: respond))
        }
        if let serveUri {
            try await add(
                StoreProtocol.listenURI, host: serveUri.host, port: serveUri.port, what: "the credentials URI",
                path: "/", limits: CredentialsURIHandler.limits
            ) { port in CredentialsURIHandler(refresher: refresher, host: serveUri.host, port: port).respond }
        }
        if let metrics {
            try await add(
                StoreProtocol.listenMetrics, host: metrics.host, port: metrics.port, what: "metrics",
                path: "/metrics", limits: MetricsHandler.limits
            ) { _ in
                // One snapshot, the one the status file would show now.
                MetricsHandler { Render.metrics(views.status(), pinnedGroups: views.pins.count) }.respond
            }
        }
        // Carried for an option this start does not have: the port is let go.
        for (name, fd) in unused {
            close(fd)
            FDStore.remove(name: name)
        }
        return services
    }

    /// The listening socket stored under `name`: the one the fd store handed this process
    /// when it listens on `host:port`, else one bound now and handed to the store. Called
    /// before mounting: a first server that cannot bind fails with one line (exit 1) and
    /// leaves no mount behind. A successor that cannot (its predecessor did not carry the
    /// socket, or the address changed) serves the mount without the listener and says so
    /// in the log: the mount's readers come first. Nil without the option.
    private static func socket(
        name: String, host: String, port: Int, what: String, inherited: Int32?, successor: Bool, logger: Logger
    ) throws(Failure) -> Int32? {
        if let inherited {
            if ListeningSocket.isListening(inherited, host: host, port: port) { return inherited }
            close(inherited)
            FDStore.remove(name: name)
        }
        let shown = ListenAddress.shown(host: host, port: port)
        switch ListeningSocket.bind(host: host, port: port) {
        case .success(let fd):
            if FDStore.isAvailable { FDStore.store(fd, name: name) }
            return fd
        case .failure(let error):
            let message = "cannot listen on \(shown) for \(what): \(error)"
            guard successor else { throw Failure(message: message) }
            logger.error("serving the mount without \(what)", metadata: ["reason": "\(message)"])
            return nil
        }
    }

    /// Serves `respond` on `fd`; logs where.
    private static func start(
        fd: Int32, host: String, what: String, path: String, limits: HTTPListener.Limits, logger: Logger,
        respond: @escaping (_ port: Int) -> HTTPListener.Respond
    ) async throws(Failure) -> ListenerService {
        // The handler may need the bound port (port 0 asked for): read it from the socket.
        let port = ListeningSocket.port(of: fd)
        let listener: HTTPListener
        do {
            listener = try await HTTPListener.serve(fd: fd, limits: limits, respond: respond(port))
        } catch {
            throw Failure(message: "cannot serve \(what): \(error)")
        }
        let shown = ListenAddress.shown(host: host, port: port)
        logger.info(
            "serving \(what)",
            metadata: ["address": "http://\(shown)\(path)", "loopbackOnly": "\(LoopbackAddress.isLoopback(host))"])
        return ListenerService(listener: listener)
    }
}
