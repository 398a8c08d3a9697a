import CFuse3
import Glibc
import Posix
import Synchronization

/// Requests whose answer is not known yet (a file waiting for its first content), held
/// without a worker thread: the handler returns at once and the request is answered later,
/// from ``FuseFileSystem/wake()`` or from the deadline timer, never from another request.
final class Parking: Sendable {
    /// What a parked request asked for, copied out of libfuse's buffers (which do not
    /// outlive the handler).
    enum Kind: Sendable, Equatable {
        case open(inode: UInt64, caller: Caller)
        case lookup(name: [UInt8], caller: Caller)
    }

    struct Entry: @unchecked Sendable {
        /// Only the reply layer (FuseOps.swift) looks behind it.
        let request: fuse_req_t
        let deadline: ContinuousClock.Instant
        let kind: Kind
    }

    /// More parked requests than this are answered EIO at once.
    static let capacity = 4096

    private struct State {
        var entries: [Entry] = []
        /// Bumped by every wake: a handler that saw an older epoch must look again.
        var epoch: UInt64 = 0
        var stopped = false
    }

    private let state = Mutex(State())
    /// Wakes the timer thread when deadlines change or parking stops (a non-blocking pipe).
    private let wakeRead: Int32
    private let wakeWrite: Int32

    init() {
        let pipe = Spawn.pipe()
        wakeRead = pipe?.read ?? -1
        wakeWrite = pipe?.write ?? -1
        for fd in [wakeRead, wakeWrite] where fd >= 0 { _ = fcntl(fd, F_SETFL, O_NONBLOCK) }
    }

    deinit {
        for fd in [wakeRead, wakeWrite] where fd >= 0 { close(fd) }
    }

    var epoch: UInt64 { state.withLock { $0.epoch } }
    var count: Int { state.withLock { $0.entries.count } }

    enum Outcome { case parked, lookAgain, refused }

    /// Parks `entry` unless a wake came since `epoch` (then the caller looks again), or
    /// parking is full or stopped (then the caller answers EIO).
    func park(_ entry: Entry, seen epoch: UInt64) -> Outcome {
        let outcome = state.withLock { s -> Outcome in
            if s.stopped || s.entries.count >= Self.capacity { return .refused }
            if s.epoch != epoch { return .lookAgain }
            s.entries.append(entry)
            return .parked
        }
        if case .parked = outcome { poke() }
        return outcome
    }

    /// Every parked request, removed; the epoch moves on.
    func takeAll() -> [Entry] {
        state.withLock { s in
            s.epoch &+= 1
            defer { s.entries = [] }
            return s.entries
        }
    }

    /// Stops parking and returns what was parked (to be answered before the session goes).
    func stop() -> [Entry] {
        let entries = state.withLock { s in
            s.stopped = true
            s.epoch &+= 1
            defer { s.entries = [] }
            return s.entries
        }
        poke()
        return entries
    }

    /// Runs the deadline timer on a thread of its own until ``stop()``: requests past
    /// their deadline are handed to `expire`.
    func runTimer(expire: @escaping @Sendable ([Entry]) -> Void) {
        startThread(name: "fuse-park-timer") { [self] in
            while true {
                let now = ContinuousClock.now
                let (due, next, stopped) = takeDue(now: now)
                if !due.isEmpty { expire(due) }
                if stopped { return }
                var timeout: Int32 = -1
                if let next {
                    let (seconds, attoseconds) = (next - now).components
                    let ms = max(0, seconds) * 1000 + max(0, attoseconds) / 1_000_000_000_000_000 + 1
                    timeout = Int32(clamping: ms)
                }
                var fd = pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)
                if poll(&fd, 1, timeout) > 0 {
                    var drain = [UInt8](repeating: 0, count: 64)
                    _ = read(wakeRead, &drain, drain.count)
                }
            }
        }
    }

    /// Removes the requests whose deadline is `now` or earlier; also the next deadline of
    /// those left, and whether parking has stopped.
    func takeDue(now: ContinuousClock.Instant) -> (due: [Entry], next: ContinuousClock.Instant?, stopped: Bool) {
        state.withLock { s in
            let due = s.entries.filter { $0.deadline <= now }
            s.entries.removeAll { $0.deadline <= now }
            return (due, s.entries.map(\.deadline).min(), s.stopped)
        }
    }

    private func poke() {
        var one: UInt8 = 1
        _ = write(wakeWrite, &one, 1)
    }
}
