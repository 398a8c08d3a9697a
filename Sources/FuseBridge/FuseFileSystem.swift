import CFuse3
import FoundationEssentials
import Glibc
import Posix
import Synchronization

/// Options for ``FuseFileSystem/mount()``.
public struct MountOptions: Sendable {
    public var fsName = "credfs"
    public var subtype = "credfs"
    public var allowOther = false
    public var maxThreads: UInt32 = 16
    /// Ask the kernel to stop sending OPEN and RELEASE (`FUSE_CAP_NO_OPEN_SUPPORT`): opens
    /// of versioned files are then answered from the page cache without a round trip.
    /// Per-open decisions (``VirtualFile/open``) no longer happen; lookups decide.
    public var kernelCache = false
    /// libfuse prints every request to stderr (`-d`): for counting round trips.
    public var debug = false

    public init() {}

    /// The `-o` string: always read-only with `default_permissions`.
    var optionString: String {
        var options = [
            "ro", "nosuid", "nodev", "noexec", "default_permissions", "fsname=\(fsName)",
            "subtype=\(subtype)",
        ]
        if allowOther { options.append("allow_other") }
        return options.joined(separator: ",")
    }
}

public struct FuseError: Error, CustomStringConvertible {
    public let description: String
}

/// Counts of requests the bridge answered, by kind: what the kernel asked, for tests and
/// `status`.
public struct RequestCounts: Sendable, Equatable {
    public var lookup = 0
    public var open = 0
    public var read = 0
    public var getattr = 0
    public var parked = 0
}

/// Serves a ``VirtualDirectory`` through libfuse3's low-level API.
///
/// ``VirtualFile/Caching/perOpen`` files: every open takes one snapshot of the bytes and
/// reads are served from it with `direct_io`, so one descriptor sees one version however
/// long it reads; their entries and attributes are never cached (timeouts of 0).
///
/// ``VirtualFile/Caching/versioned`` files: each version is an immutable inode with long
/// entry and attribute timeouts and `keep_cache`, so the kernel answers reads and `stat`
/// from its caches and an open costs one round trip. ``invalidate(_:)`` drops the name's
/// dentry when the version changes; an open that still reaches an old version's inode is
/// answered ESTALE, which makes the kernel look the name up again.
///
/// No request handler ever waits: content that is not there yet parks the request
/// (``VirtualFile/Content/pending(timeout:)``) until ``wake()`` or its deadline.
public final class FuseFileSystem: Sendable {
    public let tree: VirtualDirectory
    public let mountpoint: String
    let options: MountOptions
    let versions = VersionTable()
    let handles = HandleTable()
    let parking = Parking()
    /// Invalidations and the stop's grace, on a thread of their own (Invalidator.swift).
    let invalidator = Invalidator()
    let counters = Mutex(RequestCounts())
    /// Set by the init callback: the kernel agreed to stop sending OPEN.
    let noOpen = Atomic<Bool>(false)
    /// Set once an OPEN was answered ENOSYS: the kernel sends no more OPENs.
    let opensEndedFlag = Atomic<Bool>(false)

    struct State: @unchecked Sendable {
        var session: OpaquePointer?
        var detached = false
        /// Ending for a successor: parked requests stay unanswered, and the successor's
        /// RESEND gives them to it.
        var handingOver = false
        var running = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }
    let state = Mutex(State())
    /// The custom io every session uses (Takeover.swift); set before the loop starts.
    let io = Mutex<SessionIO?>(nil)
    var sessionIO: SessionIO? { io.withLock { $0 } }
    /// Called when what ``exportState()`` returns has changed, and with the kernel's INIT.
    let stateChange = Hook<@Sendable () -> Void>()
    let initRequest = Hook<@Sendable ([UInt8]) -> Void>()

    /// Called (cheaply, from any thread) when what ``exportState()`` returns has changed;
    /// set before serving.
    public var onStateChange: (@Sendable () -> Void)? {
        get { stateChange.function }
        set {
            stateChange.set(newValue)
            versions.onChange(newValue)
        }
    }

    /// Entry and attribute timeout of versioned inodes, in seconds.
    static let versionedTimeout: Double = 86_400

    /// How many versioned inodes the kernel holds (old versions go at their last FORGET).
    public var versionedInodeCount: Int { versions.count }
    /// Open file and directory handles.
    public var openHandleCount: Int { handles.count }

