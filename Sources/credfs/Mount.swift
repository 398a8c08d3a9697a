import ArgumentParser
import CFuse3
import CredentialCore
import Foundation
import FuseBridge
import Logging
import ServiceLifecycle
import UnixSignals

struct Mount: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount the credential files and keep them fresh.",
        discussion: "Without -f, returns once the mount is live and leaves the daemon running.")

    @Argument(help: "Where to mount.")
    var mountpoint: String = "/mnt/.alibabacloud"

    @OptionGroup var source: ProviderOptions

    @Flag(name: [.short, .long], help: "Stay in the foreground (for systemd and debugging).")
    var foreground = false

    @Flag(help: "Let other users in; file modes, --uid and --gid then decide who reads what.")
    var allowOther = false

    @Option(help: "Owner of the secret files (default: the mounting user).")
    var uid: UInt32?

    @Option(help: "Group of the secret files (default: the mounting user's).")
    var gid: UInt32?

    @Option(help: "Octal mode of the secret files.")
    var mode: Octal = Octal(argument: "0400")!

    @Option(
        help: "Refresh when this much lifetime is left (e.g. 900, 15m; default: min(15m, lifetime/3)).")
    var refreshBefore: Seconds?

    @Option(help: "How long an open waits for the very first credentials (e.g. 10, 10s).")
    var initialWait: Seconds = Seconds(argument: "10")!

    @Option(help: "region_id written into config.json.")
    var region: String = "cn-hangzhou"

    @Option(help: "Also answer GET / on this loopback HOST:PORT with the credentials-URI JSON.")
    var serveUri: LoopbackAddress?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Option(help: .hidden)
    var readyFd: Int32?

    @Flag(help: .hidden)
    var fuseDebug = false

    func validate() throws {
        if let refreshBefore, refreshBefore.value <= 0 {
            throw ValidationError("--refresh-before must be more than 0 seconds")
        }
        guard initialWait.value <= 3600 else {
            throw ValidationError("--initial-wait must be at most 1h")
        }
    }

    func run() async throws {
        if foreground {
            try await runForeground()
        } else {
            try Daemon.spawnAndWait(
                arguments: Array(Invocation.arguments.dropFirst()),
                supervise: URL(fileURLWithPath: mountpoint).standardizedFileURL.path)
        }
    }

    func runForeground() async throws {
        _ = credfs_set_not_dumpable()
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "credfs")
        let ready = readyFd.map(ReadinessPipe.init)
        do {
            try await serve(logger: logger, ready: ready)
        } catch var failure as Failure {
            if let ready {
                ready.fail(failure.message)
                failure.reported = true
            }
            throw failure
        }
    }

    func serve(logger: Logger, ready: ReadinessPipe?) async throws {
        // Signals are ours from the start: a SIGTERM arriving while mounting is kept and
        // handed to the service group once it exists; a SIGHUP then just refreshes.
        let router = SignalRouter()
        // Trapped now, before the mount appears; iterated below (the sequence buffers).
        let trapped = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup, .sigusr2)
        // A successor starts from the connection and state the fd store hands it.
        let hitless = Hitless(logger: logger)
        let signals = Task {
            for await signal in trapped {
                if signal == .sigusr2 {
                    await hitless.handOver()
                } else if signal == .sighup {
                    logger.info("SIGHUP: refreshing now")
                    await router.hangup()
                } else {
                    logger.info("shutting down", metadata: ["signal": "\(signal)"])
                    await router.shutdown()
                }
            }
        }
        defer { signals.cancel() }
        // A successor must not touch the mount before it serves it (a stat would wait for
        // itself): its path is worked out without the file system.
        let path =
            hitless.isSuccessor
            ? Hitless.lexicalPath(mountpoint) : URL(fileURLWithPath: mountpoint).standardizedFileURL.path
        if !hitless.isSuccessor { try MountPoint.prepare(path, logger: logger) }

        let mountedAt = hitless.mountedAt ?? Date()
        let fileSystem = Holder<FuseFileSystem>()
        // systemd: READY=1 once the first credentials are served, STATUS= as things change.
        let notifier = SystemdNotifier()
        let refresher = Refresher(
            provider: source.makeProvider(),
            policy: RefreshPolicy(refreshBefore: refreshBefore?.value),
            logger: Logger(label: "credfs.refresher"),
            onPublish: { published in
                fileSystem.value?.invalidate(
                    CredentialView.allCases.filter { $0 != .status }.map(\.rawValue))
                let expires = published.credentials.expiration.map(Timestamp.format) ?? "never"
                notifier.ready(status: "serving generation \(published.generation), expires \(expires)")
                hitless.changed()
            },
            onExpire: {
                // Cached entries of the expired generation must not outlive it.
                fileSystem.value?.invalidate(
                    CredentialView.allCases.filter { $0 != .status }.map(\.rawValue))
                notifier.status("credentials expired; refresh failing")
            },
            onFailure: { error, failures in
                notifier.status("refresh failing (\(failures) in a row): \(error)")
            })
        let views = CredentialViewSource(
            refresher: refresher, initialWait: initialWait.value, mountedAt: mountedAt,
            version: Credfs.version,
            region: region)
        var options = MountOptions()
        options.allowOther = allowOther
        options.debug = fuseDebug
        let fs = FuseFileSystem(
            tree: Tree.make(
                views: views, secretMode: mode.value, uid: uid ?? getuid(), gid: gid ?? getgid(),
                mountedAt: mountedAt),
            mountpoint: path, options: options)
        // Listen before mounting: a busy port must not leave a mount behind.
        var uriServer: CredentialsURIServer?
        if let serveUri {
            do {
                uriServer = try await CredentialsURIServer.bind(
                    host: serveUri.host, port: serveUri.port, refresher: refresher)
            } catch {
                throw Failure(message: "\(error)")
            }
        }
        hitless.restore(refresher)
        do {
            try hitless.attach(fs, refresher: refresher, mountedAt: mountedAt)
        } catch {
            throw Failure(message: "\(error)")
        }
        fileSystem.value = fs
        fs.start()
        if hitless.isSuccessor {
            FDStore.send("SERVING=1", fds: [])
            if let published = refresher.serving() {
                notifier.ready(status: "took over; serving generation \(published.generation)")
            }
        }
        guard hitless.isSuccessor || MountPoint.isAnswering(path) else {
            fs.stop()
            throw Failure(message: "mounted \(path) but it does not answer")
        }
        logger.info(
            "mounted",
            metadata: [
                "mountpoint": "\(path)", "provider": "\(refresher.provider.name)", "pid": "\(getpid())",
                "dumpable": "\(credfs_is_dumpable() != 0)",
            ])
        ready?.succeed()

        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: FuseService(fs: fs), successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: RefresherService(refresher: refresher)),
        ]
        if let uriServer {
            logger.info(
                "serving the credentials URI",
                metadata: ["address": "http://\(serveUri!.host):\(uriServer.port)/"])
            services.append(.init(service: URIService(server: uriServer)))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                logger: logger))
        await router.attach(group, refresher: refresher)
        try await group.run()
        hitless.finishHandover()
        notifier.stopping()
        logger.info("unmounted", metadata: ["mountpoint": "\(path)"])
    }
}

