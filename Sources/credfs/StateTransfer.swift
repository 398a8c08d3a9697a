import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Synchronization

/// What a server hands to its successor, in memory only (a sealed memfd in the fd store):
/// the credentials it served, the mount's facts, and what the kernel references.
/// It holds secrets: never logged, never written to disk.
struct CarriedState: Codable {
    struct CarriedCredentials: Codable {
        var accessKeyId: String
        var accessKeySecret: String
        var securityToken: String?
        var expiration: Double?
        var generation: Int
        var fetchedAt: Double
    }

    var format = 1
    var mountedAt: Double
    var restarts: Int
    var upstreamRequests: Int
    var lastRefresh: Double?
    var credentials: CarriedCredentials?
    var bridge: BridgeState

    var published: Published? {
        guard let c = credentials, c.generation > 0 else { return nil }
        return Published(
            carried: Credentials(
                accessKeyId: c.accessKeyId, accessKeySecret: c.accessKeySecret, securityToken: c.securityToken,
                expiration: c.expiration.map { Date(timeIntervalSince1970: $0) }),
            generation: c.generation, fetchedAt: Date(timeIntervalSince1970: c.fetchedAt))
    }

    /// The state now; `publishing` is a generation about to be served (it replaces the
    /// refresher's current one).
    static func make(
        refresher: Refresher, fs: FuseFileSystem, mountedAt: Date, restarts: Int, publishing: Published? = nil
    ) -> CarriedState {
        let machine = refresher.machine
        let credentials = (publishing ?? machine.published).map { p in
            CarriedCredentials(
                accessKeyId: p.credentials.accessKeyId, accessKeySecret: p.credentials.accessKeySecret,
                securityToken: p.credentials.securityToken,
                expiration: p.credentials.expiration?.timeIntervalSince1970, generation: p.generation,
                fetchedAt: p.fetchedAt.timeIntervalSince1970)
        }
        return CarriedState(
            mountedAt: mountedAt.timeIntervalSince1970, restarts: restarts,
            upstreamRequests: machine.upstreamRequests, lastRefresh: machine.lastRefresh?.timeIntervalSince1970,
            credentials: credentials, bridge: fs.exportState())
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
