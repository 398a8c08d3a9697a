import CFuse3
import Glibc

/// The low-level operations table. Each entry is a C function pointer that finds its
/// ``FuseFileSystem`` through the request's userdata. These closures capture nothing and
/// live outside `main.swift`, so libfuse's worker threads may call them.
///
/// Every value a request carries (offsets, sizes, handles, inode numbers, names) comes from
/// a user who may be hostile: nothing here traps on one, and no handler waits.
enum FuseOps {
    static let table: fuse_lowlevel_ops = {
        var ops = fuse_lowlevel_ops()
        ops.`init` = initialize
        ops.lookup = lookup
        ops.getattr = getattr
        ops.open = open
        ops.read = read
        ops.release = release
        ops.opendir = opendir
        ops.readdir = readdir
        ops.releasedir = releasedir
        ops.statfs = statfs
        ops.forget = forget
        ops.forget_multi = forgetMulti
        return ops
    }()

    /// The file system a request belongs to; nil only if libfuse lost its userdata.
    static func fs(_ req: fuse_req_t) -> FuseFileSystem? {
        fuse_req_userdata(req).map { Unmanaged<FuseFileSystem>.fromOpaque($0).takeUnretainedValue() }
    }

    static func caller(_ req: fuse_req_t) -> Caller {
        guard let ctx = fuse_req_ctx(req)?.pointee else { return Caller(pid: 0, uid: uid_t.max, gid: gid_t.max) }
        return Caller(pid: ctx.pid, uid: ctx.uid, gid: ctx.gid)
    }

    /// Runs `body` with the request's file system, or answers EIO.
    static func serve(_ req: fuse_req_t?, _ body: (fuse_req_t, FuseFileSystem) -> Void) {
        guard let req else { return }
        guard let fs = fs(req) else {
            _ = fuse_reply_err(req, EIO)
            return
        }
        body(req, fs)
    }

