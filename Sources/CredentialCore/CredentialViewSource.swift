import FoundationEssentials
import Posix
import Synchronization

/// The files credfs shows, by name (docs/contract.md, "Files"): the one list every part iterates.
public enum CredentialView: String, CaseIterable, Sendable {
    case credentials
    case accessKeyId = "access_key_id"
    case accessKeySecret = "access_key_secret"
    case token
    case expiration
    case status
    case env
    case configJSON = "config.json"

    /// Secret views take `--mode/--uid/--gid`; `expiration` and `status` stay 0444.
    public var isSecret: Bool { self != .expiration && self != .status }

    /// The one-field views, which a reader combines across several opens: these are
    /// pinned to one generation per process group (docs/contract.md, "What a reader may
    /// rely on": fields stay together).
    public var isField: Bool { [.accessKeyId, .accessKeySecret, .token, .expiration].contains(self) }

    /// Reading this view starts a pin: the secret fields. `expiration` is world-readable,
    /// so it follows a pin but never makes one (any user could fill the table with it).
    public var startsPin: Bool { isField && isSecret }

    /// The views rendered from credentials (all but `status`).
    public static var credentialViews: [CredentialView] { allCases.filter { $0 != .status } }
}

/// What a view holds at one instant.
public enum ViewContent: Sendable, Equatable {
    /// `generation` names the credentials the bytes were rendered from (0: none), so equal
    /// generations of one view always hold equal bytes.
    case bytes([UInt8], mtime: Date, generation: Int = 0)
    /// The view does not exist for these credentials (`token` of an AccessKey pair).
    case absent
    /// No valid credentials: readers get EIO.
    case unavailable
    /// The very first credentials are still being fetched: ask again when they arrive,
    /// and give up (EIO) after `timeout`.
    case pending(timeout: Duration)
}

/// One published generation with every view rendered once, at the first read after its
/// publication; pins hold it, so a pinned reader only copies bytes.
public struct RenderedGeneration: Sendable {
    public let published: Published
    public let views: CredentialViews
}

/// Serves the views from the refresher's cache. Never touches the network and never
/// waits. Knows nothing of FUSE. Reads the refresher's clock.
public final class CredentialViewSource: Sendable {
    let refresher: Refresher
    let initialWait: Duration
    let mountedAt: Date
    let version: String
    let region: String
    private let current = Mutex<RenderedGeneration?>(nil)
    private let servingFacts = Hook<@Sendable () -> ServingFacts>()
    /// Process group → the generation its field reads are pinned to.
    public let pins: GenerationPins

    public init(
        refresher: Refresher, initialWait: TimeInterval, mountedAt: Date, version: String,
        region: String = "cn-hangzhou", pins: GenerationPins = GenerationPins()
    ) {
        self.refresher = refresher
        self.initialWait = .milliseconds(Int64(min(max(initialWait, 0), 86_400) * 1000))
        self.mountedAt = mountedAt
        self.version = version
        self.region = region
        self.pins = pins
    }

    /// The current content, for `stat` and directory listings: never waits. While no valid
    /// credentials are held the credential views are present and empty (an open then fails).
    public func peek(_ view: CredentialView) -> ViewContent {
        if view == .status { return statusContent() }
        guard let published = refresher.serving() else { return .bytes([], mtime: mountedAt) }
        return content(view, of: rendered(published))
    }

    /// The content an open snapshots; `.pending` while the very first credentials are still
    /// being fetched, `.unavailable` when none are valid.
    ///
    /// - Parameters:
    ///   - reader: the reader's process group and user; field views read by one group
    ///     within ``GenerationPins/window`` of its first secret field read come from one
    ///     generation. nil: no pinning (an unknown process).
    public func open(_ view: CredentialView, reader: GenerationPins.Reader? = nil) -> ViewContent {
        if view == .status { return statusContent() }
        guard let published = refresher.serving() else { return unavailable() }
        let now = refresher.cloudNow()
        let generation = rendered(published)
        guard view.isField, let reader else { return content(view, of: generation) }
        return content(view, of: pins.generation(for: reader, current: generation, pin: view.startsPin, now: now))
    }

