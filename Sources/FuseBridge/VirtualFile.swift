import FoundationEssentials
import Glibc

/// Who issued a FUSE request. `pid` is 0 when the caller lives in a PID namespace the
/// daemon cannot see.
public struct Caller: Sendable, Equatable {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t

    public init(pid: pid_t, uid: uid_t, gid: gid_t) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

/// One read-only file in a ``VirtualDirectory``. Its bytes come from closures, so the
/// bridge never knows what they mean.
public struct VirtualFile: Sendable {
    /// What a file holds at one instant.
    public enum Content: Sendable {
        /// `version` identifies the bytes for ``Caching/versioned`` files: one version of a
        /// file always holds the same bytes. 0 means unversioned.
        case bytes([UInt8], mtime: Date, version: UInt64 = 0)
        /// The name does not exist right now (ENOENT).
        case absent
        /// Opening fails with this errno (EIO, say).
        case failure(Int32)
        /// Not known yet: the request is parked (no worker thread waits) and asked again
        /// after ``FuseFileSystem/wake()``; it fails with EIO once `timeout` has passed.
        case pending(timeout: Duration)
    }

    /// How the kernel may cache a file.
    public enum Caching: Sendable {
        /// Every open snapshots the bytes and reads them with `direct_io`; the kernel caches
        /// nothing. For content that depends on the reader or changes at any moment.
        case perOpen
        /// Every version of the bytes gets an inode of its own that never changes, so the
        /// kernel may keep its pages and attributes; when the version changes the name is
        /// invalidated and the next lookup finds the new inode. An open costs one round
        /// trip (none with ``MountOptions/kernelCache``). Content without a version (0) is
        /// served as ``perOpen``.
        case versioned
    }

    public let name: String
    public let caching: Caching
    /// How long the kernel may keep a versioned inode's name and attributes without asking
    /// again, in seconds: a day for content that changes only with a new version (the name
    /// is invalidated then), a second for content versioned by time.
    public let cacheTimeout: Double
    /// Permission bits (`0o400`).
    public let permissions: mode_t
    public let uid: uid_t
    public let gid: gid_t
    /// The content for `stat` and listings, and for lookups unless ``lookup`` is set. Must
    /// not block.
    public let peek: @Sendable () -> Content
    /// The content a lookup by this caller finds, when it depends on the caller (a reader
    /// held to an older version gets that version's own inode). Its names are then never
    /// cached by the kernel (entry timeout 0), so every open asks. Must not block.
    public let lookup: (@Sendable (Caller) -> Content)?
    /// The content one open snapshots for its whole life. Must not block: return
    /// ``Content/pending(timeout:)`` to be asked again.
    public let open: @Sendable (Caller) -> Content
    /// How many more seconds a version may be served (nil: no end): the kernel keeps its
    /// name and attributes no longer than that, so once it ends a lookup asks again (and
    /// without OPEN the lookup is the one chance to refuse it). Must not block.
    public let servedFor: (@Sendable (_ version: UInt64) -> Double?)?

    /// The margin kept before the end of a version's ``servedFor``: the kernel keeps an
    /// entry until the tick after its timeout, counted from when it reads the reply.
    static let endMargin: Double = 1

    /// The entry and attribute timeout for `version`: ``cacheTimeout``, ending at least
    /// ``endMargin`` before the version stops being served.
    func cacheTimeout(version: UInt64) -> Double {
        guard let seconds = servedFor?(version) else { return cacheTimeout }
        guard seconds.isFinite else { return seconds > 0 ? cacheTimeout : 0 }
        return min(cacheTimeout, max(0, seconds - Self.endMargin))
    }

    public init(
        name: String, permissions: mode_t, uid: uid_t = getuid(), gid: gid_t = getgid(),
        caching: Caching = .perOpen, cacheTimeout: Double = 86_400,
        peek: @escaping @Sendable () -> Content, lookup: (@Sendable (Caller) -> Content)? = nil,
        open: @escaping @Sendable (Caller) -> Content,
        servedFor: (@Sendable (_ version: UInt64) -> Double?)? = nil
    ) {
        self.lookup = lookup
        self.servedFor = servedFor
        self.name = name
        self.caching = caching
        self.cacheTimeout = cacheTimeout.isFinite ? min(max(cacheTimeout, 0), 86_400) : 0
        self.permissions = permissions
        self.uid = uid
        self.gid = gid
        self.peek = peek
        self.open = open
    }
}

/// The whole tree: one directory (the mount root) of at most 32 virtual files.
public struct VirtualDirectory: Sendable {
    public let files: [VirtualFile]
    public let permissions: mode_t
    public let uid: uid_t
    public let gid: gid_t
    /// The directory's `st_mtime` (the mount's start, say): the caller reads its clock.
    public let mtime: Date

    public init(
        files: [VirtualFile], permissions: mode_t = 0o555, uid: uid_t = getuid(), gid: gid_t = getgid(),
        mtime: Date
    ) {
        // Versioned inode numbers keep the file index in their low bits.
        self.files = Array(files.prefix(VersionTable.maxFiles))
        self.mtime = mtime
        self.permissions = permissions
        self.uid = uid
        self.gid = gid
    }

    /// Inode numbers: 1 is the root, files follow in order from 2 (their unversioned
    /// inodes); versioned inodes are numbered from ``VersionTable/firstInode``.
    static let rootInode: UInt64 = 1
    func inode(of index: Int) -> UInt64 { UInt64(index) + 2 }
    func fileIndex(at inode: UInt64) -> Int? {
        guard inode >= 2, inode - 2 < UInt64(files.count) else { return nil }
        return Int(inode - 2)
    }
    func file(at inode: UInt64) -> VirtualFile? { fileIndex(at: inode).map { files[$0] } }
    func index(named name: [UInt8]) -> Int? { files.firstIndex { Array($0.name.utf8) == name } }
    func index(named name: String) -> Int? { index(named: Array(name.utf8)) }
}
