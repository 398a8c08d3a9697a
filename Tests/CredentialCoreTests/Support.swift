import Dispatch
import Foundation
import Logging
import Synchronization
import Testing

@testable import CredentialCore

/// Fixed instants so every expectation is an exact number.
enum Fixture {
    /// 2024-05-21T10:39:29Z
    static let expiration = Date(timeIntervalSince1970: 1_716_287_969)
    /// An hour before ``expiration``.
    static let t0 = expiration.addingTimeInterval(-3600)

    static let accessKeyId = "STS.NUgYrLnoC37mZZCNnAbez2HDd7"
    static let secret = "SECRET-3vq8xZ-must-never-leak"
    static let token = "TOKEN-DFE32GkQ-must-never-leak"

    static func sts(
        id: String = accessKeyId, secret: String = secret, token: String = token,
        expiration: Date = expiration
    ) -> Credentials {
        Credentials(
            accessKeyId: id, accessKeySecret: secret, securityToken: token, expiration: expiration)
    }

    static func accessKeyPair(id: String = "LTAI5tAbCdEfGhIjKlMn", secret: String = secret)
        -> Credentials
    {
        Credentials(accessKeyId: id, accessKeySecret: secret, securityToken: nil, expiration: nil)
    }
}

/// Polls `condition` until it holds or `timeout` passes: a bounded condition wait, not a
/// sleep standing in for one. Returns whether the condition held.
func waitUntil(
    timeout: Duration = .seconds(5), _ condition: @Sendable () -> Bool
) async -> Bool {
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    while clock.now < deadline {
        if condition() { return true }
        await Task.yield()
        try? await Task.sleep(for: .milliseconds(2))
    }
    return condition()
}

/// Runs a blocking call (one that parks its thread) off the cooperative pool.
func offPool<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread.detachNewThread { continuation.resume(returning: body()) }
    }
}

/// A provider whose answers the test scripts, that counts its calls and that can hold a
/// fetch in flight until released.
final class ScriptedProvider: CredentialProvider, Sendable {
    let name = "test"

    struct State {
        var calls = 0
        var gated = false
        var parked: [CheckedContinuation<Void, Never>] = []
        var answer: @Sendable () throws -> Credentials
    }
    private let state: Mutex<State>

    init(gated: Bool = false, answer: @escaping @Sendable () throws -> Credentials) {
        state = Mutex(State(gated: gated, answer: answer))
    }

    var calls: Int { state.withLock { $0.calls } }
    /// Fetches currently held at the gate.
    var parkedCount: Int { state.withLock { $0.parked.count } }

    func setAnswer(_ answer: @escaping @Sendable () throws -> Credentials) {
        state.withLock { $0.answer = answer }
    }

    func answer(with credentials: Credentials) { setAnswer { credentials } }

    func fail(with error: any Error & Sendable) { setAnswer { throw error } }

    /// Opens the gate: parked fetches continue, later ones do not stop.
    func release() {
        let parked = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.gated = false
            defer { s.parked = [] }
            return s.parked
        }
        for continuation in parked { continuation.resume() }
    }

    func fetch() async throws -> Credentials {
        let gated = state.withLock { s -> Bool in
            s.calls += 1
            return s.gated
        }
        if gated {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let stillGated = state.withLock { s -> Bool in
                    guard s.gated else { return false }
                    s.parked.append(continuation)
                    return true
                }
                if !stillGated { continuation.resume() }
            }
        }
        return try state.withLock { $0.answer }()
    }
}

/// A virtual clock: `now()` is whatever the test set, and sleepers wake only when the test
/// advances the clock past their deadline (or when they are cancelled).
final class VirtualClock: RefreshClock, Sendable {
    private struct Sleeper {
        var deadline: Date
        var continuation: CheckedContinuation<Void, any Error>
    }
    private struct State {
        var now: Date
        var sleepers: [UUID: Sleeper] = [:]
    }
    private let state: Mutex<State>

    init(_ now: Date) { state = Mutex(State(now: now)) }

    func now() -> Date { state.withLock { $0.now } }

    /// How many tasks are sleeping on this clock right now.
    var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    /// The earliest deadline anyone sleeps until.
    var earliestDeadline: Date? { state.withLock { $0.sleepers.values.map(\.deadline).min() } }

    func advance(to date: Date) {
        let woken = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            s.now = date
            let due = s.sleepers.filter { $0.value.deadline <= date }
            for key in due.keys { s.sleepers[key] = nil }
            return due.values.map(\.continuation)
        }
        for continuation in woken { continuation.resume() }
    }

    func advance(by seconds: TimeInterval) { advance(to: now().addingTimeInterval(seconds)) }

    func sleep(until deadline: Date) async throws {
        let id = UUID()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation {
                (continuation: CheckedContinuation<Void, any Error>) in
                let outcome = state.withLock { s -> Result<Void, any Error>? in
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if s.now >= deadline { return .success(()) }
                    s.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return nil
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let sleeper = state.withLock { s -> Sleeper? in
                defer { s.sleepers[id] = nil }
                return s.sleepers[id]
            }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }
}

/// Counts `onPublish` calls.
final class PublishLog: Sendable {
    private let generations = Mutex<[Int]>([])
    func record(_ published: Published) { generations.withLock { $0.append(published.generation) } }
    var all: [Int] { generations.withLock { $0 } }
}

struct NotACredentialError: Error {
    var detail = "contains SECRET-3vq8xZ-must-never-leak"
}

final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}

extension Logger {
    /// Keeps test output readable.
    static let quiet = Logger(label: "credfs.test") { _ in SwiftLogNoOpLogHandler() }

    /// A logger whose every line (message and metadata) lands in `lines`.
    static func capturing(into lines: LogLines) -> Logger {
        Logger(label: "credfs.test") { _ in CapturingLogHandler(lines: lines) }
    }
}

final class LogLines: Sendable {
    private let lines = Mutex<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

struct CapturingLogHandler: LogHandler {
    let lines: LogLines
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        let rendered = all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(
            separator: " ")
        lines.append("\(event.level) \(event.message) \(rendered)")
    }
}
