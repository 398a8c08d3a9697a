import CFuse3
import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Logging
import Posix
import Synchronization

/// The server's side of a takeover (docs/hitless.md): start as the successor of a previous
/// server when the fd store hands us its connection, keep the store's copy of our state
/// current, and hand over on SIGUSR2.
final class Hitless: Sendable {
    /// Descriptor names in the store (``StoreProtocol``).
    static let fuseName = StoreProtocol.fuse
    static let initName = StoreProtocol.fuseInit
    static let statePrefix = StoreProtocol.statePrefix

    /// A previous server's connection and state, when this process is its successor.
    struct Inherited {
        var fuseFd: Int32
        var initRequest: [UInt8]
        var state: CarriedState?
        var stateSequence: Int
        var staleStateNames: [String]
    }

    let inherited: Inherited?
    let logger: Logger
    private let sender = Mutex<StateSender?>(nil)
    private let handover = Hook<@Sendable () async -> Void>()

    /// Reads what the fd store passed to this process (nothing for the first server).
    init(logger: Logger) {
        self.logger = logger
        let fds = FDStore.inherited()
        var fuseFd: Int32?
        var initRequest: [UInt8]?
        var best: (sequence: Int, fd: Int32)?
        var stale: [String] = []
        for (name, fd) in fds {
            if name == Self.fuseName {
                fuseFd = fd
            } else if name == Self.initName {
                initRequest = MemoryFile.read(fd, limit: 1 << 20)
                close(fd)
            } else if name.hasPrefix(Self.statePrefix), let sequence = Int(name.dropFirst(Self.statePrefix.count)) {
                if let previous = best {
                    if previous.sequence < sequence {
                        stale.append(Self.statePrefix + String(previous.sequence))
                        close(previous.fd)
                        best = (sequence, fd)
                    } else {
                        stale.append(name)
                        close(fd)
                    }
                } else {
                    best = (sequence, fd)
                }
            } else {
                close(fd)
            }
        }
        guard let fuseFd, let initRequest else {
            if let fuseFd { close(fuseFd) }
            if let best { close(best.fd) }
            inherited = nil
            return
        }
        var state: CarriedState?
        if let best {
            state = MemoryFile.read(best.fd).flatMap(CarriedState.decode)
            close(best.fd)
        }
        inherited = Inherited(
            fuseFd: fuseFd, initRequest: initRequest, state: state, stateSequence: best?.sequence ?? 0,
            staleStateNames: stale)
    }

    var isSuccessor: Bool { inherited != nil }

