import Foundation
import Synchronization
import Testing

@testable import CredentialCore

/// What a takeover carries of the core (docs/hitless.md): the process-group pins with the
/// generations they hold, the clock they are kept in, and a provider's cached state. Each
/// test plays the old server and its successor with two refreshers on one virtual clock.
@Suite struct PinCarryTests {
    static let reader = GenerationPins.Reader(group: 4242, uid: 1000)
    static let other = GenerationPins.Reader(group: 4343, uid: 1000)
    static let mountedAt = Fixture.t0.addingTimeInterval(-5)

    static func second(_ clock: VirtualClock) -> Credentials {
        Fixture.sts(
            id: "STS.SECONDxAAAAAAAAAAAA", secret: "second-secret", token: "second-token",
            expiration: clock.now().addingTimeInterval(3600))
    }

    /// The old server: generation 1 served, `reader` pinned to it by a field read, then a
    /// rotation to generation 2.
    static func oldServer(_ clock: VirtualClock) async -> (Refresher, CredentialViewSource) {
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let views = CredentialViewSource(
            refresher: refresher, initialWait: 0.2, mountedAt: mountedAt, version: "9.9.9")
        await refresher.refresh()
        #expect(generation(views.open(.accessKeyId, reader: reader)) == 1)
        clock.advance(by: 2)
        provider.answer(with: second(clock))
        await refresher.refresh()
        #expect(refresher.serving()?.generation == 2)
        return (refresher, views)
    }

    /// A successor: a fresh refresher and view source that restore what `old` exports.
    static func successor(
        of old: (Refresher, CredentialViewSource), clock: VirtualClock, pins: PinTableState? = nil
    ) -> (Refresher, CredentialViewSource, Int) {
        let provider = ScriptedProvider { throw CredentialError("the successor must not fetch") }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let machine = old.0.machine
        if let published = machine.published {
            refresher.restore(
                published, upstreamRequests: machine.upstreamRequests, lastRefresh: machine.lastRefresh,
                clockSkew: machine.clockSkew)
        }
        let views = CredentialViewSource(
            refresher: refresher, initialWait: 0.2, mountedAt: mountedAt, version: "9.9.9")
        let taken = views.restorePins(pins ?? old.1.exportPins())
        return (refresher, views, taken)
    }

    static func generation(_ content: ViewContent) -> Int? {
        guard case .bytes(_, _, let generation) = content else { return nil }
        return generation
    }

    static func text(_ content: ViewContent) -> String? {
        guard case .bytes(let bytes, _, _) = content else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    @Test func exportHoldsEachLivePinAndItsGeneration() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        let state = old.1.exportPins()
        #expect(state.pins == [.init(reader: Self.reader, generation: 1, pinnedAt: Fixture.t0)])
        #expect(state.generations.map(\.generation) == [1])
        #expect(state.generations.first?.credentials == Fixture.sts())
        #expect(state.generations.first?.fetchedAt == Fixture.t0)
    }

