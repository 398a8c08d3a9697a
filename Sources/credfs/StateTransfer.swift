import CFuse3
import CPosixIPC
import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Logging
import Posix
import Synchronization

/// What a server hands to its successor, in memory only (a sealed memfd in the fd store):
/// the credentials it served, the mount's facts, what the kernel references, the
/// process-group pins (with the generations they hold) and the provider's cached state.
/// It holds secrets: never logged, never written to disk. Bounded whatever users do
/// (docs/hitless.md, "What is carried, and its bounds").
struct CarriedState: Codable {
    struct CarriedCredentials: Codable {
        var accessKeyId: String
        var accessKeySecret: String
        var securityToken: String?
        var expiration: Double?
        var generation: Int
        var fetchedAt: Double

        init(_ p: Published) {
            accessKeyId = p.credentials.accessKeyId
            accessKeySecret = p.credentials.accessKeySecret
            securityToken = p.credentials.securityToken
            expiration = p.credentials.expiration?.timeIntervalSince1970
            generation = p.generation
            fetchedAt = p.fetchedAt.timeIntervalSince1970
        }

        var published: Published? {
            guard generation > 0, fetchedAt.isFinite, expiration?.isFinite ?? true else { return nil }
            return Published(
                carried: Credentials(
                    accessKeyId: accessKeyId, accessKeySecret: accessKeySecret, securityToken: securityToken,
                    expiration: expiration.map { Date(timeIntervalSince1970: $0) }),
                generation: generation, fetchedAt: Date(timeIntervalSince1970: fetchedAt))
        }
    }

    /// The core's ``PinTableState``: each live pin, and the generations pins hold (which
    /// may be older than the one served).
    struct CarriedPins: Codable {
        struct Pin: Codable {
            var group: Int32
            var uid: UInt32
            var generation: Int
            /// By the refresher's cloud clock, seconds since 1970.
            var pinnedAt: Double
        }
        var pins: [Pin]
        var generations: [CarriedCredentials]

        init(_ state: PinTableState) {
            pins = state.pins.map {
                Pin(
                    group: $0.reader.group, uid: $0.reader.uid, generation: $0.generation,
                    pinnedAt: $0.pinnedAt.timeIntervalSince1970)
            }
            generations = state.generations.map(CarriedCredentials.init)
        }

        var state: PinTableState {
            PinTableState(
                pins: pins.filter { $0.pinnedAt.isFinite }.map {
                    PinTableState.Pin(
                        reader: GenerationPins.Reader(group: $0.group, uid: $0.uid), generation: $0.generation,
                        pinnedAt: Date(timeIntervalSince1970: $0.pinnedAt))
                },
                generations: generations.compactMap(\.published))
        }
    }

    /// Not read by this binary, and not dead: older binaries require the key when they
    /// decode a state (docs/hitless.md, "The carried state across versions"), so a
    /// downgrade still carries the state. 2: handles no longer carried, nodes within a budget.
    var format = 2
    var mountedAt: Double
    var restarts: Int
    var upstreamRequests: Int
    var lastRefresh: Double?
    var credentials: CarriedCredentials?
    var bridge: BridgeState
    /// The measured clock skew (the clock expiry and pins follow). Absent in older states.
    var clockSkew: Double?
    var pins: CarriedPins?
    var provider: ProviderCachedState?

    var published: Published? { credentials?.published }

    /// The state now; `publishing` is the newest generation announced to be served (it is
    /// carried when the refresher does not serve it yet).
    static func make(
        refresher: Refresher, views: CredentialViewSource, fs: FuseFileSystem, mountedAt: Date, restarts: Int,
        publishing: Published? = nil
    ) -> CarriedState {
        let machine = refresher.machine
        let current = [publishing, machine.published].compactMap { $0 }.max { $0.generation < $1.generation }
        let pins = views.exportPins()
        return CarriedState(
            mountedAt: mountedAt.timeIntervalSince1970, restarts: restarts,
            upstreamRequests: machine.upstreamRequests, lastRefresh: machine.lastRefresh?.timeIntervalSince1970,
            credentials: current.map(CarriedCredentials.init), bridge: fs.exportState(),
            clockSkew: machine.clockSkew, pins: pins.isEmpty ? nil : CarriedPins(pins),
            provider: refresher.provider.cachedState)
    }

    func encoded() -> [UInt8]? { (try? JSONEncoder().encode(self)).map { Array($0) } }

