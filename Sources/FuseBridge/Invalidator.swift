import CFuse3
import Glibc
import Posix
import Synchronization

/// Delivers a file system's cache invalidations from a thread of its own (`fuse-inval`),
/// never from a request handler nor from Swift's cooperative pool: an entry invalidation
/// waits in the kernel for every lookup in progress in the directory, a parked one too
/// (libfuse's `example/notify_inval_entry.c` gives it a thread for the same reason).
///
/// Requests coalesce: names asked for while a delivery runs (or waits in the kernel) go out
/// together in the next one, each name once. The thread also keeps the deadline of a
/// stop's grace (``FuseFileSystem/stop(grace:)``), and ends with the request loop.
final class Invalidator: Sendable {
    /// The protocol minor that brought `FUSE_NOTIFY_INC_EPOCH` (7.44, Linux 6.16).
    static let epochMinor: UInt32 = 44

    /// What the thread has done, for tests and `status`.
    struct Counts: Sendable, Equatable {
        /// Coalesced sets of names delivered.
        var deliveries = 0
        /// Deliveries done with one epoch bump instead of entry invalidations.
        var epochs = 0
    }

    private struct State {
        var names: [String] = []
        var deadline: ContinuousClock.Instant?
        var started = false
        /// The thread runs (it started and has not ended).
        var thread = false
        var finished = false
        /// The kernel's protocol minor, from its INIT (0: not known yet).
        var kernelMinor: UInt32 = 0
        /// The kernel refused an epoch bump once: entry invalidations from then on.
        var epochRefused = false
        var counts = Counts()
    }
    private let state = Mutex(State())
    /// Wakes the thread: new names, a deadline, the end.
    private let event: Int32

    init() {
        event = credfs_eventfd()
    }

    deinit {
        if event >= 0 { close(event) }
    }

    var counts: Counts { state.withLock { $0.counts } }

    /// Records the protocol minor the kernel offered in its INIT (a successor sees the same
    /// INIT again).
    func kernelOffered(minor: UInt32) {
        state.withLock { $0.kernelMinor = minor }
    }

    /// True when the kernel takes `FUSE_NOTIFY_INC_EPOCH`: an epoch bump then stands for the
    /// entry invalidations, and it takes no lock.
    var usesEpoch: Bool {
        state.withLock { $0.kernelMinor >= Self.epochMinor && !$0.epochRefused }
    }

    /// The kernel answered an epoch bump with an error: fall back to entry invalidations.
    func epochRefused() {
        state.withLock { $0.epochRefused = true }
    }

    /// Counts one delivery (`epoch`: done with an epoch bump).
    func delivered(epoch: Bool) {
        state.withLock {
            $0.counts.deliveries += 1
            if epoch { $0.counts.epochs += 1 }
        }
    }

    /// Queues `names` for the next delivery; returns at once.
    func request(_ names: [String]) {
        guard !names.isEmpty else { return }
        state.withLock { s in
            for name in names where !s.names.contains(name) { s.names.append(name) }
        }
        poke()
    }

    /// Runs `expire` on the thread once `delay` has passed (unless the thread ends first).
    /// Returns false when no thread runs to do it.
    @discardableResult
    func expire(after delay: Duration) -> Bool {
        let due = ContinuousClock.now.advanced(by: delay)
        let running = state.withLock { s -> Bool in
            s.deadline = min(s.deadline ?? due, due)
            return s.thread && !s.finished
        }
        poke()
        return running
    }

    /// Ends the thread (after a delivery in progress); later requests are dropped.
    func finish() {
        state.withLock { $0.finished = true }
        poke()
    }

    /// Starts the thread: `deliver` gets each coalesced set of names, `expire` runs when a
    /// deadline passes. Returns false if no thread could start (nothing is delivered then).
    @discardableResult
    func run(deliver: @escaping @Sendable ([String]) -> Void, expire: @escaping @Sendable () -> Void) -> Bool {
        let first = state.withLock { s -> Bool in
            defer { s.started = true }
            return !s.started && !s.finished
        }
        guard first else { return false }
        state.withLock { $0.thread = true }
        let started = startThread(name: "fuse-inval") { [self] in
            defer { state.withLock { $0.thread = false } }
            while true {
                let now = ContinuousClock.now
                let (names, expired, next, finished) = state.withLock {
                    s -> ([String], Bool, ContinuousClock.Instant?, Bool) in
                    let names = s.names
                    s.names = []
                    let expired = s.deadline.map { $0 <= now } ?? false
                    if expired { s.deadline = nil }
                    return (names, expired, s.deadline, s.finished)
                }
                if finished { return }
                if !names.isEmpty { deliver(names) }
                if expired { expire() }
                if names.isEmpty && !expired { wait(until: next, now: now) }
            }
        }
        if !started { state.withLock { $0.thread = false } }
        return started
    }

    private func poke() {
        var one: UInt64 = 1
        _ = write(event, &one, 8)
    }

    /// Waits for a poke or the deadline.
    private func wait(until deadline: ContinuousClock.Instant?, now: ContinuousClock.Instant) {
        var timeout: Int32 = -1
        if let deadline {
            let (seconds, attoseconds) = (deadline - now).components
            let ms = max(0, seconds) * 1000 + max(0, attoseconds) / 1_000_000_000_000_000 + 1
            timeout = Int32(clamping: ms)
        }
        // Without an event descriptor (none could be made): look again every 50 ms.
        if event < 0 { timeout = timeout < 0 ? 50 : min(timeout, 50) }
        var fd = pollfd(fd: event, events: Int16(POLLIN), revents: 0)
        if poll(&fd, 1, timeout) > 0 {
            var count: UInt64 = 0
            _ = read(event, &count, 8)
        }
    }
}

extension FuseFileSystem {
    /// On the invalidation thread: drops what the kernel caches for `names`. Data and
    /// attributes of each unversioned inode (no directory lock); the names' entries with one
    /// `FUSE_NOTIFY_INC_EPOCH` where the kernel has it (every cached entry of the connection
    /// is looked up again at its next use; no lock is taken), else one entry invalidation
    /// per versioned name (each waits for the lookups in progress in the directory).
    func deliverInvalidation(_ names: [String]) {
        guard let se = state.withLock({ $0.running && !$0.detached ? $0.session : nil }) else { return }
        var entries: [String] = []
        for name in names {
            guard let index = tree.index(named: name) else { continue }
            // The unversioned inode may hold data from a pending period, too.
            _ = fuse_lowlevel_notify_inval_inode(se, tree.inode(of: index), 0, 0)
            if tree.files[index].caching == .versioned { entries.append(name) }
        }
        if !entries.isEmpty, invalidator.usesEpoch {
            if credfs_fuse_notify_inc_epoch(fuse_session_fd(se)) == 16 {
                invalidator.delivered(epoch: true)
                return
            }
            invalidator.epochRefused()
        }
        for name in entries {
            _ = fuse_lowlevel_notify_inval_entry(se, VirtualDirectory.rootInode, name, name.utf8.count)
        }
        invalidator.delivered(epoch: false)
    }

    /// How the kernel's caches were invalidated so far.
    public var invalidationCounts: (deliveries: Int, epochs: Int) {
        let counts = invalidator.counts
        return (counts.deliveries, counts.epochs)
    }
}
