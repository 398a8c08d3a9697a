import CFuse3
import FoundationEssentials
import Glibc

/// Serving a connection that another process mounted: see docs/hitless.md.
///
/// The first server mounts with libfuse and records the kernel's INIT request
/// (``FuseFileSystem/mount(recordingInit:)``). A successor gets the same `/dev/fuse` descriptor
/// and that recording, and calls ``FuseFileSystem/adopt(fd:initRequest:state:)`` instead of
/// ``FuseFileSystem/mount()``: libfuse is fed the recorded INIT (its reply swallowed), and
/// the kernel is told to send again every request the previous server read but did not
/// answer (`FUSE_NOTIFY_RESEND`, Linux 6.9+). A successor never mounts, so it unmounts by
/// path. A server that hands over (``FuseFileSystem/handOver()``) stops reading, answers
/// what it has read, and leaves the mount alone.
extension FuseFileSystem {
    /// What `FUSE_NOTIFY_RESEND` did in ``adopt(fd:initRequest:state:)``.
    public enum ResendResult: Sendable, Equatable {
        /// The kernel took it: requests the previous server had read come again.
        case sent
        /// This kernel does not know it (before Linux 6.9): such requests hang their readers
        /// until the connection is aborted.
        case unsupported(Int32)
        /// Not sent (``adopt(fd:initRequest:state:resend:)`` with `resend: false`).
        case skipped
    }

    func newSession() -> OpaquePointer? {
        var args = fuse_args(argc: 0, argv: nil, allocated: 0)
        defer { fuse_opt_free_args(&args) }
        for arg in ["credfs", "-o", options.optionString] + (options.debug ? ["-d"] : []) {
            fuse_opt_add_arg(&args, arg)
        }
        var ops = FuseOps.table
        let userdata = Unmanaged.passUnretained(self).toOpaque()
        return fuse_session_new(&args, &ops, MemoryLayout<fuse_lowlevel_ops>.size, userdata)
    }

    /// The first server of a connection a successor may take over: ``mount()`` with `record`
    /// called once, from a reader thread, with the kernel's INIT request (which a successor
    /// needs). The hook is in place before the kernel can send INIT.
    public func mount(recordingInit record: @escaping @Sendable ([UInt8]) -> Void) throws {
        initRequest.set(record)
        try mount()
    }

    /// The first server: the same custom io as successors, recording the kernel's INIT.
    func installRecordingIO(_ se: OpaquePointer) throws {
        let fd = fuse_session_fd(se)
        let hook = initRequest.function
        let io = try SessionIO(fd: fd, replay: nil, onInit: { request in hook?(request) })
        self.io.withLock { $0 = io }
        var table = SessionIO.table
        guard fuse_session_custom_io(se, &table, fd) == 0 else {
            throw FuseError(description: "fuse_session_custom_io failed")
        }
    }

    /// The kernel's `/dev/fuse` descriptor of this session (to hand to a successor), or -1.
    public var deviceDescriptor: Int32 {
        state.withLock { $0.session.map { fuse_session_fd($0) } ?? -1 }
    }

    /// Serves the already initialised connection `fd` (a successor's start). `state` is what
    /// the previous server's ``exportState()`` returned, if it is known. Call ``start()``
    /// next; nothing is read from the connection before.
    ///
    /// - Parameter resend: false only to measure what a kernel without RESEND does.
    @discardableResult
    public func adopt(fd: Int32, initRequest: [UInt8], state: BridgeState?, resend: Bool = true) throws
        -> ResendResult
    {
        guard let se = newSession() else {
            throw FuseError(description: "cannot create a FUSE session")
        }
        let io: SessionIO
        do {
            io = try SessionIO(fd: fd, replay: initRequest)
        } catch {
            fuse_session_destroy(se)
            throw error
        }
        self.io.withLock { $0 = io }
        var table = SessionIO.table
        guard fuse_session_custom_io(se, &table, fd) == 0 else {
            fuse_session_destroy(se)
            throw FuseError(description: "fuse_session_custom_io failed")
        }
        if let state { importState(state) }
        self.state.withLock { $0.session = se }
        guard resend else { return .skipped }
        // Before anything is read: the replayed INIT comes first from memory anyway.
        if credfs_fuse_notify_resend(fd) == 16 { return .sent }
        return .unsupported(errno)
    }