    static func decode(_ bytes: [UInt8]) -> CarriedState? {
        try? JSONDecoder().decode(CarriedState.self, from: Data(bytes))
    }

    /// What a successor reads of a stored state at most. A state of this binary stays
    /// under ``pushLimit``; the larger limit reads what an older binary carried (it held
    /// every open handle's bytes).
    static let readLimit = 64 << 20
    /// The most a state of this binary can hold (docs/hitless.md): the node budget, the
    /// pin table at its bounds, a few generations of credentials.
    static let pushLimit = 512 << 10
}

/// A few numbers that live in the store for the mount's whole life in a memfd of their
/// own, written in place (never sent again): the highest generation this mount ever
/// announced, and the counts `status` shows. A write to memory never waits, so the floor is
/// current even when a state push could not go; a successor that has no readable state, or
/// an older one, still numbers generations (and so inodes) above every one the kernel may
/// have seen, and keeps `restarts`, `upstreamRequests` and `mountedAt`.
final class StateFloor: Sendable {
    struct Record: Sendable, Equatable {
        var generation = 0
        var restarts = 0
        var upstreamRequests = 0
        /// Seconds since 1970; 0 when unknown.
        var mountedAt: Double = 0
    }

    /// "credflo1", then generation, restarts, upstreamRequests, mountedAt's bits: little
    /// endian 64-bit words.
    static let magic: UInt64 = 0x6372_6564_666c_6f31
    static let size = 64
    /// Counts beyond this are not believed (a generation that large would leave no room
    /// for versioned inode numbers).
    static let largest = 1 << 40

    let fd: Int32
    private let record: Mutex<Record>

    private init(fd: Int32, record: Record) {
        self.fd = fd
        self.record = Mutex(record)
    }

    /// A new floor (the first server of a mount, or a successor of a binary without one).
    static func make(_ record: Record) -> StateFloor? {
        let fd = credfs_memfd("credfs-floor")
        guard fd >= 0 else { return nil }
        guard ftruncate(fd, off_t(size)) == 0 else {
            close(fd)
            return nil
        }
        let floor = StateFloor(fd: fd, record: record)
        floor.write(record)
        return floor
    }

    /// The predecessor's floor (this process takes the descriptor).
    static func inherited(fd: Int32) -> (floor: StateFloor, record: Record?) {
        let record = read(fd)
        return (StateFloor(fd: fd, record: record ?? Record()), record)
    }

    var current: Record { record.withLock { $0 } }

    /// Moves the floor up: counts never go down here.
    func raise(_ update: (inout Record) -> Void) {
        record.withLock { held in
            var next = held
            update(&next)
            next.generation = max(next.generation, held.generation)
            next.restarts = max(next.restarts, held.restarts)
            next.upstreamRequests = max(next.upstreamRequests, held.upstreamRequests)
            if held.mountedAt != 0 { next.mountedAt = held.mountedAt }
            guard next != held else { return }
            held = next
            write(next)
        }
    }

    private func write(_ record: Record) {
        let words: [UInt64] = [
            Self.magic, UInt64(clamping: record.generation), UInt64(clamping: record.restarts),
            UInt64(clamping: record.upstreamRequests), record.mountedAt.bitPattern, 0, 0, 0,
        ]
        let bytes = words.flatMap { word in (0..<8).map { UInt8(truncatingIfNeeded: word >> ($0 * 8)) } }
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    /// The record in `fd`, or nil when it is not a floor this binary understands.
    static func read(_ fd: Int32) -> Record? {
        var bytes = [UInt8](repeating: 0, count: size)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n == size else { return nil }
        let words = (0..<5).map { index in
            (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[index * 8 + $1]) << ($1 * 8) }
        }
        guard words[0] == magic else { return nil }
        func count(_ word: UInt64) -> Int? { word <= UInt64(largest) ? Int(word) : nil }
        guard let generation = count(words[1]), let restarts = count(words[2]),
            let upstreamRequests = count(words[3])
        else { return nil }
        let mountedAt = Double(bitPattern: words[4])
        return Record(
            generation: generation, restarts: restarts, upstreamRequests: upstreamRequests,
            mountedAt: mountedAt.isFinite && mountedAt > 0 && mountedAt < 1e11 ? mountedAt : 0)
    }
}

