import CFuse3
import CPosixIPC
import CredentialCore
import Foundation
import Logging
import Synchronization
import Testing

@testable import FuseBridge
@testable import credfs

/// The carried state's machinery without a mount (docs/hitless.md): the sender never makes
/// its caller wait and delivers the latest state once the store takes sends again; the
/// floor only goes up; a state at every bound stays under the push limit; sd_notify never
/// waits either.
@Suite(.timeLimit(.minutes(2))) struct StateSenderTests {
    /// A store that takes sends or refuses them (as a full socket does), and keeps what it
    /// took: each entry, and each stored state's generation.
    final class FakeStore: Sendable {
        let takesStores = Atomic<Bool>(true)
        let takesRemoves = Atomic<Bool>(true)
        let entries = Mutex<[String]>([])
        /// `state.N` names in the store now, with the generation each carries.
        let states = Mutex<[String: Int]>([:])

        var channel: StoreChannel {
            StoreChannel(
                store: { fd, name in
                    guard self.takesStores.load(ordering: .relaxed) else { return false }
                    if name.hasPrefix("state.") {
                        let state = MemoryFile.read(fd).flatMap(CarriedState.decode)
                        self.states.withLock { $0[name] = state?.published?.generation ?? 0 }
                    }
                    self.entries.withLock { $0.append("store \(name)") }
                    return true
                },
                remove: { name in
                    guard self.takesRemoves.load(ordering: .relaxed) else { return false }
                    self.states.withLock { $0[name] = nil }
                    self.entries.withLock { $0.append("remove \(name)") }
                    return true
                },
                send: { message in
                    guard self.takesStores.load(ordering: .relaxed) else { return false }
                    self.entries.withLock { $0.append("send \(message.text)") }
                    return true
                })
        }
    }

    static func published(_ generation: Int) -> Published {
        Published(
            carried: Credentials(
                accessKeyId: "STS.id\(generation)", accessKeySecret: "secret\(generation)",
                securityToken: "token\(generation)", expiration: Date(timeIntervalSinceNow: 3600)),
            generation: generation, fetchedAt: Date())
    }

    static func state(_ published: Published?) -> CarriedState {
        CarriedState(
            mountedAt: 1, restarts: 0, upstreamRequests: published?.generation ?? 0, lastRefresh: nil,
            credentials: published.map(CarriedState.CarriedCredentials.init),
            bridge: BridgeState(versions: .init(nextInode: 0, nodes: []), handles: .init(epochs: [1], files: [])),
            clockSkew: nil, pins: nil, provider: nil)
    }

    static func sender(_ store: FakeStore, sequence: Int = 0, stored: [Int] = []) -> StateSender {
        StateSender(
            sequence: sequence, stored: stored, channel: store.channel, logger: Logger(label: "test"),
            build: { state($0) })
    }

    /// A store that takes nothing (a stalled supervisor): publishing returns at once, again
    /// and again, and nothing is stored; once the store takes sends, the thread delivers
    /// the latest generation and leaves exactly one state behind.
    @Test func aStoreThatTakesNothingNeverHoldsUpAPublish() throws {
        let store = FakeStore()
        store.takesStores.store(false, ordering: .relaxed)
        store.takesRemoves.store(false, ordering: .relaxed)
        let sender = Self.sender(store)
        #expect(sender.start())
        for generation in 1...20 {
            #expect(!sender.publishing(Self.published(generation)), "the store took nothing")
            sender.changed()
        }
        #expect(store.entries.withLock { $0.isEmpty })
        #expect(sender.counts.deferred >= 20)
        store.takesStores.store(true, ordering: .relaxed)
        store.takesRemoves.store(true, ordering: .relaxed)
        try waitUntil("the latest state in the store") { store.states.withLock { $0 } == ["state.1": 20] }
        // Retries only: no more states than that one push (and at most one more change).
        #expect(sender.counts.pushes <= 2)
    }

    /// What is queued (the INIT recording, the connection) goes first, in order, then the
    /// state; a successor's first push replaces every state its predecessor left.
    @Test func messagesGoInOrderAndAPredecessorsStatesGo() throws {
        let store = FakeStore()
        let sender = Self.sender(store, sequence: 7, stored: [5, 7])
        let a = credfs_memfd("a")
        let b = credfs_memfd("b")
        sender.enqueue(.store(fd: a, name: "fuse-init"))
        sender.enqueue(.store(fd: b, name: "fuse"))
        sender.enqueue(.send(.serving))
        sender.changed()
        #expect(sender.start())
        try waitUntil("the state and the removals") { store.entries.withLock { $0.count } == 6 }
        #expect(
            store.entries.withLock { $0 } == [
                "store fuse-init", "store fuse", "send SERVING=1", "store state.8", "remove state.5", "remove state.7",
            ])
        #expect(fcntl(a, F_GETFD) < 0 && fcntl(b, F_GETFD) < 0, "sent descriptors are closed")
    }

    /// Removals that cannot go (while stores can) never let states pile up in the store: a
    /// successor is handed at most ``StateSender/storedAtMost`` of them.
    @Test func statesInTheStoreStayFewWhenRemovalsCannotGo() throws {
        let store = FakeStore()
        store.takesRemoves.store(false, ordering: .relaxed)
        let sender = Self.sender(store)
        #expect(sender.start())
        for generation in 1...30 { sender.publishing(Self.published(generation)) }
        #expect(store.states.withLock { $0.count } == StateSender.storedAtMost)
        store.takesRemoves.store(true, ordering: .relaxed)
        try waitUntil("one state, the newest") { store.states.withLock { $0.values.sorted() } == [30] }
    }

    /// The floor's record reads back, only ever goes up, and a descriptor that is not a
    /// floor (or holds counts no mount reaches) reads as none.
    @Test func theFloorOnlyGoesUp() throws {
        let floor = try #require(StateFloor.make(StateFloor.Record(mountedAt: 1_700_000_000)))
        defer { close(floor.fd) }
        floor.raise {
            $0.generation = 12
            $0.restarts = 3
            $0.upstreamRequests = 40
        }
        floor.raise {
            $0.generation = 5
            $0.restarts = 1
            $0.mountedAt = 99
        }
        let record = StateFloor.Record(generation: 12, restarts: 3, upstreamRequests: 40, mountedAt: 1_700_000_000)
        #expect(floor.current == record)
        #expect(StateFloor.read(floor.fd) == record, "the memfd holds what the process holds")
        let copy = fcntl(floor.fd, F_DUPFD_CLOEXEC, 0)
        let inherited = StateFloor.inherited(fd: copy)
        defer { close(copy) }
        #expect(inherited.record == record)

        let junk = MemoryFile.make(name: "junk", bytes: Array(repeating: 0x41, count: 64))
        defer { close(junk) }
        #expect(StateFloor.read(junk) == nil)
        var words: [UInt64] = [StateFloor.magic, UInt64(StateFloor.largest) + 1, 0, 0, 0, 0, 0, 0]
        let huge = MemoryFile.make(
            name: "huge", bytes: withUnsafeBytes(of: &words) { Array($0) })
        defer { close(huge) }
        #expect(StateFloor.read(huge) == nil, "a generation no mount reaches")
    }

    /// A state at every bound at once (the pin table full, the node budget full of
    /// real-sized credentials, every carried epoch) stays under the push limit, and reads back.
    @Test func aStateAtEveryBoundStaysUnderThePushLimit() throws {
        let token = String(repeating: "T", count: 1500)
        func credentials(_ generation: Int) -> Published {
            Published(
                carried: Credentials(
                    accessKeyId: "STS.NUgYrLnoC37mZZCNnAbez2pHr\(generation)",
                    accessKeySecret: "4Lgvs3Kxo1XkgsXjrZYNWDfkCBTNgR9YhYCHXmHmbPi\(generation)",
                    securityToken: token + "\(generation)", expiration: Date(timeIntervalSinceNow: 3600)),
                generation: generation, fetchedAt: Date())
        }
        let pins = GenerationPins()
        let table = PinTableState(
            pins: (0..<pins.capacity).map {
                PinTableState.Pin(
                    reader: .init(group: Int32(1_000_000 + $0), uid: UInt32(60_000 + $0 % 4)),
                    generation: 100 + $0 % 3, pinnedAt: Date(timeIntervalSince1970: 1_764_000_000.123456))
            },
            generations: (100..<103).map(credentials))
        let file = Array(repeating: UInt8(ascii: "x"), count: 2000)
        let nodes = (1...200).flatMap { version in
            (0..<7).map { index in
                BridgeState.Node(
                    inode: VersionTable.inode(file: index, version: UInt64(version))!, fileIndex: index,
                    name: "credentials", version: UInt64(version), bytes: Data(file), mtime: 1_764_000_000.5,
                    lookups: 3)
            }
        }
        var state = Self.state(credentials(103))
        state.bridge.versions.nodes = BridgeState.newestFirst(nodes, budget: BridgeState.nodeBudget)
        state.bridge.handles.epochs = (0..<HandleTable.carriedEpochsAtMost).map { UInt32.max - UInt32($0) }
        state.pins = CarriedState.CarriedPins(table)
        state.provider = ProviderCachedState(
            provider: "ecs-ram-role", values: ["token": String(repeating: "m", count: 100), "role": "role"])
        let bytes = try #require(state.encoded())
        // The size alone: a failed expectation renders the values it names.
        let size = bytes.count
        #expect(size <= CarriedState.pushLimit, "\(size) bytes")
        let back = try #require(CarriedState.decode(bytes))
        #expect(back.pins?.pins.count == pins.capacity)
        #expect(back.bridge.versions.nodes.count == state.bridge.versions.nodes.count)
        print("state at every bound: \(size) bytes (limit \(CarriedState.pushLimit))")
    }

    /// sd_notify to a socket whose queue is full (a stalled service manager): the call
    /// returns, and `READY=1` arrives once the queue has room again.
    @Test func aFullNotifySocketNeverHoldsUpTheCaller() throws {
        let name = "@credfs-test-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let socket = credfs_bind_datagram(name)
        try #require(socket >= 0)
        defer { close(socket) }
        // Fill the queue: a send that would wait fails now instead.
        var filled = 0
        while filled < 10_000, credfs_send_fds(name, "x", 1, nil, 0) == 0 { filled += 1 }
        #expect(filled < 10_000, "the queue never filled")
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": name])
        let returned = Atomic<Bool>(false)
        Thread {
            notifier.ready(status: "serving generation 1")
            notifier.status("serving generation 2")
            returned.store(true, ordering: .relaxed)
        }.start()
        try waitUntil("the notifier to return") { returned.load(ordering: .relaxed) }
        #expect(notifier.isPending)
        // The service manager reads again.
        var messages: [String] = []
        try waitUntil("READY=1 after the queue drained") {
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = recv(socket, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                guard n > 0 else { break }
                messages.append(String(decoding: buffer.prefix(n), as: UTF8.self))
            }
            return messages.contains { $0.contains("READY=1") }
        }
        let ready = messages.first { $0.contains("READY=1") } ?? ""
        #expect(ready.contains("STATUS=serving generation 2"), "the latest status went with it: \(ready)")
        try waitUntil("nothing left to send") { !notifier.isPending }
    }
}