    /// A versioned inode this process does not hold (a predecessor handed it out after its
    /// last state push) that names the file's current version: its attributes and bytes
    /// are the current ones. Any other unknown inode: nil.
    func currentNode(_ inode: UInt64) -> VersionTable.Node? {
        guard inode >= VersionTable.firstInode else { return nil }
        let offset = inode - VersionTable.firstInode
        let index = Int(offset & UInt64(VersionTable.maxFiles - 1))
        let version = offset >> VersionTable.fileBits
        guard index < tree.files.count, case .bytes(let bytes, let mtime, let current) = tree.files[index].peek(),
            current == version, VersionTable.inode(file: index, version: version) == inode
        else { return nil }
        return VersionTable.Node(
            inode: inode, fileIndex: index, version: version, bytes: bytes, mtime: mtime, lookups: 0)
    }

    /// Requests waiting for content.
    public var parkedCount: Int { parking.count }
    /// What the kernel has asked so far.
    public var requestCounts: RequestCounts { counters.withLock { $0 } }
    /// True when the kernel agreed it may stop sending OPEN (``MountOptions/kernelCache``).
    public var opensBypassDaemon: Bool { noOpen.load(ordering: .relaxed) }
    /// True once it has stopped: opens no longer reach the daemon.
    public var opensEnded: Bool { opensEndedFlag.load(ordering: .relaxed) }

    /// Every file holds versioned content now (or is absent): opens may end.
    var everyFileVersioned: Bool {
        tree.files.allSatisfy { file in
            switch file.peek() {
            case .absent: true
            case .bytes(_, _, let version): file.caching == .versioned && version != 0
            case .failure, .pending: false
            }
        }
    }

    /// Sends an answer to the kernel: ``FuseOps/reply(_:to:)``, or a test's recorder. False
    /// when the kernel did not take it.
    let send: @Sendable (Answer, fuse_req_t) -> Bool

    public convenience init(tree: VirtualDirectory, mountpoint: String, options: MountOptions = MountOptions()) {
        self.init(tree: tree, mountpoint: mountpoint, options: options, send: FuseOps.reply)
    }

    init(
        tree: VirtualDirectory, mountpoint: String, options: MountOptions,
        send: @escaping @Sendable (Answer, fuse_req_t) -> Bool
    ) {
        self.tree = tree
        self.mountpoint = mountpoint
        self.options = options
        self.send = send
        // A version's node goes when the file stops serving that version (VersionTable).
        versions.servedFor { index, version in
            tree.files.indices.contains(index) ? tree.files[index].servedFor?(version) : nil
        }
    }

    deinit {
        let session = state.withLock { $0.session }
        if let session { fuse_session_destroy(session) }
    }