/// Where the server's messages to its service manager go (today the fd store's socket).
/// The sender knows of it only that a send may not go now (false): it never waits for one,
/// it tries again later.
struct StoreChannel: Sendable {
    var store: @Sendable (_ fd: Int32, _ name: String) -> Bool
    var remove: @Sendable (_ name: String) -> Bool
    var send: @Sendable (_ message: StoreProtocol.Message) -> Bool

    static let fdStore = StoreChannel(
        store: { FDStore.store($0, name: $1) }, remove: { FDStore.remove(name: $0) },
        send: { FDStore.send($0, fds: []) })
}

/// Keeps the store's copy of the state current without ever making a caller wait: changes
/// are coalesced (only the latest state matters), every send is non-blocking, and what
/// could not go is tried again from a thread of its own (never the refresher's, never a
/// FUSE worker). A stalled or dead service manager delays the next push, never a refresh
/// or a read. After each push `state.N` is in and the older ones go out, so a `kill -9` at
/// any moment leaves at least one whole state behind.
final class StateSender: Sendable {
    /// What goes to the store in order, before any state.
    enum Message: Sendable {
        /// Store `fd` under `name`; the sender owns the descriptor and closes it once sent.
        case store(fd: Int32, name: String)
        case remove(name: String)
        case send(StoreProtocol.Message)
    }

    /// For tests and the log: what the sender did.
    struct Counts: Sendable, Equatable {
        var pushes = 0
        var largestPush = 0
        var lastPush = 0
        /// Sends that could not go (each tried again later).
        var deferred = 0
    }

    private struct Work {
        var messages: [Message] = []
        var dirty = false
        var changedAt: ContinuousClock.Instant?
        var publishing: Published?
        /// The last `state.N` number used.
        var sequence: Int
        /// Our states in the store, oldest first; all but the newest are to be removed.
        var stored: [Int]
        /// Sends that did not go in a row, and when to try again.
        var failures = 0
        var retryAt: ContinuousClock.Instant?
        /// The earliest next push: a push costs, pushes never take more than a fifth of a core.
        var nextPushAt: ContinuousClock.Instant = .now
        var counts = Counts()

        var pending: Bool { !messages.isEmpty || dirty || stored.count > 1 }
    }

    /// Changes within this are one push.
    static let coalesce: Duration = .milliseconds(5)
    /// States of ours in the store at most (removals that could not go yet): a successor is
    /// handed at most this many, whatever happened.
    static let storedAtMost = 4

    private let work: Mutex<Work>
    /// One flush at a time (the thread's, a publish's, the final one).
    private let flushing = Mutex(())
    private let build: @Sendable (Published?) -> CarriedState
    private let channel: StoreChannel
    private let logger: Logger
    private let wakeRead: Int32
    private let wakeWrite: Int32

    /// - Parameters:
    ///   - sequence: the highest `state.N` in the store; `stored`: those already there
    ///     (a predecessor's), removed after this sender's first push.
    init(
        sequence: Int, stored: [Int] = [], channel: StoreChannel = .fdStore, logger: Logger,
        build: @escaping @Sendable (Published?) -> CarriedState
    ) {
        self.build = build
        self.channel = channel
        self.logger = logger
        work = Mutex(Work(sequence: sequence, stored: stored.sorted()))
        let pipe = Spawn.pipe()
        wakeRead = pipe?.read ?? -1
        wakeWrite = pipe?.write ?? -1
        for fd in [wakeRead, wakeWrite] where fd >= 0 { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
    }

    /// Starts the thread that sends what is due. Returns false if no thread could start.
    @discardableResult
    func start() -> Bool {
        startThread(name: "credfs-state") { [self] in
            while true {
                let wait = nextWait()
                if wait != 0 {
                    var fd = pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)
                    if poll(&fd, 1, wait) > 0 {
                        var drain = [UInt8](repeating: 0, count: 64)
                        _ = read(wakeRead, &drain, drain.count)
                    }
                    continue
                }
                flush()
            }
        }
    }

    var counts: Counts { work.withLock { $0.counts } }

    /// Something the state holds changed: pushed soon (never from the caller's thread).
    func changed() {
        work.withLock { work in
            if !work.dirty { work.changedAt = .now }
            work.dirty = true
        }
        poke()
    }

    /// Sends `message` after what is queued, from the sender's thread.
    func enqueue(_ message: Message) {
        work.withLock { $0.messages.append(message) }
        poke()
    }