    /// What a lookup by `reader` finds: its pinned generation while the pin holds, else what
    /// ``peek(_:)`` finds. Never creates a pin (only opens do).
    public func lookup(_ view: CredentialView, reader: GenerationPins.Reader?) -> ViewContent {
        guard view.isField, let reader, let published = refresher.serving() else { return peek(view) }
        let current = rendered(published)
        guard let pinned = pins.pinned(reader, now: refresher.cloudNow()),
            pinned.published.generation != current.published.generation
        else { return content(view, of: current) }
        return content(view, of: pinned)
    }

    /// The live pins and their generations, for a successor (a takeover); pins are kept
    /// in the refresher's cloud clock, which the successor restores first.
    public func exportPins() -> PinTableState {
        pins.export(now: refresher.cloudNow())
    }

    /// Takes over a predecessor's pins (after the refresher took over its credentials and
    /// clock): each keeps its generation, rendered here, and its deadline. A pin of the
    /// generation served now shares its rendering; one of a generation newer than the
    /// one served now is dropped (it cannot come from the same mount).
    @discardableResult
    public func restorePins(_ state: PinTableState) -> Int {
        let now = refresher.cloudNow()
        let served = refresher.serving()
        let usable = PinTableState(
            pins: state.pins,
            generations: state.generations.filter { $0.generation <= (served?.generation ?? 0) })
        return pins.restore(usable, now: now) { published in
            if let served, served.generation == published.generation { return rendered(served) }
            return RenderedGeneration(
                published: published, views: CredentialViews(published.credentials, region: region))
        }
    }

    /// How many more seconds the views of `generation` will be served (0: not served now;
    /// nil: never expires), for how long the kernel may cache them.
    public func secondsServed(generation: Int) -> TimeInterval? {
        refresher.secondsServed(generation: generation)
    }

    /// Nothing valid to serve: wait while nothing was ever published, else fail.
    func unavailable() -> ViewContent {
        refresher.hasPublished ? .unavailable : .pending(timeout: initialWait)
    }

    /// The refresher's facts now, with the serving facts the executable reports.
    public func status() -> StatusSnapshot {
        var snapshot = refresher.status(mountedAt: mountedAt, version: version)
        snapshot.serving = servingFacts.function?()
        return snapshot
    }

    /// Where `status` learns about the process serving the mount and how it serves reads:
    /// `facts` is called at each `status` read (and metrics scrape) and returns plain values
    /// (the core knows no FUSE and no process). Set once the mount exists.
    public func reportServing(_ facts: @escaping @Sendable () -> ServingFacts) {
        servingFacts.set(facts)
    }

    func statusContent() -> ViewContent {
        .bytes(Render.statusFile(status()), mtime: refresher.clock.now())
    }

    func content(_ view: CredentialView, of generation: RenderedGeneration) -> ViewContent {
        guard let bytes = generation.views.bytes(of: view) else { return .absent }
        return .bytes(bytes, mtime: generation.published.fetchedAt, generation: generation.published.generation)
    }

    /// The rendered views of `published`, rendered once per generation.
    func rendered(_ published: Published) -> RenderedGeneration {
        current.withLock { slot in
            if let slot, slot.published.generation == published.generation { return slot }
            let generation = RenderedGeneration(
                published: published, views: CredentialViews(published.credentials, region: region))
            slot = generation
            return generation
        }
    }
}

/// Pins each process group's field reads to the generation of its first secret field read,
/// for ``window`` seconds (not sliding), while that generation is valid. Costs no upstream
/// request.
///
/// Bounded, and fair between users: a user holds at most ``perUserCapacity`` pins (its own
/// oldest goes first), and when the whole table is full the oldest pin of the user holding
/// the most goes. A flood of process groups from one user never evicts another user's pin.
public final class GenerationPins: Sendable {
    /// Who reads: the process group and its user. Readers whose pid the daemon cannot see
    /// (another PID namespace) have no group and are not pinned.
    public struct Reader: Sendable, Hashable {
        public var group: Int32
        public var uid: UInt32
        public init(group: Int32, uid: UInt32) {
            self.group = group
            self.uid = uid
        }
    }

