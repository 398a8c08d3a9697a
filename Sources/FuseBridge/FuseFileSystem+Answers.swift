import CFuse3
import Glibc

/// The bridge's decisions: every request's ``Answer``, computed without libfuse (FuseOps.swift
/// extracts the request's values and sends the answer). Called on libfuse's worker threads,
/// and for parked requests from ``wake()`` or the deadline timer.
///
/// Every value a request carries (offsets, sizes, handles, inode numbers, names) comes from
/// a user who may be hostile: nothing here traps on one, and no decision waits.
extension FuseFileSystem {
    /// Sends `answer` through the reply layer (a parked request: nothing yet); if the kernel
    /// did not take it (the request was interrupted), what it would have held is given back.
    func deliver(_ answer: Answer, to request: fuse_req_t) {
        if case .parked = answer { return }
        if !send(answer, request) { undo(answer) }
    }

    /// Gives back what an answer the kernel did not take held: a counted lookup, a handle.
    func undo(_ answer: Answer) {
        switch answer {
        case .entry(let entry) where entry.counted:
            versions.forget(entry.inode, count: 1)
        case .open(let open) where open.fh != 0:
            // No release will follow.
            handles.remove(open.fh)
        default:
            break
        }
    }

    /// The capabilities to ask for at INIT, of those the kernel offers.
    func wants(capable: UInt32) -> UInt32 {
        var want: UInt32 = 0
        // Asked for so lookups in the root can run in parallel (one parked lookup need not
        // hold other names); the kernel may still serialize them (docs/decisions.md).
        let parallel = UInt32(FUSE_CAP_PARALLEL_DIROPS)
        if capable & parallel != 0 { want |= parallel }
        let noOpen = UInt32(FUSE_CAP_NO_OPEN_SUPPORT)
        if options.kernelCache, capable & noOpen != 0 {
            want |= noOpen
            self.noOpen.store(true, ordering: .relaxed)
        }
        return want
    }

    // MARK: lookup

    /// LOOKUP of `name` (nil: libfuse gave none) in `parent`.
    func lookup(parent: UInt64, name: [UInt8]?, caller: Caller, request: fuse_req_t) -> Answer {
        count { $0.lookup += 1 }
        guard parent == VirtualDirectory.rootInode else { return .error(ENOTDIR) }
        guard let name else { return .error(ENOENT) }
        return lookup(name: name, caller: caller, request: request, deadline: nil)
    }

    /// A lookup, first time or parked: the name's current inode, or a wait for content.
    func lookup(name: [UInt8], caller: Caller, request: fuse_req_t, deadline: ContinuousClock.Instant?) -> Answer {
        guard let index = tree.index(named: name) else { return .error(ENOENT) }
        let file = tree.files[index]
        while true {
            let epoch = parking.epoch
            switch file.lookup?(caller) ?? file.peek() {
            case .absent:
                return .error(ENOENT)
            case .failure(let code) where options.kernelCache:
                // Without OPEN the lookup is the last chance to refuse.
                return .error(code)
            case .pending(let timeout):
                let due = deadline ?? .now.advanced(by: timeout)
                guard let answer = park(request, .lookup(name: name, caller: caller), deadline: due, seen: epoch) else {
                    continue
                }
                return answer
            case .bytes(let bytes, let mtime, let version) where file.caching == .versioned && version != 0:
                guard let node = versions.lookUp(fileIndex: index, version: version, bytes: bytes, mtime: mtime)
                else { break }
                let timeout = file.cacheTimeout(version: version)
                return .entry(
                    EntryAnswer(
                        inode: node.inode, attr: attributes(of: node), attrTimeout: timeout,
                        entryTimeout: file.lookup == nil ? timeout : 0, counted: true))
            case .bytes where file.caching == .versioned && opensBypassDaemon && opensEnded:
                // No OPEN will come to refuse it, and only versioned inodes can be read
                // without one: nothing valid to serve.
                return .error(EIO)
            case .bytes, .failure:
                break
            }
            let inode = tree.inode(of: index)
            let (st, exists) = attributes(inode: inode)
            guard exists else { return .error(ENOENT) }
            return .entry(EntryAnswer(inode: inode, attr: st, attrTimeout: 0, entryTimeout: 0, counted: false))
        }
    }

    // MARK: parking

    /// Parks a request until `deadline` (its first one, if it was parked before), or
    /// answers it at once when its time is up or parking is full or stopped. Nil when the
    /// caller must look again (content may have arrived meanwhile: a wake came after it read
    /// `epoch`).
    func park(_ request: fuse_req_t, _ kind: Parking.Kind, deadline: ContinuousClock.Instant, seen epoch: UInt64)
        -> Answer?
    {
        guard ContinuousClock.now < deadline else { return .error(EIO) }
        switch parking.park(Parking.Entry(request: request, deadline: deadline, kind: kind), seen: epoch) {
        case .parked:
            count { $0.parked += 1 }
            return .parked
        case .refused:
            return .error(EIO)
        case .lookAgain:
            return nil
        }
    }