/// Routes SIGTERM/SIGINT/SIGHUP: remembered until the service group and refresher exist.
actor SignalRouter {
    private var shutdownRequested = false
    private var group: ServiceGroup?
    private var refresher: Refresher?

    func shutdown() async {
        shutdownRequested = true
        await group?.triggerGracefulShutdown()
    }

    /// Before the refresher runs there is nothing to refresh: the first fetch is due anyway.
    func hangup() { refresher?.requestRefresh() }

    func attach(_ group: ServiceGroup, refresher: Refresher) async {
        self.group = group
        self.refresher = refresher
        if shutdownRequested { await group.triggerGracefulShutdown() }
    }
}

/// A slot filled once, read from other threads.
final class Holder<T: AnyObject & Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T?
    var value: T? {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}

/// Serves FUSE until the mount goes away; on SIGTERM/SIGINT unmounts and returns.
struct FuseService: Service {
    let fs: FuseFileSystem
    func run() async throws {
        await withGracefulShutdownHandler {
            await fs.waitUntilStopped()
        } onGracefulShutdown: {
            fs.stop()
        }
    }
}

/// Keeps the credentials fresh until shutdown.
struct RefresherService: Service {
    let refresher: Refresher
    func run() async throws {
        try await cancelWhenGracefulShutdown { [refresher] in
            await refresher.run()
        }
    }
}

/// `--serve-uri`: answers until shutdown.
struct URIService: Service {
    let server: CredentialsURIServer
    func run() async throws {
        await withGracefulShutdownHandler {
            await server.waitUntilClosed()
        } onGracefulShutdown: {
            Task { await server.close() }
        }
    }
}

/// The files of SPEC section 1, wired to the view source.
enum Tree {
    static func make(
        views: CredentialViewSource, secretMode: mode_t, uid: uid_t, gid: gid_t, mountedAt: Date
    ) -> VirtualDirectory {
        let files = CredentialView.allCases.map { view in
            VirtualFile(
                name: view.rawValue,
                permissions: view.isSecret ? secretMode : 0o444,
                uid: view.isSecret ? uid : getuid(),
                gid: view.isSecret ? gid : getgid(),
                // Credential views live in the page cache, one immutable inode per generation;
                // status changes every second, so it goes through the daemon.
                caching: view == .status ? .perOpen : .versioned,
                peek: { convert(views.peek(view)) },
                open: { caller in
                    // Only field reads are pinned: the other views need no process group.
                    let group = view.isField ? getpgid(caller.pid) : -1
                    return convert(views.open(view, group: group > 0 ? group : nil))
                })
        }
        return VirtualDirectory(files: files, permissions: 0o555, uid: uid, gid: gid, mtime: mountedAt)
    }

    static func convert(_ content: ViewContent) -> VirtualFile.Content {
        switch content {
        case .bytes(let bytes, let mtime, let generation):
            return .bytes(bytes, mtime: mtime, version: UInt64(generation))
        case .absent: return .absent
        case .unavailable: return .failure(EIO)
        }
    }
}