    struct Pin {
        var generation: RenderedGeneration
        var pinnedAt: Date
    }

    public let window: TimeInterval
    public let capacity: Int
    public let perUserCapacity: Int
    private let changed = Hook<@Sendable () -> Void>()

    private struct Table {
        var pins: [Reader: Pin] = [:]
        var perUser: [UInt32: Int] = [:]
        /// When pins past their window were last swept out (at most once a second).
        var sweptAt: Date?

        mutating func set(_ reader: Reader, _ pin: Pin?) {
            let had = pins[reader] != nil
            pins[reader] = pin
            let delta = (pin != nil ? 1 : 0) - (had ? 1 : 0)
            guard delta != 0 else { return }
            let count = perUser[reader.uid, default: 0] + delta
            perUser[reader.uid] = count > 0 ? count : nil
        }
    }

    private let table = Mutex(Table())

    public init(window: TimeInterval = 10, capacity: Int = 4096, perUserCapacity: Int = 1024) {
        self.window = window
        self.capacity = max(1, capacity)
        self.perUserCapacity = max(1, min(perUserCapacity, capacity))
    }

    public var count: Int { table.withLock { $0.pins.count } }

    /// Called (cheaply, outside the table's lock) after a new pin is made or pins are
    /// restored: what ``export(now:)`` returns has changed.
    public func onChange(_ hook: (@Sendable () -> Void)?) { changed.set(hook) }
    private func notify() { changed.function?() }

    /// The reader's pin while fresh and valid; nil otherwise. Changes nothing.
    public func pinned(_ reader: Reader, now: Date) -> RenderedGeneration? {
        table.withLock { table in
            guard let held = table.pins[reader], now.timeIntervalSince(held.pinnedAt) < window,
                held.generation.published.credentials.isValid(at: now)
            else { return nil }
            return held.generation
        }
    }

    /// The generation `reader` reads now: its pin while fresh and valid, else `current`
    /// (which becomes its new pin when `pin` is true).
    public func generation(for reader: Reader, current: RenderedGeneration, pin: Bool, now: Date)
        -> RenderedGeneration
    {
        let (generation, made) = table.withLock { table -> (RenderedGeneration, Bool) in
            if let held = table.pins[reader], now.timeIntervalSince(held.pinnedAt) < window,
                held.generation.published.credentials.isValid(at: now)
            {
                return (held.generation, false)
            }
            table.set(reader, nil)
            guard pin else { return (current, false) }
            sweep(&table, now: now)
            makeRoom(for: reader.uid, in: &table, now: now)
            table.set(reader, Pin(generation: current, pinnedAt: now))
            return (current, true)
        }
        if made { notify() }
        return generation
    }

    /// Drops every pin whose window has passed, at most once a second: a group that does
    /// not come back must not keep its generation's bytes until its user's quota fills.
    private func sweep(_ table: inout Table, now: Date) {
        if let last = table.sweptAt, now.timeIntervalSince(last) < 1, now >= last { return }
        table.sweptAt = now
        let stale = table.pins.filter { now.timeIntervalSince($0.value.pinnedAt) >= window }.map(\.key)
        stale.forEach { table.set($0, nil) }
    }

    /// Frees a place for one more pin of `uid`: its own oldest when it holds its share,
    /// else the heaviest user's oldest when the table is full.
    private func makeRoom(for uid: UInt32, in table: inout Table, now: Date) {
        if table.perUser[uid, default: 0] >= perUserCapacity {
            evictOldest(of: uid, from: &table, now: now)
        } else if table.pins.count >= capacity, let heaviest = table.perUser.max(by: { $0.value < $1.value })?.key {
            evictOldest(of: heaviest, from: &table, now: now)
        }
    }

