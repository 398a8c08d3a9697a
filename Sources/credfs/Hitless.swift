import CFuse3
import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Logging
import Posix
import Synchronization

/// A takeover, both sides (docs/hitless.md): what a server stores (its connection, the
/// kernel's INIT, its state, the floor) and what its successor restores from it, in an
/// order the types enforce. A server's `serve` calls, in this order:
///
/// 1. ``init(logger:)``: reads what the fd store handed this process (a successor's
///    connection and state; nothing for the first server);
/// 2. ``restore(_:views:)`` into the refresher and views, which returns ``Restored``;
/// 3. ``attach(_:after:mountedAt:)`` with it: adopts the connection or mounts (recording
///    INIT), starts the state sender, and returns ``Attached``;
/// 4. ``start(_:)`` with that: serves, and a successor says `SERVING=1`;
/// 5. ``end()`` once the serving loop ended: a handover (``handOver()``, SIGUSR2) or an
///    ordinary end.
final class Hitless: Sendable {
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
    /// How many servers took over the mount since it was made (0 for the one that mounted),
    /// and what this one took over (``Carried``): both for `status`.
    let restarts: Int
    let carriedState: Carried
    private let sender = Mutex<StateSender?>(nil)
    private let floor = Mutex<StateFloor?>(nil)
    private let attachedFS = Mutex<FuseFileSystem?>(nil)
    private let handover = Mutex<Task<Void, Never>?>(nil)

    /// What a successor took over from its predecessor, as `status` shows it.
    enum Carried: String {
        /// The process that mounted.
        case none
        /// Its state.
        case restored
        /// Its state, older than the generation it last announced.
        case behind
        /// No state was stored.
        case missing
        /// A state was there and could not be read.
        case unreadable
    }

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
            if StoreProtocol.listeners.contains(name), listeners[name] == nil {
                listeners[name] = fd
            } else if name == StoreProtocol.fuse, fuseFd == nil {
                fuseFd = fd
            } else if name == StoreProtocol.fuseInit, initRequest == nil {
                initRequest = MemoryFile.read(fd, limit: 1 << 20)
                close(fd)
            } else if let sequence = StoreProtocol.stateSequence(name) {
                states.append((sequence, fd))
            } else if name == StoreProtocol.floor {
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
            if !floors.isEmpty { stale.append(StoreProtocol.floor) }
            if fuseFd != nil { stale.append(StoreProtocol.fuse) }
            if initRequest != nil { stale.append(StoreProtocol.fuseInit) }
            staleNames = stale
            inherited = nil
            restarts = 0
            carriedState = .none
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
        TakeoverTrace.mark("store-read")
        staleNames = []
        restarts = max(state?.restarts ?? 0, floor?.record?.restarts ?? 0) + 1
        switch problem {
        case nil: carriedState = .restored
        case .missing: carriedState = .missing
        case .unreadable: carriedState = .unreadable
        case .behind: carriedState = .behind
        }
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

    /// Proof that ``restore(_:views:)`` ran: ``attach(_:after:mountedAt:)`` takes it, so a
    /// successor cannot adopt the connection before it holds the carried state.
    struct Restored: ~Copyable {
        fileprivate let refresher: Refresher
        fileprivate let views: CredentialViewSource
    }

    /// Proof that ``attach(_:after:mountedAt:)`` ran: ``start(_:)`` takes it.
    struct Attached: ~Copyable {
        fileprivate let fs: FuseFileSystem
    }

    /// Step 1. Serve what the previous server served, without asking the upstream: its
    /// credentials and clock, its process-group pins (each with its generation and
    /// deadline), and its provider's cached state (a metadata token, a role name). Without
    /// a readable state, the floor still keeps generations (so inode numbers) and counts
    /// from going back; `status` says which (`carriedState`), and so does the log. Call it
    /// before the listeners open (a carried socket's queued clients get the carried
    /// credentials, never a 503). The first server restores nothing.
    func restore(_ refresher: Refresher, views: CredentialViewSource) -> Restored {
        let restored = Restored(refresher: refresher, views: views)
        guard let inherited else { return restored }
        let state = inherited.state
        let record = inherited.floorRecord
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
            break
        case .missing:
            logger.warning(
                "taking over without the previous server's state: none was stored; generations continue above the floor",
                metadata: ["floor": "\(floorText)"])
        case .unreadable(let why):
            logger.error(
                "taking over without the previous server's state: it could not be read; generations continue above the floor",
                metadata: ["reason": "\(why)", "floor": "\(floorText)", "olderStateUsed": "\(state != nil)"])
        case .behind(let carried, let announced):
            logger.warning(
                "the previous server's last state is older than the generation it announced; serving its credentials as a new generation and refreshing",
                metadata: ["stateGeneration": "\(carried)", "floor": "\(announced)"])
        }
        if record == nil {
            logger.notice("the previous server kept no floor in the store (an older binary); this one adds it")
        }
        TakeoverTrace.mark("restored")
        return restored
    }