    /// `path` made absolute and normalised (`.`, `..`, `//`, a trailing `/`) by text alone,
    /// without a `stat`: a successor's mount point does not answer until it serves.
    static func lexicalPath(_ path: String) -> String {
        var full = path
        if !path.hasPrefix("/") {
            var buffer = [CChar](repeating: 0, count: 4096)
            let cwd = getcwd(&buffer, buffer.count).map { _ in
                String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            full = (cwd ?? "/") + "/" + path
        }
        var parts: [Substring] = []
        for part in full.split(separator: "/") {
            if part == "." { continue }
            if part == ".." {
                _ = parts.popLast()
                continue
            }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }

    /// The mount's time: carried over by successors.
    var mountedAt: Date? {
        inherited?.state.map { Date(timeIntervalSince1970: $0.mountedAt) }
    }

    /// Serve what the previous server served, without asking the upstream: its
    /// credentials and clock, its process-group pins (each with its generation and
    /// deadline), and its provider's cached state (a metadata token, a role name). Only
    /// ``attach(_:refresher:views:mountedAt:)`` calls it, first: nothing is served before.
    private func restore(_ refresher: Refresher, views: CredentialViewSource) {
        guard let state = inherited?.state else { return }
        ServingProcess.restarts = state.restarts + 1
        if let published = state.published {
            refresher.restore(
                published, upstreamRequests: state.upstreamRequests,
                lastRefresh: state.lastRefresh.map { Date(timeIntervalSince1970: $0) }, clockSkew: state.clockSkew)
        }
        if let provider = state.provider { refresher.provider.restoreCachedState(provider) }
        if let pins = state.pins {
            let taken = views.restorePins(pins.state)
            if taken > 0 { logger.info("took over process-group pins", metadata: ["pins": "\(taken)"]) }
        }
    }

    /// Starts serving: the successor adopts the connection; the first server mounts and
    /// stores its connection once the kernel's INIT has arrived.
    func attach(_ fs: FuseFileSystem, refresher: Refresher, views: CredentialViewSource, mountedAt: Date) throws {
        restore(refresher, views: views)
        let sender = StateSender(firstSequence: inherited?.stateSequence ?? 0) { publishing in
            CarriedState.make(
                refresher: refresher, views: views, fs: fs, mountedAt: mountedAt, restarts: ServingProcess.restarts,
                publishing: publishing)
        }
        let storing = FDStore.isAvailable
        if storing {
            self.sender.withLock { $0 = sender }
            fs.onStateChange = { sender.changed() }
            // A new pin may come with no new inode or handle (an open of a known inode).
            views.pins.onChange { sender.changed() }
        }
        handover.set { [self] in
            logger.notice("handing the mount over to a successor")
            handingOver.store(true, ordering: .sequentiallyConsistent)
            await fs.handOver()
            finishHandover()
        }
        let push: @Sendable () -> Void = { if storing { sender.pushNow() } }
        finish.withLock { $0.push = push }
        if let inherited {
            if inherited.state == nil {
                ServingProcess.restarts = 1
                logger.warning("taking over without the previous server's state")
            }
            let resend = getenv("CREDFS_NO_RESEND") == nil
            let result = try fs.adopt(
                fd: inherited.fuseFd, initRequest: inherited.initRequest, state: inherited.state?.bridge,
                resend: resend)
            logger.notice(
                "took over the mount", metadata: ["restarts": "\(ServingProcess.restarts)", "resend": "\(result)"])
            for name in inherited.staleStateNames { FDStore.remove(name: name) }
            if storing { sender.pushNow() }
        } else {
            if storing {
                fs.onInitRequest = { [logger] request in
                    // Called on a reader thread with the INIT request: store the recording
                    // first, then the connection (a successor needs both).
                    let recording = MemoryFile.make(name: "credfs-fuse-init", bytes: request)
                    guard recording >= 0 else {
                        logger.error("cannot record the FUSE INIT request; takeover unavailable")
                        return
                    }
                    FDStore.store(recording, name: Self.initName)
                    close(recording)
                    FDStore.store(fs.deviceDescriptor, name: Self.fuseName)
                    sender.changed()
                }
            }
            try fs.mount()
        }
    }

    private let handingOver = Atomic<Bool>(false)
    /// The final push; its lock also makes the first caller of ``finishHandover()`` the one
    /// that exits.
    private let finish = Mutex(Finish())
    private struct Finish { var push: (@Sendable () -> Void)? }

    /// After the loop ended for a handover: push the final state and exit 0, without
    /// unmounting and without `STOPPING=1` (which would end the supervisor). Both the
    /// handover and the end of `serve` call it; the first one exits.
    func finishHandover() {
        guard handingOver.load(ordering: .sequentiallyConsistent) else { return }
        finish.withLock { finish in
            finish.push?()
            logger.notice("handed over; exiting without unmounting")
            exit(0)
        }
    }

    /// After an ordinary end (SIGTERM, unmount): the mount is gone, so the connection and its
    /// INIT leave the fd store, and the next start (`systemctl restart`) mounts anew
    /// instead of adopting a dead connection.
    func ended() {
        guard FDStore.isAvailable, !handingOver.load(ordering: .sequentiallyConsistent) else { return }
        FDStore.remove(name: Self.fuseName)
        FDStore.remove(name: Self.initName)
    }

    /// SIGUSR2: stop serving, push the final state, exit 0 without unmounting.
    func handOver() async {
        guard let action = handover.function else { return }
        await action()
    }

    /// A change the bridge does not see: push it soon.
    func changed() {
        sender.withLock { $0 }?.changed()
    }

    /// A generation about to be served: in the store before any reader can see it, so a
    /// successor never numbers other credentials with the same generation (and inodes).
    func publishing(_ published: Published) {
        sender.withLock { $0 }?.pushNow(publishing: published)
    }
}
