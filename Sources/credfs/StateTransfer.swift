import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Synchronization

/// What a server hands to its successor, in memory only (a sealed memfd in the fd store):
/// the credentials it served, the mount's facts, what the kernel references, the
/// process-group pins (with the generations they hold) and the provider's cached state.
/// It holds secrets: never logged, never written to disk.
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

    var format = 1
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

    /// The state now; `publishing` is a generation about to be served (it replaces the
    /// refresher's current one).
    static func make(
        refresher: Refresher, views: CredentialViewSource, fs: FuseFileSystem, mountedAt: Date, restarts: Int,
        publishing: Published? = nil
    ) -> CarriedState {
        let machine = refresher.machine
        let pins = views.exportPins()
        return CarriedState(
            mountedAt: mountedAt.timeIntervalSince1970, restarts: restarts,
            upstreamRequests: machine.upstreamRequests, lastRefresh: machine.lastRefresh?.timeIntervalSince1970,
            credentials: (publishing ?? machine.published).map(CarriedCredentials.init), bridge: fs.exportState(),
            clockSkew: machine.clockSkew, pins: pins.isEmpty ? nil : CarriedPins(pins),
            provider: refresher.provider.cachedState)
    }

    func encoded() -> [UInt8]? { (try? JSONEncoder().encode(self)).map { Array($0) } }

    static func decode(_ bytes: [UInt8]) -> CarriedState? {
        try? JSONDecoder().decode(CarriedState.self, from: Data(bytes))
    }
}

/// Keeps the store's copy of the state current: after each change (coalesced over a few
/// milliseconds), a new sealed memfd named `state.N` goes in and `state.N-1` goes out, so a
/// `kill -9` at any moment leaves at least one whole state behind.
final class StateSender: Sendable {
    private let build: @Sendable (Published?) -> CarriedState
    private struct Inner {
        var sequence: Int
        var scheduled = false
    }
    private let inner: Mutex<Inner>
    private let push = Mutex<Void>(())

    init(firstSequence: Int, build: @escaping @Sendable (Published?) -> CarriedState) {
        self.build = build
        inner = Mutex(Inner(sequence: firstSequence))
    }

    /// Something changed: push soon (never from the caller's thread).
    func changed() {
        let schedule = inner.withLock { inner -> Bool in
            defer { inner.scheduled = true }
            return !inner.scheduled
        }
        guard schedule else { return }
        Task.detached { [self] in
            try? await Task.sleep(for: .milliseconds(5))
            inner.withLock { $0.scheduled = false }
            pushNow()
        }
    }

    /// Pushes the state now (with `publishing` as the generation served, when given);
    /// returns whether the store took it.
    @discardableResult
    func pushNow(publishing: Published? = nil) -> Bool {
        push.withLock { _ in
            guard let bytes = build(publishing).encoded() else { return false }
            let fd = MemoryFile.make(name: "credfs-state", bytes: bytes)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            let sequence = inner.withLock { inner -> Int in
                inner.sequence += 1
                return inner.sequence
            }
            guard FDStore.store(fd, name: "state.\(sequence)") else { return false }
            FDStore.remove(name: "state.\(sequence - 1)")
            return true
        }
    }
}
