import Synchronization
import Testing

/// One shape for the fake upstreams (URI, STS, AssumeRole, ECS metadata): a protocol's
/// answers, decided under a lock from the fake's `State` and served by ``FakeHTTPServer``.
/// A fake only says how it answers (`answer(_:_:)`); starting, stopping and reading or
/// changing its state are here.
protocol FakeUpstream: Sendable {
    associatedtype State: Sendable
    var state: Locked<State> { get }
    var http: FakeHTTPServer { get }
    /// The answer to one request (called with the lock held).
    static func answer(_ request: FakeRequest, _ state: Locked<State>) -> FakeReply
}

extension FakeUpstream {
    /// The lock around `initial` and the server that answers from it, for an `init`.
    static func serving(_ initial: State, dateOffset: Double? = nil) -> (Locked<State>, FakeHTTPServer) {
        let state = Locked(initial)
        return (state, FakeHTTPServer(dateOffset: dateOffset) { request in answer(request, state) })
    }

    /// Starts listening on 127.0.0.1; in a test marked ``StopsFakes`` it is stopped (and
    /// awaited) when the test ends.
    func start() async throws { try await http.start() }
    func stop() async { await http.stop() }
    var endpoint: String { http.baseURL }
    func set(_ change: (inout State) -> Void) { state.withLock { change(&$0) } }
    func read<T>(_ get: (State) -> T) -> T { state.withLock { get($0) } }
}

/// A fake's state that hands out ``FakeGenerations``.
protocol RotatingState {
    var credentials: FakeGenerations { get set }
}

extension FakeUpstream where State: RotatingState {
    /// The next request gets new credentials.
    func rotate() { state.withLock { $0.credentials.rotate() } }
}

/// `@Suite(.stopsFakes)`: every fake started during a test (``FakeHTTPServer/start()``) is
/// stopped when the test ends, awaited, whether it passed or threw; no
/// `defer { Task { await fake.stop() } }` that nothing waits for.
struct StopsFakes: SuiteTrait, TestTrait, TestScoping {
    var isRecursive: Bool { true }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> StopsFakes? { testCase == nil ? nil : self }

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let scope = FakeScope()
        try await FakeScope.$current.withValue(scope) {
            do {
                try await function()
            } catch {
                await scope.stopAll()
                throw error
            }
            await scope.stopAll()
        }
    }
}

extension Trait where Self == StopsFakes {
    static var stopsFakes: Self { StopsFakes() }
}

/// The fakes a test started (``StopsFakes``).
final class FakeScope: Sendable {
    @TaskLocal static var current: FakeScope?
    private let started = Mutex<[FakeHTTPServer]>([])

    func add(_ server: FakeHTTPServer) { started.withLock { $0.append(server) } }

    func stopAll() async {
        let servers = started.withLock { s -> [FakeHTTPServer] in
            defer { s = [] }
            return s
        }
        for server in servers { await server.stop() }
    }
}