    /// A generation about to be served: tried now, from the caller's thread, without
    /// waiting for the store; if it cannot go now the thread tries again. Returns whether
    /// the store took it.
    @discardableResult
    func publishing(_ published: Published) -> Bool {
        work.withLock { work in
            if (work.publishing?.generation ?? 0) < published.generation { work.publishing = published }
            if !work.dirty { work.changedAt = .now }
            work.dirty = true
        }
        return flush()
    }

    /// Everything queued and (with `state`) the state as it is now, tried until `deadline`
    /// passes: a handover's final push, or an ordinary end's removals. Returns whether all
    /// of it went.
    @discardableResult
    func finish(within deadline: Duration, state: Bool = true) -> Bool {
        if state { changed() }
        let end = ContinuousClock.now + deadline
        while !flush() {
            guard ContinuousClock.now < end else { return false }
            var none = pollfd(fd: -1, events: 0, revents: 0)
            _ = poll(&none, 0, 10)
        }
        return true
    }

    /// Milliseconds until something is due (0: now; -1: nothing to do).
    private func nextWait() -> Int32 {
        work.withLock { work in
            guard work.pending else { return -1 }
            let now = ContinuousClock.now
            var due = work.retryAt ?? now
            if work.failures == 0, work.dirty, work.messages.isEmpty {
                due = max(due, (work.changedAt ?? now) + Self.coalesce, work.nextPushAt)
            }
            guard due > now else { return 0 }
            let (seconds, attoseconds) = (due - now).components
            return Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
        }
    }

    /// Sends what is pending, in order, never waiting: queued messages, then the state if
    /// it changed, then removals of older states. Returns whether everything went.
    @discardableResult
    private func flush() -> Bool {
        flushing.withLock { _ -> Bool in
            while let message = work.withLock({ $0.messages.first }) {
                let sent: Bool
                switch message {
                case .store(let fd, let name): sent = channel.store(fd, name)
                case .remove(let name): sent = channel.remove(name)
                case .send(let message): sent = channel.send(message)
                }
                guard sent else { return deferred() }
                work.withLock { _ = $0.messages.removeFirst() }
                if case .store(let fd, _) = message { close(fd) }
            }
            let due = work.withLock { work -> (publishing: Published?, sequence: Int)? in
                guard work.dirty, work.stored.count < Self.storedAtMost else { return nil }
                work.dirty = false
                return (work.publishing, work.sequence + 1)
            }
            if let due {
                let started = ContinuousClock.now
                guard push(build(due.publishing), sequence: due.sequence) else {
                    work.withLock { $0.dirty = true }
                    return deferred()
                }
                let cost = ContinuousClock.now - started
                work.withLock { $0.nextPushAt = .now + cost * 4 }
            }
            while let oldest = work.withLock({ $0.stored.count > 1 ? $0.stored.first : nil }) {
                guard channel.remove(StoreProtocol.state(oldest)) else { return deferred() }
                work.withLock { _ = $0.stored.removeFirst() }
            }
            let recovered = work.withLock { work -> Bool in
                defer {
                    work.failures = 0
                    work.retryAt = nil
                }
                return work.failures > 0
            }
            if recovered { logger.notice("the service manager takes the state again") }
            return !work.withLock { $0.pending }
        }
    }

    /// One state into the store as `state.<sequence>`.
    private func push(_ state: CarriedState, sequence: Int) -> Bool {
        guard let bytes = state.encoded() else { return true }  // cannot happen; nothing to retry
        let fd = MemoryFile.make(name: "credfs-state", bytes: bytes)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard channel.store(fd, StoreProtocol.state(sequence)) else { return false }
        work.withLock { work in
            work.sequence = sequence
            work.stored.append(sequence)
            work.counts.pushes += 1
            work.counts.lastPush = bytes.count
            work.counts.largestPush = max(work.counts.largestPush, bytes.count)
        }
        logger.debug("state pushed", metadata: ["bytes": "\(bytes.count)", "sequence": "\(sequence)"])
        return true
    }

    /// A send did not go: try again after 10 ms, doubling up to 1 s. Returns false.
    private func deferred() -> Bool {
        let first = work.withLock { work -> Bool in
            work.failures += 1
            work.counts.deferred += 1
            let delay = min(1000, 10 << min(work.failures - 1, 7))
            work.retryAt = .now + .milliseconds(delay)
            return work.failures == 1
        }
        if first { logger.warning("the service manager does not take the state now; trying again later") }
        poke()
        return false
    }

    private func poke() {
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }
}