    @Test func aSuccessorServesAPinnedGroupItsPreviousGeneration() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        let (_, views, taken) = Self.successor(of: old, clock: clock)
        #expect(taken == 1)
        // The pinned group reads generation 1's other fields, byte for byte as before.
        #expect(Self.text(views.open(.accessKeySecret, reader: Self.reader)) == Fixture.secret)
        #expect(Self.text(views.open(.token, reader: Self.reader)) == Fixture.token)
        #expect(Self.generation(views.lookup(.token, reader: Self.reader)) == 1)
        #expect(
            views.open(.expiration, reader: Self.reader)
                == .bytes(Render.expirationFile(Fixture.sts()) ?? [], mtime: Fixture.t0, generation: 1))
        // Any other group, and the one-read views, get generation 2.
        #expect(Self.text(views.open(.accessKeySecret, reader: Self.other)) == "second-secret")
        #expect(Self.generation(views.open(.credentials, reader: Self.reader)) == 2)
        #expect(Self.generation(views.lookup(.token, reader: Self.other)) == 2)
    }

    @Test func aCarriedPinKeepsItsDeadline() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        let window = old.1.pins.window
        clock.advance(by: 3)
        let (_, views, taken) = Self.successor(of: old, clock: clock)
        #expect(taken == 1)
        // Pinned at t0: it holds until t0 + window, not window after the takeover.
        clock.advance(to: Fixture.t0.addingTimeInterval(window - 0.5))
        #expect(Self.generation(views.open(.accessKeySecret, reader: Self.reader)) == 1)
        clock.advance(to: Fixture.t0.addingTimeInterval(window))
        #expect(Self.generation(views.open(.accessKeySecret, reader: Self.reader)) == 2)
    }

    @Test func stalePinsAreNeitherExportedNorTaken() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        let state = old.1.exportPins()
        clock.advance(to: Fixture.t0.addingTimeInterval(old.1.pins.window))
        #expect(old.1.exportPins().isEmpty)
        // A state exported earlier and taken once its window has passed: nothing is taken.
        let (_, views, taken) = Self.successor(of: old, clock: clock, pins: state)
        #expect(taken == 0)
        #expect(views.pins.count == 0)
    }

    @Test func pinsOfAGenerationNewerThanTheServedOneOrNotCarriedAreDropped() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        var state = old.1.exportPins()
        let newer = Published(carried: Self.second(clock), generation: 3, fetchedAt: clock.now())
        state.generations.append(newer)
        state.pins.append(.init(reader: Self.other, generation: 3, pinnedAt: clock.now()))
        state.pins.append(
            .init(reader: GenerationPins.Reader(group: 7, uid: 1000), generation: 9, pinnedAt: clock.now()))
        state.pins.append(
            .init(reader: GenerationPins.Reader(group: 0, uid: 1000), generation: 1, pinnedAt: clock.now()))
        let (_, views, taken) = Self.successor(of: old, clock: clock, pins: state)
        #expect(taken == 1)
        #expect(Self.generation(views.open(.accessKeySecret, reader: Self.other)) == 2)
    }

    @Test func aPinFromTheFutureCountsFromNow() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        var state = old.1.exportPins()
        state.pins[0].pinnedAt = clock.now().addingTimeInterval(3600)
        let (_, views, taken) = Self.successor(of: old, clock: clock, pins: state)
        #expect(taken == 1)
        clock.advance(by: views.pins.window)
        #expect(Self.generation(views.open(.accessKeySecret, reader: Self.reader)) == 2)
    }

    @Test func restoringKeepsThePerUserBound() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        var state = old.1.exportPins()
        state.pins = (1...5).map {
            .init(
                reader: GenerationPins.Reader(group: Int32(100 + $0), uid: 1000), generation: 1,
                pinnedAt: Fixture.t0.addingTimeInterval(Double($0) / 10))
        }
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        refresher.restore(
            Published(carried: Self.second(clock), generation: 2, fetchedAt: clock.now()), upstreamRequests: 2,
            lastRefresh: nil)
        let views = CredentialViewSource(
            refresher: refresher, initialWait: 0.2, mountedAt: Self.mountedAt, version: "9.9.9",
            pins: GenerationPins(window: 10, capacity: 8, perUserCapacity: 2))
        #expect(views.restorePins(state) == 2)
        // The user keeps its two newest pins.
        #expect(views.pins.count == 2)
        let kept = views.exportPins().pins.map(\.reader.group).sorted()
        #expect(kept == [104, 105])
    }

    @Test func aNewPinIsReportedOnceAndARepeatedReadIsNot() async {
        let clock = VirtualClock(Fixture.t0)
        let provider = ScriptedProvider { Fixture.sts() }
        let refresher = Refresher(provider: provider, clock: clock, random: { 0 }, logger: .quiet)
        let views = CredentialViewSource(
            refresher: refresher, initialWait: 0.2, mountedAt: Self.mountedAt, version: "9.9.9")
        let changes = Counter()
        views.pins.onChange { changes.increment() }
        await refresher.refresh()
        _ = views.open(.accessKeyId, reader: Self.reader)
        _ = views.open(.accessKeySecret, reader: Self.reader)
        _ = views.open(.expiration, reader: Self.other)
        #expect(changes.value == 1)
        _ = views.open(.token, reader: Self.other)
        #expect(changes.value == 2)
    }

    @Test func theClockSkewCarriesOverSoPinsAndExpiryKeepTheirClock() async {
        let clock = VirtualClock(Fixture.t0)
        let old = await Self.oldServer(clock)
        // The old server learnt that the cloud is 120 s ahead.
        old.0.inner.withLock {
            $0.machine.observeClock(serverDate: clock.now().addingTimeInterval(120), at: clock.now())
        }
        let (refresher, _, _) = Self.successor(of: old, clock: clock)
        #expect(refresher.cloudNow() == old.0.cloudNow())
        #expect(refresher.machine.localExpiry == old.0.machine.localExpiry)
    }

    // MARK: provider cached state

    @Test func theMetadataTokenAndRoleCarryOverToTheSameEndpoint() {
        let now = Fixture.t0
        let old = EcsMetadataProvider(endpoint: "http://127.0.0.1:9", clock: VirtualClock(now), logger: .quiet)
        #expect(old.cachedState == nil)
        let renewAt = now.addingTimeInterval(3600)
        old.state.withLock {
            $0.token = "imds-token-abc"
            $0.tokenRenewAt = renewAt
            $0.discoveredRole = "EcsRole"
        }
        let carried = old.cachedState
        #expect(carried?.provider == "ecs-ram-role")
        // Through the state's own encoding, as a takeover carries it.
        let decoded = carried.flatMap {
            try? JSONDecoder().decode(ProviderCachedState.self, from: JSONEncoder().encode($0))
        }
        #expect(decoded == carried)

        let successor = EcsMetadataProvider(endpoint: "http://127.0.0.1:9/", clock: VirtualClock(now), logger: .quiet)
        successor.restoreCachedState(decoded ?? ProviderCachedState(provider: "", values: [:]))
        let held = successor.state.withLock { $0 }
        #expect(held.token == "imds-token-abc")
        #expect(held.tokenRenewAt == renewAt)
        #expect(held.discoveredRole == "EcsRole")
    }

    @Test func aCarriedMetadataStateThatCannotBeTrustedIsIgnored() {
        let now = Fixture.t0
        let good: [String: String] = [
            "endpoint": "http://127.0.0.1:9", "token": "imds-token-abc",
            "tokenRenewAt": String(now.addingTimeInterval(600).timeIntervalSince1970), "role": "EcsRole",
        ]
        func restored(
            _ change: (inout [String: String]) -> Void, provider: String = "ecs-ram-role", role: String? = nil
        ) -> EcsMetadataProvider.State {
            var values = good
            change(&values)
            let successor = EcsMetadataProvider(
                endpoint: "http://127.0.0.1:9", role: role, clock: VirtualClock(now), logger: .quiet)
            successor.restoreCachedState(ProviderCachedState(provider: provider, values: values))
            return successor.state.withLock { $0 }
        }
        #expect(restored({ _ in }).token == "imds-token-abc")
        #expect(restored({ _ in }, provider: "uri").token == nil)
        #expect(restored({ $0["endpoint"] = "http://100.100.100.200" }).token == nil)
        #expect(restored({ $0["endpoint"] = "http://100.100.100.200" }).discoveredRole == nil)
        // Past its renewal point, or kept longer than a new token would be.
        #expect(restored({ $0["tokenRenewAt"] = String(now.timeIntervalSince1970) }).token == nil)
        #expect(
            restored({ $0["tokenRenewAt"] = String(now.addingTimeInterval(30_000).timeIntervalSince1970) }).token == nil
        )
        #expect(restored({ $0["tokenRenewAt"] = "nan" }).token == nil)
        #expect(restored({ $0["token"] = "two words" }).token == nil)
        #expect(restored({ $0["token"] = String(repeating: "t", count: 5000) }).token == nil)
        #expect(restored({ $0["role"] = "../admin" }).discoveredRole == nil)
        #expect(restored({ $0["role"] = "" }).discoveredRole == nil)
        // A configured role is never replaced by a discovered one.
        #expect(restored({ _ in }, role: "Configured").discoveredRole == nil)
    }

    @Test func autoCarriesItsChoiceAndTheMetadataState() {
        let environment = ["ALIBABA_CLOUD_CREDENTIALS_URI": "http://127.0.0.1:9/credentials"]
        let clock = VirtualClock(Fixture.t0)
        let old = AutoProvider(
            environment: environment, imdsEndpoint: "http://127.0.0.1:8", clock: clock, logger: .quiet)
        #expect(old.cachedState == nil)
        old.ecs?.state.withLock { $0.discoveredRole = "EcsRole" }
        if let uri = old.uri { old.keep(uri) }
        let carried = old.cachedState
        #expect(carried?.values["source"] == "uri")
        #expect(carried?.values["ecs.role"] == "EcsRole")

        let successor = AutoProvider(
            environment: environment, imdsEndpoint: "http://127.0.0.1:8", clock: clock, logger: .quiet)
        successor.restoreCachedState(carried ?? ProviderCachedState(provider: "", values: [:]))
        #expect(successor.name == "auto:uri")
        #expect(successor.ecs?.state.withLock { $0.discoveredRole } == "EcsRole")
        // Without that source configured, nothing is chosen.
        let bare = AutoProvider(environment: [:], imdsEndpoint: "http://127.0.0.1:8", clock: clock, logger: .quiet)
        bare.restoreCachedState(carried ?? ProviderCachedState(provider: "", values: [:]))
        #expect(bare.name == "auto")
    }
}