    static let initialize: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<fuse_conn_info>?) -> Void = {
        userdata, conn in
        guard let userdata, let conn else { return }
        let fs = Unmanaged<FuseFileSystem>.fromOpaque(userdata).takeUnretainedValue()
        // Lookups in the root run in parallel: without this the kernel serializes them, and
        // one parked lookup would hold every other name in the directory.
        let parallel = UInt32(FUSE_CAP_PARALLEL_DIROPS)
        if conn.pointee.capable & parallel != 0 { conn.pointee.want |= parallel }
        let noOpen = UInt32(FUSE_CAP_NO_OPEN_SUPPORT)
        if fs.options.kernelCache, conn.pointee.capable & noOpen != 0 {
            conn.pointee.want |= noOpen
            fs.noOpen.store(true, ordering: .relaxed)
        }
    }

    static let lookup: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = {
        req, parent, name in
        serve(req) { req, fs in
            fs.count { $0.lookup += 1 }
            guard parent == VirtualDirectory.rootInode else {
                _ = fuse_reply_err(req, ENOTDIR)
                return
            }
            guard let name else {
                _ = fuse_reply_err(req, ENOENT)
                return
            }
            let bytes = Array(UnsafeBufferPointer(start: name, count: strnlen(name, 4096))).map {
                UInt8(bitPattern: $0)
            }
            answerLookup(req, fs: fs, name: bytes, caller: caller(req), deadline: nil)
        }
    }

    /// A lookup, first time or parked: the name's current inode, or a wait for content.
    static func answerLookup(
        _ req: fuse_req_t, fs: FuseFileSystem, name: [UInt8], caller: Caller, deadline: ContinuousClock.Instant?
    ) {
        guard let index = fs.tree.index(named: name) else {
            _ = fuse_reply_err(req, ENOENT)
            return
        }
        let file = fs.tree.files[index]
        while true {
            let epoch = fs.parking.epoch
            switch file.lookup?(caller) ?? file.peek() {
            case .absent:
                _ = fuse_reply_err(req, ENOENT)
                return
            case .failure(let code) where fs.options.kernelCache:
                // Without OPEN the lookup is the last chance to refuse.
                _ = fuse_reply_err(req, code)
                return
            case .pending(let timeout):
                let due = deadline ?? ContinuousClock.now.advanced(by: timeout)
                let entry = Parking.Entry(request: req, deadline: due, kind: .lookup(name: name, caller: caller))
                if park(entry, fs: fs, seen: epoch) { return }
                continue
            case .bytes(let bytes, let mtime, let version) where file.caching == .versioned && version != 0:
                guard let node = fs.versions.lookUp(fileIndex: index, version: version, bytes: bytes, mtime: mtime)
                else { break }
                var entry = fuse_entry_param()
                entry.ino = node.inode
                entry.attr = fs.attributes(of: node)
                let timeout = file.cacheTimeout(version: version)
                entry.attr_timeout = timeout
                entry.entry_timeout = file.lookup == nil ? timeout : 0
                if fuse_reply_entry(req, &entry) != 0 {
                    // The kernel did not take the reference.
                    fs.versions.forget(node.inode, count: 1)
                }
                return
            case .bytes where file.caching == .versioned && fs.opensBypassDaemon && fs.opensEnded:
                // No OPEN will come to refuse it, and only versioned inodes can be read
                // without one: nothing valid to serve.
                _ = fuse_reply_err(req, EIO)
                return
            case .bytes, .failure:
                break
            }
            let inode = fs.tree.inode(of: index)
            let (st, exists) = fs.attributes(inode: inode)
            guard exists else {
                _ = fuse_reply_err(req, ENOENT)
                return
            }
            var entry = fuse_entry_param()
            entry.ino = inode
            entry.attr = st
            entry.attr_timeout = 0
            entry.entry_timeout = 0
            _ = fuse_reply_entry(req, &entry)
            return
        }
    }

    /// Parks `entry`, or answers it at once when its time is up or parking is full.
    /// Returns false when the caller must look again (content may have arrived meanwhile).
    static func park(_ entry: Parking.Entry, fs: FuseFileSystem, seen epoch: UInt64) -> Bool {
        guard ContinuousClock.now < entry.deadline else {
            _ = fuse_reply_err(entry.request, EIO)
            return true
        }
        switch fs.parking.park(entry, seen: epoch) {
        case .parked:
            fs.count { $0.parked += 1 }
            return true
        case .refused:
            _ = fuse_reply_err(entry.request, EIO)
            return true
        case .lookAgain:
            return false
        }
    }

    static let getattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, _ in
        serve(req) { req, fs in
            fs.count { $0.getattr += 1 }
            if inode >= VersionTable.firstInode {
                guard let node = fs.versions.node(inode) ?? fs.currentNode(inode) else {
                    // Another version than the file's current one, unknown here: the kernel
                    // looks the name up again.
                    _ = fuse_reply_err(req, ESTALE)
                    return
                }
                var st = fs.attributes(of: node)
                _ = fuse_reply_attr(req, &st, fs.tree.files[node.fileIndex].cacheTimeout(version: node.version))
                return
            }
            var (st, exists) = fs.attributes(inode: inode)
            guard exists else {
                _ = fuse_reply_err(req, ENOENT)
                return
            }
            // The root's attributes never change: every path walk need not ask again.
            _ = fuse_reply_attr(
                req, &st, inode == VirtualDirectory.rootInode ? FuseFileSystem.versionedTimeout : 0)
        }
    }

    static let open: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, fi in
        serve(req) { req, fs in
            fs.count { $0.open += 1 }
            guard let fi else {
                _ = fuse_reply_err(req, EINVAL)
                return
            }
            if inode == VirtualDirectory.rootInode {
                _ = fuse_reply_err(req, EISDIR)
                return
            }
            guard fi.pointee.flags & O_ACCMODE == O_RDONLY, fi.pointee.flags & O_TRUNC == 0 else {
                _ = fuse_reply_err(req, EROFS)
                return
            }
            if fs.opensBypassDaemon, let node = fs.versions.node(inode),
                case .bytes(_, _, let current) = fs.tree.files[node.fileIndex].peek(), current == node.version,
                fs.everyFileVersioned
            {
                // FUSE_CAP_NO_OPEN_SUPPORT: this answer opens the file and tells the kernel to
                // stop sending OPEN, for every file. Only once every file has versioned content:
                // until then opens still come here and wait (parked) as in the default mode.
                fs.opensEndedFlag.store(true, ordering: .relaxed)
                _ = fuse_reply_err(req, ENOSYS)
                return
            }
            var info = fi.pointee
            answerOpen(req, fs: fs, inode: inode, info: &info, caller: caller(req), deadline: nil)
        }
    }

    /// An open, first time or parked. A versioned inode opens only while its version is the
    /// file's current one (or the reader's pinned one); an old version's inode is ESTALE,
    /// which makes the kernel look the name up again.
    static func answerOpen(
        _ req: fuse_req_t, fs: FuseFileSystem, inode: UInt64, info: inout fuse_file_info, caller: Caller,
        deadline: ContinuousClock.Instant?
    ) {
        // A current-version inode a predecessor gave out after its last state push is known by
        // its number alone (numbers are computed from file and version).
        let node = inode >= VersionTable.firstInode ? fs.versions.node(inode) ?? fs.currentNode(inode) : nil
        let index = node?.fileIndex ?? fs.tree.fileIndex(at: inode)
        guard let index else {
            _ = fuse_reply_err(req, inode >= VersionTable.firstInode ? ESTALE : ENOENT)
            return
        }
        let file = fs.tree.files[index]
        while true {
            let epoch = fs.parking.epoch
            switch file.open(caller) {
            case .absent:
                _ = fuse_reply_err(req, ENOENT)
            case .failure(let code):
                _ = fuse_reply_err(req, code)
            case .pending(let timeout):
                let due = deadline ?? ContinuousClock.now.advanced(by: timeout)
                let entry = Parking.Entry(
                    request: req, deadline: due, kind: .open(inode: inode, info: info, caller: caller))
                if park(entry, fs: fs, seen: epoch) { return }
                continue
            case .bytes(let bytes, _, let version):
                guard let node else {
                    reply(req, fs: fs, inode: inode, info: &info, snapshot: bytes, uid: caller.uid)
                    return
                }
                if version == node.version {
                    // Reads come from the kernel's page cache of this inode, which only ever
                    // holds this version's bytes.
                    info.fh = 0
                    info.direct_io = 0
                    info.keep_cache = 1
                    _ = fuse_reply_open(req, &info)
                } else {
                    // Another version than this inode's (an old inode, or a reader held to an
                    // older version that looked up before it was): the kernel looks the name
                    // up again and finds the right inode. Another version's bytes are never
                    // served on this inode: a page-cache fill through it would reach everyone.
                    _ = fuse_reply_err(req, ESTALE)
                }
            }
            return
        }
    }

    /// Opens a snapshot read with `direct_io` through a handle (`uid`'s share of snapshots
    /// allowing, else the handle reads the current bytes: see ``HandleTable``).
    static func reply(
        _ req: fuse_req_t, fs: FuseFileSystem, inode: UInt64, info: inout fuse_file_info, snapshot: [UInt8],
        uid: uid_t
    ) {
        let handle = fs.handles.add(.file(inode: inode, bytes: snapshot, uid: uid))
        info.fh = handle
        info.direct_io = 1
        info.keep_cache = 0
        if fuse_reply_open(req, &info) != 0 {
            // The open was interrupted: no release will follow.
            fs.handles.remove(handle)
        }
    }

    static let read:
        @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) ->
            Void = {
                req, inode, size, offset, fi in
                serve(req) { req, fs in
                    fs.count { $0.read += 1 }
                    let handle = fi?.pointee.fh ?? 0
                    let bytes: [UInt8]
                    if let snapshot = fs.handles.bytes(handle, inode: inode) {
                        bytes = snapshot
                    } else if let node = fs.versions.node(inode) ?? fs.currentNode(inode) {
                        // Versioned inodes (fh 0), and handles of an earlier server that were
                        // not carried over: the inode's bytes never change.
                        bytes = node.bytes
                    } else if handle != 0, let current = fs.unknownHandleBytes(inode: inode) {
                        // An unversioned file's handle of an earlier server (Takeover.swift),
                        // or one past its opener's share of snapshots (HandleTable.swift).
                        bytes = current
                    } else {
                        _ = fuse_reply_err(req, fs.opensEnded ? EIO : EBADF)
                        return
                    }
                    guard offset >= 0 else {
                        _ = fuse_reply_err(req, EINVAL)
                        return
                    }
                    let start = offset < off_t(bytes.count) ? Int(offset) : bytes.count
                    let length = min(max(size, 0), bytes.count - start)
                    bytes.withUnsafeBufferPointer { buffer in
                        _ = fuse_reply_buf(req, buffer.baseAddress.map { UnsafeRawPointer($0 + start) }, length)
                    }
                }
            }

    static let release: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, _, fi in
        serve(req) { req, fs in
            if let handle = fi?.pointee.fh, handle != 0 { fs.handles.remove(handle) }
            _ = fuse_reply_err(req, 0)
        }
    }

    static let forget: @convention(c) (fuse_req_t?, fuse_ino_t, UInt64) -> Void = {
        req, inode, count in
        guard let req else { return }
        fs(req)?.versions.forget(inode, count: count)
        fuse_reply_none(req)
    }

    static let forgetMulti: @convention(c) (fuse_req_t?, Int, UnsafeMutablePointer<fuse_forget_data>?) -> Void = {
        req, count, forgets in
        guard let req else { return }
        if let fs = fs(req), let forgets, count > 0 {
            for item in UnsafeBufferPointer(start: forgets, count: count) {
                fs.versions.forget(item.ino, count: item.nlookup)
            }
        }
        fuse_reply_none(req)
    }

    static let opendir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, fi in
        serve(req) { req, fs in
            guard let fi else {
                _ = fuse_reply_err(req, EINVAL)
                return
            }
            guard inode == VirtualDirectory.rootInode else {
                _ = fuse_reply_err(req, ENOTDIR)
                return
            }
            let handle = fs.handles.add(.directory(fs.rootListing()))
            fi.pointee.fh = handle
            if fuse_reply_open(req, fi) != 0 { fs.handles.remove(handle) }
        }
    }

    /// Lists from `offset` (the index of the next entry, as the previous reply set it). Any
    /// offset past the end, negative or huge, is simply the end of the listing.
    static let readdir:
        @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) ->
            Void = {
                req, _, size, offset, fi in
                serve(req) { req, fs in
                    // A listing of an earlier server's opendir (after a takeover) is made again.
                    let entries = fs.handles.directory(fi?.pointee.fh ?? 0) ?? fs.rootListing()
                    let capacity = min(max(size, 0), 64 * 1024)
                    guard capacity > 0, offset >= 0, offset < off_t(entries.count) else {
                        _ = fuse_reply_buf(req, nil, 0)
                        return
                    }
                    var buffer = [CChar](repeating: 0, count: capacity)
                    var used = 0
                    buffer.withUnsafeMutableBufferPointer { out in
                        guard let base = out.baseAddress else { return }
                        for index in Int(offset)..<entries.count {
                            let entry = entries[index]
                            var st = stat()
                            st.st_ino = UInt(truncatingIfNeeded: entry.inode)
                            st.st_mode = entry.mode
                            let needed = fuse_add_direntry(
                                req, base + used, capacity - used, entry.name, &st, off_t(index + 1))
                            if needed > capacity - used { break }
                            used += needed
                        }
                        _ = fuse_reply_buf(req, base, used)
                    }
                }
            }

    static let releasedir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, _, fi in
        serve(req) { req, fs in
            if let handle = fi?.pointee.fh, handle != 0 { fs.handles.remove(handle) }
            _ = fuse_reply_err(req, 0)
        }
    }

    static let statfs: @convention(c) (fuse_req_t?, fuse_ino_t) -> Void = { req, _ in
        guard let req else { return }
        var st = statvfs()
        st.f_bsize = 4096
        st.f_frsize = 4096
        st.f_namemax = 255
        _ = fuse_reply_statfs(req, &st)
    }
}
