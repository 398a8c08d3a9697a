import Synchronization

/// A closure slot: set or replaced at any time, read and called from any thread.
///
/// Closures shared between threads live here, never as the value of a `Mutex` itself. With
/// Swift 6.3 every `withLock` on a `Mutex` whose value is a function type (optional, or in
/// a tuple) stores that value back wrapped in one more reabstraction thunk: each use makes
/// the next call one frame deeper and keeps one more allocation. In credfs that took a FUSE
/// worker's stack to 4 MiB and the daemon's memory up by 70 MiB after 100,000 `status`
/// reads. A closure held in a struct is stored as it is (swiftlang/swift#91348, seen here at
/// `-O` as well as `-Onone`).
public final class Hook<Function: Sendable>: Sendable {
    private struct Slot: Sendable {
        var function: Function?
    }
    private let slot: Mutex<Slot>

    public init(_ function: Function? = nil) {
        slot = Mutex(Slot(function: function))
    }

    /// The closure now, if one is set.
    public var function: Function? { slot.withLock { $0.function } }

    /// Sets (or with nil, clears) the closure.
    public func set(_ function: Function?) {
        slot.withLock { $0.function = function }
    }
}