    /// Stops serving without unmounting, for a successor: no new request is read, the ones
    /// read are answered, then ``waitUntilStopped()`` returns. Requests the kernel still
    /// queues wait for the successor.
    public func handOver() async {
        state.withLock {
            $0.detached = true
            $0.handingOver = true
        }
        sessionIO?.stop()
        await waitUntilStopped()
    }

    // MARK: state

    /// What the kernel may still reference: versioned inodes (within `nodeBudget` bytes of
    /// content, each file's newest versions first) and the epochs of open handles.
    public func exportState(nodeBudget: Int = BridgeState.nodeBudget) -> BridgeState {
        var versions = versions.export()
        versions.nodes = BridgeState.newestFirst(versions.nodes, budget: nodeBudget)
        for i in versions.nodes.indices {
            let index = versions.nodes[i].fileIndex
            versions.nodes[i].name = tree.files.indices.contains(index) ? tree.files[index].name : ""
        }
        return BridgeState(versions: versions, handles: handles.export())
    }

    /// Takes over a previous server's table before serving. Inode numbers and handles this
    /// process creates never collide with ones the previous server handed out.
    public func importState(_ state: BridgeState) {
        // File indices are this binary's: match by name (an upgrade may reorder files).
        var carried = state.versions
        carried.nodes = carried.nodes.compactMap { node in
            guard let index = tree.index(named: node.name) else { return nil }
            var node = node
            node.fileIndex = index
            return node
        }
        versions.restore(carried)
        handles.restore(state.handles)
    }

    /// A read on a handle without a snapshot (an earlier server made it, or its opener held
    /// its share of snapshots) of an unversioned inode: the file's current bytes, the same
    /// answer as a new open would snapshot. Versioned inodes are answered from their node
    /// instead.
    func unknownHandleBytes(inode: UInt64) -> [UInt8]? {
        guard let file = tree.file(at: inode), case .bytes(let bytes, _, _) = file.peek() else { return nil }
        return bytes
    }
}

/// The bridge's part of the state a successor takes over.
public struct BridgeState: Codable, Sendable, Equatable {
    public struct Node: Codable, Sendable, Equatable {
        public var inode: UInt64
        public var fileIndex: Int
        public var name: String = ""
        public var version: UInt64
        public var bytes: Data
        public var mtime: Double
        public var lookups: UInt64
    }

    public struct Versions: Codable, Sendable, Equatable {
        /// Never read: written (as 0) because binaries before this one require the key when
        /// they decode a state, so a downgrade keeps its carried state (docs/decisions.md).
        public var nextInode: UInt64
        public var nodes: [Node]
    }

    public struct Handle: Codable, Sendable, Equatable {
        public var fh: UInt64
        public var inode: UInt64
        public var bytes: Data
    }

    public struct Handles: Codable, Sendable, Equatable {
        public var epochs: [UInt32]
        public var files: [Handle]
    }

    public var versions: Versions
    public var handles: Handles

    /// Bytes of versioned content carried at most (docs/hitless.md): a few dozen
    /// generations of every file. Nodes past it are not carried; the kernel's requests on
    /// them get ESTALE (a lookup again), or EBADF for a read through an old descriptor.
    public static let nodeBudget = 128 << 10

    /// The nodes to carry: the newest version of every file, then the next newest of every
    /// file, and so on, while their bytes fit in `budget`; in inode order.
    static func newestFirst(_ nodes: [Node], budget: Int) -> [Node] {
        let byFile = Dictionary(grouping: nodes, by: \.fileIndex).mapValues { $0.sorted { $0.version > $1.version } }
        let files = byFile.keys.sorted()
        var chosen: [Node] = []
        var used = 0
        var rank = 0
        while true {
            var more = false
            for file in files {
                guard let list = byFile[file], rank < list.count else { continue }
                more = true
                let node = list[rank]
                guard used + node.bytes.count <= budget else { continue }
                used += node.bytes.count
                chosen.append(node)
            }
            guard more else { break }
            rank += 1
        }
        return chosen.sorted { $0.inode < $1.inode }
    }
}
