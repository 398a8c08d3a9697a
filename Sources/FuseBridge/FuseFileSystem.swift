import CFuse3
import Foundation

/// Options for ``FuseFileSystem/mount(at:)``.
public struct MountOptions: Sendable {
    public var fsName = "credfs"
    public var subtype = "credfs"
    public var allowOther = false
    public var maxThreads: UInt32 = 16
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
public final class FuseFileSystem: @unchecked Sendable {
    public let tree: VirtualDirectory
    public let mountpoint: String
    let options: MountOptions
    var session: OpaquePointer?
    let lock = NSLock()
    var detached = false
    private var running = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    let versions = VersionTable()
    /// Open file and directory handles (`fi->fh` values are keys here, never pointers).
    let handles = HandleTable()
    /// The custom io every session uses (Takeover.swift); set before the loop starts.
    var sessionIO: SessionIO?
    /// Called (cheaply, from any thread) when what ``exportState()`` returns has changed.
    public var onStateChange: (@Sendable () -> Void)? {
        didSet {
            versions.onChange = onStateChange
            handles.onChange = onStateChange
        }
    }
    /// Called once with the kernel's INIT request, which a successor needs.
    public var onInitRequest: (@Sendable ([UInt8]) -> Void)?
    /// Entry and attribute timeout of versioned inodes, in seconds.
    static let versionedTimeout: Double = 86_400

    /// How many versioned inodes the kernel holds (old versions go at their last FORGET).
    public var versionedInodeCount: Int { versions.count }

    public init(tree: VirtualDirectory, mountpoint: String, options: MountOptions = MountOptions()) {
        self.tree = tree
        self.mountpoint = mountpoint
        self.options = options
    }

    deinit {
        if let session { fuse_session_destroy(session) }
    }

    /// Creates the session and mounts it. The kernel queues requests until ``run()``.
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
        lock.withLock { session = se }
    }

    /// Starts serving requests on a multithreaded loop, on a thread of its own (never on
    /// Swift's cooperative pool). The loop ends when the mount goes away or on ``stop()``.
    public func start() {
        guard let se = lock.withLock({ session }) else { return }
        let maxThreads = options.maxThreads
        nonisolated(unsafe) let loopSession = se
        let thread = Thread { [self] in
            let se = loopSession
            let config = fuse_loop_cfg_create()
            fuse_loop_cfg_set_max_threads(config, maxThreads)
            _ = fuse_session_loop_mt(se, config)
            fuse_loop_cfg_destroy(config)
            loopEnded()
        }
        thread.name = "fuse-loop"
        lock.withLock { running = true }
        thread.start()
    }

    /// Returns once the loop has ended, or at most `grace` seconds after ``stop()`` if
    /// readers still hold files open (the process may then exit; the kernel ends their
    /// reads).
    public func waitUntilStopped() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = lock.withLock { () -> Bool in
                if !running { return true }
                waiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    private func loopEnded() {
        let resume = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            running = false
            if !detached, let se = session { fuse_session_unmount(se) }
            detached = true
            defer { waiters = [] }
            return waiters
        }
        resume.forEach { $0.resume() }
    }

