import FoundationEssentials
import Glibc
import Synchronization
import Testing

@testable import FuseBridge

/// A bridge without a mount and without root: requests are made-up pointers that only the
/// reply layer would look behind, and the answers sent later (parked requests, a wake, a
/// deadline, a stop) are recorded instead of sent to a kernel.
final class TestBridge: Sendable {
    final class Recorder: Sendable {
        /// Answers the bridge sent by itself, in order, with the request they were for.
        let sent = Mutex<[(request: UInt, answer: Answer)]>([])
        /// False: the kernel does not take the answers sent (interrupted requests).
        let accepts = Atomic<Bool>(true)
    }
    let recorder: Recorder
    let fs: FuseFileSystem

    init(_ files: [VirtualFile], options: MountOptions = MountOptions()) {
        let recorder = Recorder()
        self.recorder = recorder
        fs = FuseFileSystem(
            tree: VirtualDirectory(files: files, permissions: 0o555, uid: 10, gid: 20, mtime: Self.mtime),
            mountpoint: "/nonexistent", options: options,
            send: { answer, request in
                recorder.sent.withLock { $0.append((UInt(bitPattern: request), answer)) }
                return recorder.accepts.load(ordering: .relaxed)
            })
    }

    static let mtime = Date(timeIntervalSince1970: 1_700_000_000)
    static let reader = Caller(pid: 42, uid: 1000, gid: 1000)

    /// Request number `n`, never 0.
    static func request(_ n: UInt) -> OpaquePointer {
        OpaquePointer(bitPattern: max(n, 1))!
    }

    /// A bridge of one versioned file "v" looked up at version 1 ("one"), then at version 2
    /// ("second"), which it serves now: its two inodes, both held by the kernel.
    static func twoVersions() throws -> (bridge: TestBridge, source: Source, old: UInt64, new: UInt64) {
        let source = Source(Source.text("one", version: 1))
        let bridge = TestBridge([source.file("v", caching: .versioned)])
        let old = try #require(bridge.lookup("v").entry).inode
        source.set(Source.text("second", version: 2))
        let new = try #require(bridge.lookup("v").entry).inode
        return (bridge, source, old, new)
    }

    /// The answers sent for request `n`.
    func sent(to n: UInt) -> [Answer] {
        recorder.sent.withLock { $0.filter { $0.request == n }.map(\.answer) }
    }

    func lookup(_ name: String, caller: Caller = reader, request: UInt = 1) -> Answer {
        fs.lookup(
            parent: VirtualDirectory.rootInode, name: Array(name.utf8), caller: caller, request: Self.request(request))
    }

    func open(_ inode: UInt64, flags: Int32 = O_RDONLY, caller: Caller = reader, request: UInt = 1) -> Answer {
        fs.open(inode: inode, flags: flags, caller: caller, request: Self.request(request))
    }

    /// The whole file through `fh`.
    func read(_ inode: UInt64, fh: UInt64 = 0) -> Answer {
        fs.read(inode: inode, fh: fh, size: 1 << 20, offset: 0)
    }

    /// The names a READDIR lists.
    func list(fh: UInt64 = 0, size: Int = 4096, offset: Int64 = 0) -> [String] {
        fs.readdir(fh: fh, size: size, offset: offset).listing.map(\.name)
    }
}

/// A file's content that a test changes.
final class Source: Sendable {
    let content: Mutex<VirtualFile.Content>

    init(_ content: VirtualFile.Content) { self.content = Mutex(content) }

    var now: VirtualFile.Content { content.withLock { $0 } }
    func set(_ content: VirtualFile.Content) { self.content.withLock { $0 = content } }

    static func text(_ text: String, version: UInt64 = 0) -> VirtualFile.Content {
        .bytes(Array(text.utf8), mtime: TestBridge.mtime, version: version)
    }

    /// A file whose peek, lookup and open all give this source's content.
    func file(
        _ name: String, caching: VirtualFile.Caching = .perOpen, permissions: mode_t = 0o440,
        cacheTimeout: Double = 86_400,
        servedFor: (@Sendable (UInt64) -> Double?)? = nil
    ) -> VirtualFile {
        VirtualFile(
            name: name, permissions: permissions, uid: 1000, gid: 1001, caching: caching, cacheTimeout: cacheTimeout,
            peek: { self.now }, open: { _ in self.now }, servedFor: servedFor)
    }
}

extension Answer {
    var errno: Int32? {
        if case .error(let code) = self { code } else { nil }
    }
    var entry: EntryAnswer? {
        if case .entry(let entry) = self { entry } else { nil }
    }
    var attr: stat? {
        if case .attr(let st, _) = self { st } else { nil }
    }
    var attrTimeout: Double? {
        if case .attr(_, let timeout) = self { timeout } else { nil }
    }
    var opened: OpenAnswer? {
        if case .open(let open) = self { open } else { nil }
    }
    var bytes: [UInt8]? {
        if case .data(let bytes) = self { Array(bytes) } else { nil }
    }
    var text: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }
    var listing: ArraySlice<DirectoryEntry> {
        if case .directory(let entries) = self { entries } else { [] }
    }
    var isParked: Bool {
        if case .parked = self { true } else { false }
    }
    var isNone: Bool {
        if case .none = self { true } else { false }
    }
    var isSuccess: Bool {
        if case .success = self { true } else { false }
    }
}