    /// Answers a parked request again: its content may be there now, or its time is up.
    func resume(_ entry: Parking.Entry) {
        deliver(answer(entry), to: entry.request)
    }

    /// A parked request's answer now (``Answer/parked`` again if it still waits).
    func answer(_ entry: Parking.Entry) -> Answer {
        switch entry.kind {
        case .open(let inode, let caller):
            open(inode: inode, caller: caller, request: entry.request, deadline: entry.deadline)
        case .lookup(let name, let caller):
            lookup(name: name, caller: caller, request: entry.request, deadline: entry.deadline)
        }
    }

    func answerParked(_ entries: [Parking.Entry], errno code: Int32) {
        for entry in entries { deliver(.error(code), to: entry.request) }
    }

    // MARK: attributes

    /// GETATTR.
    func getattr(inode: UInt64) -> Answer {
        count { $0.getattr += 1 }
        if inode >= VersionTable.firstInode {
            // Another version than the file's current one, unknown here: the kernel looks the
            // name up again.
            guard let node = versions.node(inode) ?? currentNode(inode) else { return .error(ESTALE) }
            return .attr(attributes(of: node), timeout: tree.files[node.fileIndex].cacheTimeout(version: node.version))
        }
        let (st, exists) = attributes(inode: inode)
        guard exists else { return .error(ENOENT) }
        // The root's attributes never change: every path walk need not ask again.
        return .attr(st, timeout: inode == VirtualDirectory.rootInode ? Self.versionedTimeout : 0)
    }

    func attributes(inode: UInt64) -> (stat, exists: Bool) {
        var st = stat()
        st.st_ino = UInt(truncatingIfNeeded: inode)
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
        case .failure, .pending:
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
        st.st_ino = UInt(truncatingIfNeeded: node.inode)
        st.st_blksize = 4096
        st.st_mode = S_IFREG | file.permissions
        st.st_nlink = 1
        st.st_uid = file.uid
        st.st_gid = file.gid
        st.setContent(count: node.bytes.count, mtime: node.mtime)
        return st
    }

    // MARK: open, read, release

    /// OPEN with the request's `flags` (nil: libfuse gave no file info).
    func open(inode: UInt64, flags: Int32?, caller: Caller, request: fuse_req_t) -> Answer {
        count { $0.open += 1 }
        guard let flags else { return .error(EINVAL) }
        if inode == VirtualDirectory.rootInode { return .error(EISDIR) }
        guard flags & O_ACCMODE == O_RDONLY, flags & O_TRUNC == 0 else { return .error(EROFS) }
        if opensBypassDaemon, let node = versions.node(inode),
            case .bytes(_, _, let current) = tree.files[node.fileIndex].peek(), current == node.version,
            everyFileVersioned
        {
            // FUSE_CAP_NO_OPEN_SUPPORT: this answer opens the file and tells the kernel to
            // stop sending OPEN, for every file. Only once every file has versioned content:
            // until then opens still come here and wait (parked) as in the default mode.
            opensEndedFlag.store(true, ordering: .relaxed)
            return .error(ENOSYS)
        }
        return open(inode: inode, caller: caller, request: request, deadline: nil)
    }

    /// An open, first time or parked. A versioned inode opens only while its version is the
    /// file's current one (or the reader's pinned one); an old version's inode is ESTALE,
    /// which makes the kernel look the name up again.
    func open(inode: UInt64, caller: Caller, request: fuse_req_t, deadline: ContinuousClock.Instant?) -> Answer {
        // A current-version inode a predecessor gave out after its last state push is known by
        // its number alone (numbers are computed from file and version).
        let node = inode >= VersionTable.firstInode ? versions.node(inode) ?? currentNode(inode) : nil
        guard let index = node?.fileIndex ?? tree.fileIndex(at: inode) else {
            return .error(inode >= VersionTable.firstInode ? ESTALE : ENOENT)
        }
        let file = tree.files[index]
        while true {
            let epoch = parking.epoch
            switch file.open(caller) {
            case .absent:
                return .error(ENOENT)
            case .failure(let code):
                return .error(code)
            case .pending(let timeout):
                let due = deadline ?? .now.advanced(by: timeout)
                guard let answer = park(request, .open(inode: inode, caller: caller), deadline: due, seen: epoch) else {
                    continue
                }
                return answer
            case .bytes(let bytes, _, let version):
                guard let node else {
                    // A snapshot read with `direct_io` through a handle (the opener's share of
                    // snapshots allowing, else the handle reads the current bytes: see
                    // HandleTable).
                    let handle = handles.add(.file(inode: inode, bytes: bytes, uid: caller.uid))
                    return .open(OpenAnswer(fh: handle, directIO: true, keepCache: false))
                }
                // Reads come from the kernel's page cache of this inode, which only ever holds
                // this version's bytes. Another version than this inode's (an old inode, or a
                // reader held to an older version that looked up before it was): the kernel
                // looks the name up again and finds the right inode. Another version's bytes
                // are never served on this inode: a page-cache fill through it would reach
                // everyone.
                guard version == node.version else { return .error(ESTALE) }
                return .open(OpenAnswer(fh: 0, directIO: false, keepCache: true))
            }
        }
    }