    /// Drops the user's pins whose window has passed, or else its oldest one.
    private func evictOldest(of uid: UInt32, from table: inout Table, now: Date) {
        let theirs = table.pins.filter { $0.key.uid == uid }
        let stale = theirs.filter { now.timeIntervalSince($0.value.pinnedAt) >= window }.map(\.key)
        if !stale.isEmpty {
            stale.forEach { table.set($0, nil) }
        } else if let oldest = theirs.min(by: { $0.value.pinnedAt < $1.value.pinnedAt }) {
            table.set(oldest.key, nil)
        }
    }
}

/// The pin table as a plain value, for the next process serving the same mount (a
/// takeover): every live pin, and the credentials of each generation a pin holds (which
/// may be older than the one served now). Holds secrets: memory only, never logged.
public struct PinTableState: Sendable {
    public struct Pin: Sendable, Equatable {
        public var reader: GenerationPins.Reader
        /// The pinned generation: one of ``PinTableState/generations``.
        public var generation: Int
        /// When the pin was made, by the clock pins are kept in (``Refresher/cloudNow()``):
        /// it holds until `pinnedAt + window`.
        public var pinnedAt: Date

        public init(reader: GenerationPins.Reader, generation: Int, pinnedAt: Date) {
            self.reader = reader
            self.generation = generation
            self.pinnedAt = pinnedAt
        }
    }

    public var pins: [Pin]
    /// Each pinned generation once, oldest first.
    public var generations: [Published]

    public init(pins: [Pin] = [], generations: [Published] = []) {
        self.pins = pins
        self.generations = generations
    }

    public var isEmpty: Bool { pins.isEmpty }
}

extension GenerationPins {
    /// Every pin still fresh and valid at `now`, with its generation's credentials.
    public func export(now: Date) -> PinTableState {
        table.withLock { table in
            var pins: [PinTableState.Pin] = []
            var generations: [Int: Published] = [:]
            for (reader, held) in table.pins
            where now.timeIntervalSince(held.pinnedAt) < window
                && held.generation.published.credentials.isValid(at: now)
            {
                let published = held.generation.published
                pins.append(.init(reader: reader, generation: published.generation, pinnedAt: held.pinnedAt))
                generations[published.generation] = published
            }
            pins.sort { ($0.pinnedAt, $0.reader.group) < ($1.pinnedAt, $1.reader.group) }
            return PinTableState(
                pins: pins, generations: generations.values.sorted { $0.generation < $1.generation })
        }
    }

    /// Takes over a predecessor's pins (``export(now:)``): each one still fresh and valid at
    /// `now`, whose generation is carried, keeps its generation and its deadline. A pin made
    /// "later" than `now` (a clock that went back) counts from `now`, so no pin outlives its
    /// window. The table's bounds hold as for new pins. `render` makes a carried
    /// generation's views. Returns how many carried pins the table holds afterwards.
    @discardableResult
    public func restore(_ state: PinTableState, now: Date, render: (Published) -> RenderedGeneration) -> Int {
        var rendered: [Int: RenderedGeneration] = [:]
        for published in state.generations where published.generation > 0 && rendered[published.generation] == nil {
            guard published.credentials.isValid(at: now) else { continue }
            rendered[published.generation] = render(published)
        }
        let taken = table.withLock { table -> Int in
            var restored: Set<Reader> = []
            // The newest pins, at most as many as the table holds.
            for pin in state.pins.sorted(by: { $0.pinnedAt < $1.pinnedAt }).suffix(capacity) {
                guard pin.reader.group > 0, let generation = rendered[pin.generation],
                    pin.pinnedAt.timeIntervalSince1970.isFinite, now.timeIntervalSince(pin.pinnedAt) < window
                else { continue }
                makeRoom(for: pin.reader.uid, in: &table, now: now)
                table.set(pin.reader, Pin(generation: generation, pinnedAt: min(pin.pinnedAt, now)))
                restored.insert(pin.reader)
            }
            return restored.filter { table.pins[$0] != nil }.count
        }
        if taken > 0 { notify() }
        return taken
    }
}