    /// Creates the session and mounts it. The kernel queues requests until ``start()``.
    public func mount() throws {
        var args = fuse_args(argc: 0, argv: nil, allocated: 0)
        defer { fuse_opt_free_args(&args) }
        for arg in ["credfs", "-o", options.optionString] + (options.debug ? ["-d"] : []) {
            fuse_opt_add_arg(&args, arg)
        }
        var ops = FuseOps.table
        let userdata = Unmanaged.passUnretained(self).toOpaque()
        guard let se = fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata)
        else {
            throw FuseError(description: "cannot create a FUSE session (is /dev/fuse there?)")
        }
        guard fuse_session_mount(se, mountpoint) == 0 else {
            fuse_session_destroy(se)
            throw FuseError(description: "cannot mount FUSE at \(mountpoint)")
        }
        do {
            try installRecordingIO(se)
        } catch {
            fuse_session_unmount(se)
            fuse_session_destroy(se)
            throw error
        }
        state.withLock { $0.session = se }
    }

    /// Starts serving requests on a multithreaded loop, on a thread of its own (never on
    /// Swift's cooperative pool), and the parking timer. The loop ends when the mount goes
    /// away or on ``stop()``.
    public func start() {
        guard let se = state.withLock({ $0.session }) else { return }
        let maxThreads = options.maxThreads
        nonisolated(unsafe) let loopSession = se
        state.withLock { $0.running = true }
        parking.runTimer { [self] expired in expired.forEach { resume($0) } }
        invalidator.run(deliver: { [self] names in deliverInvalidation(names) }, expire: { [self] in graceEnded() })
        let started = startThread(name: "fuse-loop") { [self] in
            let config = fuse_loop_cfg_create()
            fuse_loop_cfg_set_max_threads(config, maxThreads)
            _ = fuse_session_loop_mt(loopSession, config)
            fuse_loop_cfg_destroy(config)
            loopEnded()
        }
        if !started { loopEnded() }
    }

    /// Returns once the loop has ended, or at most `grace` seconds after ``stop()`` if
    /// readers still hold files open (the process may then exit; the kernel ends their
    /// reads).
    public func waitUntilStopped() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if !s.running { return true }
                s.waiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    private func loopEnded() {
        invalidator.finish()
        endParking()
        let resume = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.running = false
            if !s.detached, let se = s.session { fuse_session_unmount(se) }
            s.detached = true
            defer { s.waiters = [] }
            return s.waiters
        }
        resume.forEach { $0.resume() }
    }

    /// Stops parking at the loop's end: parked requests are answered EIO, unless the
    /// process hands over (the successor's RESEND gives them to it).
    func endParking() {
        let parked = parking.stop()
        if !state.withLock({ $0.handingOver }) { answerParked(parked, errno: EIO) }
    }

    /// Detaches the mount, then serves the files still held for at most `grace`: the kernel
    /// ends the connection when the last one is closed (which ends the loop), and once
    /// `grace` has passed the loop is ended whatever is still held (the kernel then fails
    /// their reads) and the waiters of ``waitUntilStopped()`` are released
    /// (docs/decisions.md, "`unmount` is lazy").
    public func stop(grace: Duration = .milliseconds(500)) {
        answerParked(parking.stop(), errno: EIO)
        let (detach, running) = state.withLock { s -> (Bool, Bool) in
            guard s.session != nil else { return (false, false) }
            defer { s.detached = true }
            return (!s.detached, s.running)
        }
        // By path: a successor never mounted, so libfuse does not know it.
        if detach { Self.detach(mountpoint) }
        guard running else {
            endLoop()
            return
        }
        // Without the thread (none could start), the loop ends now.
        if !invalidator.expire(after: grace) { graceEnded() }
    }

    /// The stop's grace is over (on the invalidation thread): end the loop whatever is held.
    private func graceEnded() {
        endLoop()
        let resume = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            defer { s.waiters = [] }
            return s.waiters
        }
        resume.forEach { $0.resume() }
    }

    /// Ends the request loop now (readers of the device get ENODEV).
    private func endLoop() {
        state.withLock { s in
            if let se = s.session { fuse_session_exit(se) }
        }
        sessionIO?.stop()
    }

    /// Asks parked requests again: call it when content may have become available (new
    /// credentials published), never from inside a request handler.
    public func wake() {
        parking.takeAll().forEach { resume($0) }
    }

    /// Drops what the kernel caches for the named files (data, attributes and entries).
    /// Call it after their content changed, after ``wake()``. It returns at once: the
    /// invalidation thread delivers it (Invalidator.swift), so no caller waits in the
    /// kernel behind a lookup in progress, and nothing notifies from a request handler.
    public func invalidate(_ names: [String]) {
        guard state.withLock({ $0.running && !$0.detached }) else { return }
        invalidator.request(names)
    }

    /// Lazily unmounts `path` (the kernel finishes once the last file on it is closed).
    @discardableResult
    public static func detach(_ path: String) -> Bool {
        if geteuid() == 0 { return umount2(path, Int32(MNT_DETACH)) == 0 }
        return runFusermount(["-u", "-z", path])
    }

    static func runFusermount(_ arguments: [String]) -> Bool {
        var spawn = Spawn(executable: "/usr/bin/fusermount3", arguments: ["fusermount3"] + arguments)
        spawn.stderr = .null
        return spawn.run()
    }

    func count(_ update: (inout RequestCounts) -> Void) {
        counters.withLock { update(&$0) }
    }
}

extension stat {
    mutating func setContent(count: Int, mtime: Date) {
        st_size = off_t(count)
        st_blocks = blkcnt_t((count + 511) / 512)
        setTimes(mtime)
    }

    /// Sets `st_mtim`, `st_ctim` and `st_atim` to one instant (clamped to what time_t holds).
    mutating func setTimes(_ date: Date) {
        let since = date.timeIntervalSince1970
        let seconds = since.isFinite ? min(max(since.rounded(.down), -1e15), 1e15) : 0
        let nanos = since.isFinite ? min(max((since - seconds) * 1e9, 0), 999_999_999) : 0
        let time = timespec(tv_sec: Int(seconds), tv_nsec: Int(nanos))
        st_mtim = time
        st_ctim = time
        st_atim = time
    }
}