    /// Step 2. The successor adopts the connection (the kernel is asked to send again what
    /// its predecessor read); the first server mounts, recording the kernel's INIT for the
    /// store. With a store, the state sender starts: nothing here waits for the store, what
    /// goes there is queued for the sender's thread.
    func attach(_ fs: FuseFileSystem, after restored: consuming Restored, mountedAt: Date) throws -> Attached {
        let refresher = restored.refresher
        let views = restored.views
        let sender =
            FDStore.isAvailable ? startSender(fs, refresher: refresher, views: views, mountedAt: mountedAt) : nil
        attachedFS.withLock { $0 = fs }
        if let inherited {
            let resend = getenv("CREDFS_NO_RESEND") == nil
            let result = try fs.adopt(
                fd: inherited.fuseFd, initRequest: inherited.initRequest, state: inherited.state?.bridge,
                resend: resend)
            TakeoverTrace.mark("adopted")
            logger.notice(
                "took over the mount",
                metadata: ["restarts": "\(restarts)", "resend": "\(result)", "carriedState": "\(carriedState)"])
            changed()
        } else if let sender {
            try fs.mount(recordingInit: { [logger] request in
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
                sender.enqueue(.store(fd: recording, name: StoreProtocol.fuseInit))
                sender.enqueue(.store(fd: connection, name: StoreProtocol.fuse))
                sender.changed()
            })
        } else {
            try fs.mount()
        }
        return Attached(fs: fs)
    }

    /// Step 3. Serves; a successor tells its service manager (the supervisor's upgrade
    /// waits for it), after what is queued for it.
    func start(_ attached: consuming Attached) {
        attached.fs.start()
        guard isSuccessor else { return }
        TakeoverTrace.mark("started")
        if let sender = sender.withLock({ $0 }) {
            sender.enqueue(.send(.serving))
        } else {
            FDStore.send(.serving)
        }
    }

    /// The floor and the state sender of a server with a store.
    private func startSender(
        _ fs: FuseFileSystem, refresher: Refresher, views: CredentialViewSource, mountedAt: Date
    ) -> StateSender {
        let restarts = restarts
        let floor = inherited?.floor ?? StateFloor.make(StateFloor.Record())
        floor?.raise {
            $0.generation = refresher.machine.published?.generation ?? 0
            $0.restarts = restarts
            $0.upstreamRequests = refresher.machine.upstreamRequests
            $0.mountedAt = mountedAt.timeIntervalSince1970
        }
        self.floor.withLock { $0 = floor }
        let sender = StateSender(
            sequence: inherited?.stateSequences.max() ?? 0, stored: inherited?.stateSequences ?? [],
            logger: logger
        ) { publishing in
            let state = CarriedState.make(
                refresher: refresher, views: views, fs: fs, mountedAt: mountedAt, restarts: restarts,
                publishing: publishing)
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
            if copy >= 0 { sender.enqueue(.store(fd: copy, name: StoreProtocol.floor)) }
        }
        fs.onStateChange = { sender.changed() }
        // A new pin may come with no new inode (an open of a known inode).
        views.pins.onChange { sender.changed() }
        if !sender.start() { logger.error("cannot start the state sender's thread; takeover unavailable") }
        return sender
    }

    /// How long a handover tries to get its final state into the store (the supervisor
    /// kills a server that has not handed over within 5 s).
    static let finalPushWithin: Duration = .seconds(2)

    /// SIGUSR2 (or the SIGTERM of `systemctl restart`): stop reading, answer what was read,
    /// push the final state. The serving loop then ends, and ``end()`` says it was a
    /// handover. Before ``attach(_:after:mountedAt:)``, and once one is under way, nothing.
    func handOver() async {
        let task = handover.withLock { slot -> Task<Void, Never>? in
            guard slot == nil, let fs = attachedFS.withLock({ $0 }) else { return nil }
            let task = Task { [self] in
                TakeoverTrace.mark("handover")
                logger.notice("handing the mount over to a successor")
                await fs.handOver()
                TakeoverTrace.mark("stopped")
                if let sender = sender.withLock({ $0 }), !sender.finish(within: Self.finalPushWithin) {
                    logger.error(
                        "the service manager did not take the final state; the successor starts from the floor")
                }
                TakeoverTrace.mark("pushed")
            }
            slot = task
            return task
        }
        await task?.value
    }

    /// How serving ended.
    enum Ending {
        /// Handed over: exit 0 without unmounting and without `STOPPING=1` (which would
        /// end the supervisor).
        case handedOver
        /// An ordinary end (SIGTERM, unmount).
        case ended
    }

    /// After the serving loop ended. A handover: waits until its final push is done. An
    /// ordinary end: the mount is gone, so the connection, its INIT, the floor and the
    /// listeners leave the fd store, and the next start (`systemctl restart`) mounts anew
    /// instead of adopting a dead connection.
    func end() async -> Ending {
        if let task = handover.withLock({ $0 }) {
            await task.value
            logger.notice("handed over; exiting without unmounting")
            return .handedOver
        }
        if let sender = sender.withLock({ $0 }) {
            for name in [StoreProtocol.fuse, StoreProtocol.fuseInit, StoreProtocol.floor] + StoreProtocol.listeners {
                sender.enqueue(.remove(name: name))
            }
            sender.finish(within: .seconds(1), state: false)
        }
        return .ended
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
