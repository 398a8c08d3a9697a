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
    /// The listening sockets of `--serve-uri` and `--metrics` (ListenerService.swift).
    static let uriListenerName = "listen-uri"
    static let metricsListenerName = "listen-metrics"
    static let listenerNames: Set<String> = [uriListenerName, metricsListenerName]

    /// A previous server's connection and state, when this process is its successor.
    struct Inherited {
        var fuseFd: Int32
        var initRequest: [UInt8]
        /// The newest state that could be read, and why the newest one could not be (nil
        /// when it was).
        var state: CarriedState?
        var problem: StateProblem?
        /// The `state.N` numbers in the store (all are replaced by this server's first push).
        var stateSequences: [Int]
        /// The mount's floor (docs/hitless.md): nil when the predecessor's binary kept none.
        var floor: StateFloor?
        var floorRecord: StateFloor.Record?
    }

    /// Why a successor did not take over its predecessor's newest state.
    enum StateProblem: Equatable {
        /// No state in the store (a predecessor that died before its first push).
        case missing
        /// A state was there and could not be read: too large, or not a state.
        case unreadable(String)
        /// The state was read, but the floor shows the predecessor announced a newer
        /// generation after it (a push that had not reached the store).
        case behind(state: Int, floor: Int)
    }

    let inherited: Inherited?
    /// What a dead mount left in the store (its states, floor, a connection without its
    /// INIT): removed before a new mount stores its own. Names this binary does not know are
    /// left alone (closed here, kept in the store for whoever knows them).
    let staleNames: [String]
    /// Listening sockets the fd store handed over, by name: carried whether or not the
    /// connection was (a listener is never bound again while the store holds it).
    let listeners: [String: Int32]
    let logger: Logger
    private let sender = Mutex<StateSender?>(nil)
    private let floor = Mutex<StateFloor?>(nil)
    private let restored = Mutex(false)
    private let handover = Hook<@Sendable () async -> Void>()

    /// Reads what the fd store passed to this process (nothing for the first server).
    init(logger: Logger) {
        self.logger = logger
        let fds = FDStore.inherited()
        var fuseFd: Int32?
        var initRequest: [UInt8]?
        var states: [(sequence: Int, fd: Int32)] = []
        var floors: [Int32] = []
        var listeners: [String: Int32] = [:]
        for (name, fd) in fds {
            if Self.listenerNames.contains(name), listeners[name] == nil {
                listeners[name] = fd
            } else if name == Self.fuseName, fuseFd == nil {
                fuseFd = fd
            } else if name == Self.initName, initRequest == nil {
                initRequest = MemoryFile.read(fd, limit: 1 << 20)
                close(fd)
            } else if name.hasPrefix(Self.statePrefix), let sequence = Int(name.dropFirst(Self.statePrefix.count)) {
                states.append((sequence, fd))
            } else if name == StateFloor.name {
                floors.append(fd)
            } else {
                close(fd)
            }
        }
        self.listeners = listeners
        guard let fuseFd, let initRequest else {
            // No connection to take over: a new mount. What a dead one left goes.
            if let fuseFd { close(fuseFd) }
            states.forEach { close($0.fd) }
            floors.forEach { close($0) }
            var stale = states.map { StoreProtocol.state($0.sequence) }
            if !floors.isEmpty { stale.append(StateFloor.name) }
            if fuseFd != nil { stale.append(Self.fuseName) }
            if initRequest != nil { stale.append(Self.initName) }
            staleNames = stale
            inherited = nil
            return
        }
        // The newest state that reads; the reason the newest did not.
        var state: CarriedState?
        var problem: StateProblem? = states.isEmpty ? .missing : nil
        for (sequence, fd) in states.sorted(by: { $0.sequence > $1.sequence }) where state == nil {
            if let bytes = MemoryFile.read(fd, limit: CarriedState.readLimit) {
                state = CarriedState.decode(bytes)
                if state == nil, problem == nil {
                    problem = .unreadable(
                        "\(StoreProtocol.state(sequence)) (\(bytes.count) bytes) is not a state this binary reads")
                }
            } else if problem == nil {
                problem = .unreadable(
                    "\(StoreProtocol.state(sequence)) is larger than \(CarriedState.readLimit >> 20) MiB or unreadable")
            }
        }
        states.forEach { close($0.fd) }
        // Several floors (cannot happen with one server at a time): the highest counts.
        var floor: (floor: StateFloor, record: StateFloor.Record?)?
        for fd in floors {
            let candidate = StateFloor.inherited(fd: fd)
            if let held = floor, (held.record?.generation ?? -1) >= (candidate.record?.generation ?? -1) {
                close(fd)
            } else {
                if let held = floor { close(held.floor.fd) }
                floor = candidate
            }
        }
        if let record = floor?.record, let carried = state, record.generation > (carried.published?.generation ?? 0) {
            problem = problem ?? .behind(state: carried.published?.generation ?? 0, floor: record.generation)
        }
        staleNames = []
        inherited = Inherited(
            fuseFd: fuseFd, initRequest: initRequest, state: state, problem: problem,
            stateSequences: states.map(\.sequence), floor: floor?.floor, floorRecord: floor?.record)
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

    /// The mount's time: carried over by successors (from the state, else the floor).
    var mountedAt: Date? {
        guard let inherited else { return nil }
        if let state = inherited.state, state.mountedAt.isFinite {
            return Date(timeIntervalSince1970: state.mountedAt)
        }
        guard let at = inherited.floorRecord?.mountedAt, at > 0 else { return nil }
        return Date(timeIntervalSince1970: at)
    }

    /// Serve what the previous server served, without asking the upstream: its
    /// credentials and clock, its process-group pins (each with its generation and
    /// deadline), and its provider's cached state (a metadata token, a role name). Without
    /// a readable state, the floor still keeps generations (so inode numbers) and counts
    /// from going back; `status` says which (`carriedState`), and so does the log. Runs
    /// once, before anything is served: `Mount` calls it before opening the listeners (a
    /// carried socket's queued clients get the carried credentials, never a 503), and
    /// ``attach(_:refresher:views:mountedAt:)`` makes sure it ran.
    func restore(_ refresher: Refresher, views: CredentialViewSource) {
        guard let inherited,
            restored.withLock({ done in
                defer { done = true }
                return !done
            })
        else { return }
        let state = inherited.state
        let record = inherited.floorRecord
        ServingProcess.restarts = max(state?.restarts ?? 0, record?.restarts ?? 0) + 1
        let upstreamRequests = max(state?.upstreamRequests ?? 0, record?.upstreamRequests ?? 0)
        // Every generation the kernel may have seen is at most this.
        let floor = max(record?.generation ?? 0, state?.published?.generation ?? 0)
        if let state, let published = state.published {
            var served = published
            if floor > published.generation {
                // The predecessor announced newer generations whose push never reached the
                // store: its last carried credentials (still valid) are served under a new
                // number above all of them, and a refresh is asked for at once.
                served = Published(
                    carried: published.credentials, generation: floor + 1, fetchedAt: published.fetchedAt)
            }
            refresher.restore(
                served, upstreamRequests: upstreamRequests,
                lastRefresh: state.lastRefresh.map { Date(timeIntervalSince1970: $0) }, clockSkew: state.clockSkew)
            if served.generation != published.generation { refresher.requestRefresh() }
        }
        refresher.carry(upstreamRequests: upstreamRequests, generationFloor: floor)
        if let provider = state?.provider { refresher.provider.restoreCachedState(provider) }
        if let pins = state?.pins {
            let taken = views.restorePins(pins.state)
            if taken > 0 { logger.info("took over process-group pins", metadata: ["pins": "\(taken)"]) }
        }
        let floorText = record.map { String($0.generation) } ?? "none"
        switch inherited.problem {
        case nil:
            ServingProcess.carriedState = "restored"
        case .missing:
            ServingProcess.carriedState = "missing"
            logger.warning(
                "taking over without the previous server's state: none was stored; generations continue above the floor",
                metadata: ["floor": "\(floorText)"])
        case .unreadable(let why):
            ServingProcess.carriedState = "unreadable"
            logger.error(
                "taking over without the previous server's state: it could not be read; generations continue above the floor",
                metadata: ["reason": "\(why)", "floor": "\(floorText)", "olderStateUsed": "\(state != nil)"])
        case .behind(let carried, let announced):
            ServingProcess.carriedState = "behind"
            logger.warning(
                "the previous server's last state is older than the generation it announced; serving its credentials as a new generation and refreshing",
                metadata: ["stateGeneration": "\(carried)", "floor": "\(announced)"])
        }
        if record == nil {
            logger.notice("the previous server kept no floor in the store (an older binary); this one adds it")
        }
    }

    /// Starts serving: the successor adopts the connection; the first server mounts and
    /// stores its connection once the kernel's INIT has arrived. Nothing here waits for the
    /// store: what goes there is queued for the state sender's thread.
    func attach(_ fs: FuseFileSystem, refresher: Refresher, views: CredentialViewSource, mountedAt: Date) throws {
        restore(refresher, views: views)
        let storing = FDStore.isAvailable
        if storing {
            let floor = inherited?.floor ?? StateFloor.make(StateFloor.Record())
            floor?.raise {
                $0.generation = refresher.machine.published?.generation ?? 0
                $0.restarts = ServingProcess.restarts
                $0.upstreamRequests = refresher.machine.upstreamRequests
                $0.mountedAt = mountedAt.timeIntervalSince1970
            }
            self.floor.withLock { $0 = floor }
            let sender = StateSender(
                sequence: inherited?.stateSequences.max() ?? 0, stored: inherited?.stateSequences ?? [],
                logger: logger
            ) { publishing in
                let state = CarriedState.make(
                    refresher: refresher, views: views, fs: fs, mountedAt: mountedAt,
                    restarts: ServingProcess.restarts, publishing: publishing)
                floor?.raise {
                    $0.generation = state.published?.generation ?? 0
                    $0.upstreamRequests = state.upstreamRequests
                }
                return state
            }
            self.sender.withLock { $0 = sender }
            // A dead mount's leftovers go before anything of this one is stored.
            for name in staleNames { sender.enqueue(.remove(name: name)) }
            if let floor, inherited?.floor == nil {
                let copy = fcntl(floor.fd, F_DUPFD_CLOEXEC, 0)
                if copy >= 0 { sender.enqueue(.store(fd: copy, name: StateFloor.name)) }
            }
            fs.onStateChange = { sender.changed() }
            // A new pin may come with no new inode (an open of a known inode).
            views.pins.onChange { sender.changed() }
            if !sender.start() { logger.error("cannot start the state sender's thread; takeover unavailable") }
        }
        handover.set { [self] in
            logger.notice("handing the mount over to a successor")
            handingOver.store(true, ordering: .sequentiallyConsistent)
            await fs.handOver()
            finishHandover()
        }
        if let inherited {
            let resend = getenv("CREDFS_NO_RESEND") == nil
            let result = try fs.adopt(
                fd: inherited.fuseFd, initRequest: inherited.initRequest, state: inherited.state?.bridge,
                resend: resend)
            logger.notice(
                "took over the mount",
                metadata: [
                    "restarts": "\(ServingProcess.restarts)", "resend": "\(result)",
                    "carriedState": "\(ServingProcess.carriedState ?? "none")",
                ])
            changed()
        } else if let sender = self.sender.withLock({ $0 }) {
            fs.onInitRequest = { [logger] request in
                // Called on a reader thread with the INIT request: the recording first,
                // then the connection (a successor needs both), both sent by the sender.
                let recording = MemoryFile.make(name: "credfs-fuse-init", bytes: request)
                let connection = fcntl(fs.deviceDescriptor, F_DUPFD_CLOEXEC, 0)
                guard recording >= 0, connection >= 0 else {
                    if recording >= 0 { close(recording) }
                    if connection >= 0 { close(connection) }
                    logger.error("cannot record the FUSE INIT request; takeover unavailable")
                    return
                }
                sender.enqueue(.store(fd: recording, name: Self.initName))
                sender.enqueue(.store(fd: connection, name: Self.fuseName))
                sender.changed()
            }
            try fs.mount()
        } else {
            try fs.mount()
        }
    }

    /// A successor serves: the service manager (the supervisor's upgrade) is told, after
    /// what is queued for it.
    func announceServing() {
        if let sender = sender.withLock({ $0 }) {
            sender.enqueue(.send(.serving))
        } else {
            FDStore.send(.serving)
        }
    }

    private let handingOver = Atomic<Bool>(false)
    /// Its lock makes the first caller of ``finishHandover()`` the one that exits.
    private let exiting = Mutex(())

    /// How long a handover tries to get its final state into the store (the supervisor
    /// kills a server that has not handed over within 5 s).
    static let finalPushWithin: Duration = .seconds(2)

    /// After the loop ended for a handover: push the final state and exit 0, without
    /// unmounting and without `STOPPING=1` (which would end the supervisor). Both the
    /// handover and the end of `serve` call it; the first one exits.
    func finishHandover() {
        guard handingOver.load(ordering: .sequentiallyConsistent) else { return }
        exiting.withLock { _ in
            if let sender = sender.withLock({ $0 }), !sender.finish(within: Self.finalPushWithin) {
                logger.error("the service manager did not take the final state; the successor starts from the floor")
            }
            logger.notice("handed over; exiting without unmounting")
            exit(0)
        }
    }

    /// After an ordinary end (SIGTERM, unmount): the mount is gone, so the connection, its
    /// INIT and the floor leave the fd store, and the next start (`systemctl restart`)
    /// mounts anew instead of adopting a dead connection.
    func ended() {
        guard let sender = sender.withLock({ $0 }), !handingOver.load(ordering: .sequentiallyConsistent) else {
            return
        }
        for name in [Self.fuseName, Self.initName, StateFloor.name] + Self.listenerNames {
            sender.enqueue(.remove(name: name))
        }
        sender.finish(within: .seconds(1), state: false)
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

    /// A generation about to be served (the refresher's `beforePublish`). Never waits: the
    /// floor (memory) is raised first, then the push is tried without blocking; if the
    /// store cannot take it now, the sender's thread tries again, and a successor that
    /// misses it still numbers above it from the floor (docs/hitless.md, "The push rule").
    func publishing(_ published: Published) {
        floor.withLock { $0 }?.raise { $0.generation = published.generation }
        sender.withLock { $0 }?.publishing(published)
    }
}
