import CredentialCore
import FoundationEssentials
import Glibc
import Logging
import ServiceLifecycle

/// `--metrics`: the Prometheus endpoint as a service of the daemon's group.
struct MetricsService: Service {
    let server: MetricsServer
    let address: ListenAddress

    /// Listens before mounting (a busy port must not leave a mount behind); nil without
    /// `--metrics`.
    static func bind(
        _ address: ListenAddress?, views: CredentialViewSource
    ) async throws -> MetricsService? {
        guard let address else { return nil }
        do {
            let server = try await MetricsServer.bind(host: address.host, port: address.port) {
                // One snapshot, the one the status file would show now.
                Render.metrics(views.status(), pinnedGroups: views.pins.count)
            }
            return MetricsService(server: server, address: address)
        } catch {
            throw Failure(message: "\(error)")
        }
    }

    func started(logger: Logger) -> ServiceGroupConfiguration.ServiceConfiguration {
        var shown = address
        shown.port = server.port
        logger.info(
            "serving metrics",
            metadata: [
                "address": "http://\(shown.description)/metrics", "loopbackOnly": "\(address.isLoopback)",
            ])
        return .init(service: self)
    }

    func run() async throws {
        await withGracefulShutdownHandler {
            await server.waitUntilClosed()
        } onGracefulShutdown: {
            Task { await server.close() }
        }
    }
}
