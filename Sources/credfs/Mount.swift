import ArgumentParser
import CFuse3
import CPosix
import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Logging
import Synchronization
import UnixSignals

struct Mount: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount",
        abstract: "Mount the credential files and keep them fresh.",
        discussion: "Without -f, returns once the mount is live and leaves the daemon running.")

    @Argument(help: "Where to mount.")
    var mountpoint: String = "/mnt/.alibabacloud"

    /// Read before parsing, by ``ConfigFile/expand(_:)``: here for --help and the man pages.
    @Option(
        help:
            "Take options from this file first (key = value lines, as in /etc/credfs/credfs.conf); the command line wins."
    )
    var config: String?

    @OptionGroup var source: ProviderOptions

    @Flag(name: [.short, .long], help: "Stay in the foreground (for systemd and debugging).")
    var foreground = false

    @Flag(help: "Let other users in; file modes, --uid and --gid then decide who reads what.")
    var allowOther = false

    @Option(help: "Owner of the secret files (default: the mounting user).")
    var uid: OwnerID?

    @Option(help: "Group of the secret files (default: the mounting user's).")
    var gid: OwnerID?

    @Option(help: "Octal mode of the secret files.")
    var mode = Octal(0o400, written: "0400")

    @Option(
        help: "Refresh when this much lifetime is left, at most 7d (e.g. 900, 15m; default: min(15m, lifetime/3)).")
    var refreshBefore: Seconds?

    @Option(help: "How long an open waits for the very first credentials (e.g. 10, 10s).")
    var initialWait = Seconds(10, written: "10s")

    @Option(help: "region_id written into config.json.")
    var region: String = "cn-hangzhou"

    @Option(
        help: ArgumentHelp(
            "Also answer GET / on this loopback address (127.0.0.0/8, [::1] or localhost) with the credentials-URI JSON.",
            valueName: "host:port"),
        transform: LoopbackAddress.parse)
    var serveUri: LoopbackAddress?

    @Option(help: "Serve Prometheus metrics at GET /metrics on HOST:PORT (no secret in them; any address).")
    var metrics: ListenAddress?

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Flag(
        help: ArgumentHelp(
            "Serve reads from the kernel's page cache: no daemon round trip per open.",
            discussion: "Field files are then not pinned per process group; read env or credentials for several fields."
        ))
    var kernelCache = false

    @Option(help: "Append the log to this file (default: stderr; in the background, the system log).")
    var logFile: String?

    @Option(help: .hidden)
    var readyFd: Int32?

    @Flag(help: .hidden)
    var fuseDebug = false

    func validate() throws {
        if let refreshBefore, refreshBefore.value <= 0 || refreshBefore.value > 7 * 86_400 {
            throw ValidationError("--refresh-before must be more than 0 seconds and at most 7 days")
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
                arguments: Array(Invocation.arguments.dropFirst()), supervise: MountPoint.resolve(mountpoint))
        }
    }

    /// The listeners may hold up to `HTTPListener.Limits.maxOpen` connections each during a
    /// burst (docs/security.md, "Listeners"): the soft descriptor limit goes up to the hard
    /// one (at most 16,384), as a server's does.
    static func raiseDescriptorLimit() {
        var limit = rlimit()
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        guard getrlimit(resource, &limit) == 0 else { return }
        let wanted = min(limit.rlim_max, 16_384)
        guard limit.rlim_cur < wanted else { return }
        limit.rlim_cur = wanted
        _ = setrlimit(resource, &limit)
    }

    func runForeground() async throws {
        TakeoverTrace.mark("parsed")
        _ = credfs_set_not_dumpable()
        Self.raiseDescriptorLimit()
        let level = logLevel
        // In the background stderr is /dev/null: the log goes to the system log.
        let background = readyFd != nil
        var logStream: FileHandleOutputStream?
        if let logFile {
            do {
                logStream = try FileHandleOutputStream(appendingTo: logFile)
            } catch var failure {
                if let readyFd {
                    ReadinessPipe(fd: readyFd).fail(failure.message)
                    failure.reported = true
                }
                throw failure
            }
        }
        LoggingSystem.bootstrap { label in
            if let logStream {
                var handler = StreamLogHandler(label: label, stream: logStream)
                handler.logLevel = level
                return handler
            }
            if background {
                var handler = SystemLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
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
        // Signals are ours from the start: a SIGTERM or SIGHUP arriving while mounting is
        // kept until the services run.
        let services = MountServices()
        // Trapped now, before the mount appears; iterated below (the sequence buffers).
        let trapped = await UnixSignalsSequence(trapping: .sigterm, .sigint, .sighup, .sigusr2)
        // A standby waits here, started and its options read, until the supervisor hands
        // it the connection (docs/hitless.md, "The standby"); if it never does, it ends.
        guard await ServerLaunch.awaitAdoption() else { return }
        // A successor starts from the connection and state the fd store hands it.
        let hitless = Hitless(logger: logger)
        let signals = Task {
            for await signal in trapped {
                if signal == .sigusr2 || (signal == .sigterm && SystemdRestart.during(logger)) {
                    await hitless.handOver()
                } else if signal == .sighup {
                    logger.info("SIGHUP: refreshing now")
                    services.hangup()
                } else {
                    logger.info("shutting down", metadata: ["signal": "\(signal)"])
                    await services.shutdown()
                }
            }
        }
        defer { signals.cancel() }
        // A successor must not stat the mount before it serves it (it would wait for itself):
        // the path is resolved with readlink alone.
        let path = MountPoint.resolve(mountpoint)
        // The one clock, made here and handed down (the core has no default): the providers
        // and the refresher are given it; the views and the URI server read the refresher's.
        let clock = SystemRefreshClock()
        // Relative paths (the mount point, an OIDC token file) are resolved before this.
        let provider = source.makeProvider(clock: clock)
        if readyFd != nil || ServerLaunch.current != nil {
            // A daemon keeps no caller's working directory busy.
            _ = chdir("/")
        }
        if !hitless.isSuccessor { try MountPoint.prepare(path, logger: logger) }

        let mountedAt = hitless.mountedAt ?? clock.now()
        let fileSystem = Holder<FuseFileSystem>()
        // systemd: READY=1 once the first credentials are served, STATUS= as things change.
        let notifier = SystemdNotifier()
        let refresher = Refresher(
            provider: provider,
            policy: RefreshPolicy(refreshBefore: refreshBefore?.value),
            clock: clock,
            logger: Logger(label: "credfs.refresher"),
            beforePublish: { published in hitless.publishing(published) },
            onPublish: { published in
                // Requests parked for the first credentials are answered first: an entry
                // invalidation would wait for a parked lookup.
                fileSystem.value?.wake()
                fileSystem.value?.invalidate(CredentialView.credentialViews.map(\.rawValue))
                let expires = published.credentials.expiration.map(Timestamp.format) ?? "never"
                notifier.ready(status: "serving generation \(published.generation), expires \(expires)")
                hitless.changed()
                MemoryTrim.soon()
            },
            onExpire: {
                // Cached entries of the expired generation must not outlive it.
                fileSystem.value?.invalidate(CredentialView.credentialViews.map(\.rawValue))
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
        options.kernelCache = kernelCache
        let fs = FuseFileSystem(
            tree: ViewTree.make(
                views: views, secretMode: mode.value, uid: uid?.value ?? getuid(), gid: gid?.value ?? getgid(),
                mountedAt: mountedAt, kernelCache: kernelCache, clock: clock),
            mountpoint: path, options: options)
        let kernelCacheMode = kernelCache
        let pid = Int(getpid())
        views.reportServing { [fs] in
            ServingFacts(
                pid: pid, restarts: hitless.restarts, carriedState: hitless.carriedState.rawValue,
                mode: kernelCacheMode ? "kernel-cache" : "default", parkedRequests: fs.parkedCount,
                openRequests: fs.requestCounts.open, versionedInodes: fs.versionedInodeCount,
                openHandles: fs.openHandleCount)
        }
        let restored = hitless.restore(refresher, views: views)
        // Listen before mounting (a busy port must not leave a mount behind) and after the
        // restore (a successor's first answer is the carried credentials, never a 503). A
        // successor serves on the sockets its predecessor bound: the port is never free.
        let listeners = try await ListenerService.open(
            serveUri: serveUri, metrics: metrics, refresher: refresher, views: views, inherited: hitless.listeners,
            successor: hitless.isSuccessor, logger: logger)
        let attached: Hitless.Attached
        do {
            attached = try hitless.attach(fs, after: restored, mountedAt: mountedAt)
        } catch {
            throw Failure(message: "\(error)")
        }
        fileSystem.value = fs
        hitless.start(attached)
        if hitless.isSuccessor {
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
        MemoryTrim.soon()

        await services.run(.init(fs: fs, refresher: refresher, listeners: listeners.map(\.listener)))
        guard await hitless.end() == .ended else { return }
        notifier.stopping()
        logger.info("unmounted", metadata: ["mountpoint": "\(path)"])
    }
}