    /// READ of `size` bytes at `offset` through handle `fh`.
    func read(inode: UInt64, fh: UInt64, size: Int, offset: Int64) -> Answer {
        count { $0.read += 1 }
        let bytes: [UInt8]
        if let snapshot = handles.bytes(fh, inode: inode) {
            bytes = snapshot
        } else if let node = versions.node(inode) ?? currentNode(inode) {
            // Versioned inodes (fh 0), and handles of an earlier server that were not carried
            // over: the inode's bytes never change.
            bytes = node.bytes
        } else if fh != 0, let current = unknownHandleBytes(inode: inode) {
            // An unversioned file's handle of an earlier server (Takeover.swift), or one past
            // its opener's share of snapshots (HandleTable.swift).
            bytes = current
        } else {
            return .error(opensEnded ? EIO : EBADF)
        }
        guard offset >= 0 else { return .error(EINVAL) }
        let start = offset < Int64(bytes.count) ? Int(offset) : bytes.count
        let length = min(max(size, 0), bytes.count - start)
        return .data(bytes[start..<(start + length)])
    }

    /// RELEASE or RELEASEDIR of handle `fh` (nil: libfuse gave no file info).
    func release(fh: UInt64?) -> Answer {
        if let fh, fh != 0 { handles.remove(fh) }
        return .success
    }

    /// FORGET and BATCH_FORGET: the kernel dropped `count` references to each inode.
    func forget(_ items: [(inode: UInt64, count: UInt64)]) -> Answer {
        for item in items { versions.forget(item.inode, count: item.count) }
        return .none
    }

    // MARK: directories

    /// OPENDIR (`hasInfo` false: libfuse gave no file info).
    func opendir(inode: UInt64, hasInfo: Bool) -> Answer {
        guard hasInfo else { return .error(EINVAL) }
        guard inode == VirtualDirectory.rootInode else { return .error(ENOTDIR) }
        return .open(OpenAnswer(fh: handles.add(.directory(rootListing())), directIO: false, keepCache: false))
    }

    /// READDIR of at most `size` bytes from `offset` (the index of the next entry, as the
    /// previous reply set it). Any offset past the end, negative or huge, is simply the end
    /// of the listing.
    func readdir(fh: UInt64, size: Int, offset: Int64) -> Answer {
        // A listing of an earlier server's opendir (after a takeover) is made again.
        let entries = handles.directory(fh) ?? rootListing()
        let capacity = min(max(size, 0), Self.readdirCapacity)
        guard offset >= 0, offset < Int64(entries.count) else { return .directory([]) }
        let start = Int(offset)
        var end = start
        var used = 0
        while end < entries.count, used + entries[end].size <= capacity {
            used += entries[end].size
            end += 1
        }
        return .directory(entries[start..<end])
    }

    /// A READDIR reply's bytes at most, whatever size the request asks.
    static let readdirCapacity = 64 * 1024

    /// The root's listing, with the inode a lookup of each name gives now, so `ls -i` and
    /// `stat` agree.
    func rootListing() -> [DirectoryEntry] {
        var entries = [
            DirectoryEntry(name: ".", inode: VirtualDirectory.rootInode, mode: S_IFDIR),
            DirectoryEntry(name: "..", inode: VirtualDirectory.rootInode, mode: S_IFDIR),
        ]
        for (index, file) in tree.files.enumerated() {
            var number = tree.inode(of: index)
            switch file.peek() {
            case .absent: continue
            case .bytes(_, _, let version) where file.caching == .versioned:
                number = VersionTable.inode(file: index, version: version) ?? number
            default: break
            }
            entries.append(DirectoryEntry(name: file.name, inode: number, mode: S_IFREG))
        }
        return entries
    }

    /// STATFS: fixed figures of an empty read-only file system.
    static func statfs() -> Answer {
        var st = statvfs()
        st.f_bsize = 4096
        st.f_frsize = 4096
        st.f_namemax = 255
        return .statfs(st)
    }
}