    /// Ends the loop and detaches the mount. Readers still holding files keep their
    /// snapshots until they close them, or until `grace` seconds have passed and the
    /// waiters of ``waitUntilStopped()`` are released.
    public func stop(grace: TimeInterval = 0.5) {
        lock.withLock {
            guard let se = session else { return }
            fuse_session_exit(se)
            if !detached {
                detached = true
                Self.detach(mountpoint)
            }
        }
        // After the detach: a successor never mounted, so only the path unmounts it.
        sessionIO?.stop()
        DispatchQueue.global().asyncAfter(deadline: .now() + grace) { [self] in
            let resume = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
                defer { waiters = [] }
                return waiters
            }
            resume.forEach { $0.resume() }
        }
    }

    /// Drops what the kernel caches for the named files (data and attributes). Call it
    /// after their content changed, and never from inside a request handler.
    public func invalidate(_ names: [String]) {
        lock.withLock {
            guard let se = session, running, !detached else { return }
            for name in names {
                guard let index = tree.index(named: name) else { continue }
                switch tree.files[index].caching {
                case .perOpen:
                    _ = fuse_lowlevel_notify_inval_inode(se, tree.inode(of: index), 0, 0)
                case .versioned:
                    // The unversioned inode may hold data from a pending period, too.
                    _ = fuse_lowlevel_notify_inval_inode(se, tree.inode(of: index), 0, 0)
                    _ = fuse_lowlevel_notify_inval_entry(
                        se, VirtualDirectory.rootInode, name, name.utf8.count)
                }
            }
        }
    }

    /// Lazily unmounts `path` (the kernel finishes once the last file on it is closed).
    @discardableResult
    public static func detach(_ path: String) -> Bool {
        if geteuid() == 0 { return umount2(path, Int32(MNT_DETACH)) == 0 }
        return runFusermount(["-u", "-z", path])
    }

    static func runFusermount(_ arguments: [String]) -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/fusermount3")
        process.arguments = arguments
        process.standardError = FileHandle.nullDevice
        do {
            try process.run()
            process.waitUntilExit()
            return process.terminationStatus == 0
        } catch {
            return false
        }
    }

    // MARK: request handling (called by FuseOps on libfuse's worker threads)

    func attributes(inode: UInt64) -> (stat, exists: Bool) {
        var st = stat()
        st.st_ino = UInt(inode)
        st.st_blksize = 4096
        if inode == VirtualDirectory.rootInode {
            st.st_mode = S_IFDIR | tree.permissions
            st.st_nlink = 2
            st.st_uid = tree.uid
            st.st_gid = tree.gid
            st.setTimes(tree.mtime)
            return (st, true)
        }
        guard let file = tree.file(at: inode) else { return (st, false) }
        st.st_mode = S_IFREG | file.permissions
        st.st_nlink = 1
        st.st_uid = file.uid
        st.st_gid = file.gid
        switch file.peek() {
        case .absent:
            return (st, false)
        case .failure:
            return (st, true)
        case .bytes(let bytes, let mtime, _):
            st.setContent(count: bytes.count, mtime: mtime)
            return (st, true)
        }
    }

    /// The attributes of a versioned inode: fixed for its life.
    func attributes(of node: VersionTable.Node) -> stat {
        let file = tree.files[node.fileIndex]
        var st = stat()
        st.st_ino = UInt(node.inode)
        st.st_blksize = 4096
        st.st_mode = S_IFREG | file.permissions
        st.st_nlink = 1
        st.st_uid = file.uid
        st.st_gid = file.gid
        st.setContent(count: node.bytes.count, mtime: node.mtime)
        return st
    }
}

/// The snapshot one open reads from.
final class OpenFile {
    let bytes: [UInt8]
    init(bytes: [UInt8]) { self.bytes = bytes }
}

/// The names one opendir lists.
final class OpenDirectory {
    let entries: [(name: String, inode: UInt64, mode: mode_t)]
    init(entries: [(name: String, inode: UInt64, mode: mode_t)]) { self.entries = entries }
}

extension stat {
    mutating func setContent(count: Int, mtime: Date) {
        st_size = off_t(count)
        st_blocks = blkcnt_t((count + 511) / 512)
        setTimes(mtime)
    }

    /// Sets `st_mtim`, `st_ctim` and `st_atim` to one instant.
    mutating func setTimes(_ date: Date) {
        let seconds = date.timeIntervalSince1970.rounded(.down)
        let time = timespec(
            tv_sec: Int(seconds), tv_nsec: Int((date.timeIntervalSince1970 - seconds) * 1e9))
        st_mtim = time
        st_ctim = time
        st_atim = time
    }
}
