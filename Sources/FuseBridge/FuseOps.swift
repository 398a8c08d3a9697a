import CFuse3
import Foundation

/// The low-level operations table. Each entry is a C function pointer that finds its
/// ``FuseFileSystem`` through the request's userdata. These closures capture nothing and
/// live outside `main.swift`, so libfuse's worker threads may call them.
enum FuseOps {
    static let table: fuse_lowlevel_ops = {
        var ops = fuse_lowlevel_ops()
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

    static func fs(_ req: fuse_req_t?) -> FuseFileSystem {
        Unmanaged<FuseFileSystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    static func caller(_ req: fuse_req_t?) -> Caller {
        let ctx = fuse_req_ctx(req)!.pointee
        return Caller(pid: ctx.pid, uid: ctx.uid, gid: ctx.gid)
    }

    static let lookup: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = {
        req, parent, name in
        let fs = fs(req)
        guard parent == VirtualDirectory.rootInode else {
            fuse_reply_err(req, ENOTDIR)
            return
        }
        guard let name, let index = fs.tree.index(named: String(cString: name)) else {
            fuse_reply_err(req, ENOENT)
            return
        }
        let file = fs.tree.files[index]
        let content = file.peek()
        if file.caching == .versioned, case .bytes(let bytes, let mtime, let version) = content,
            version != 0
        {
            let node = fs.versions.lookUp(fileIndex: index, version: version, bytes: bytes, mtime: mtime)
            var entry = fuse_entry_param()
            entry.ino = node.inode
            entry.attr = fs.attributes(of: node)
            entry.attr_timeout = FuseFileSystem.versionedTimeout
            entry.entry_timeout = FuseFileSystem.versionedTimeout
            if fuse_reply_entry(req, &entry) != 0 {
                // The kernel did not take the reference.
                fs.versions.forget(node.inode, count: 1)
            }
            return
        }
        if case .absent = content {
            fuse_reply_err(req, ENOENT)
            return
        }
        let inode = fs.tree.inode(of: index)
        let (st, exists) = fs.attributes(inode: inode)
        guard exists else {
            fuse_reply_err(req, ENOENT)
            return
        }
        var entry = fuse_entry_param()
        entry.ino = inode
        entry.attr = st
        entry.attr_timeout = 0
        entry.entry_timeout = 0
        fuse_reply_entry(req, &entry)
    }

    static let getattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, _ in
        let fs = fs(req)
        if inode >= VirtualDirectory.firstVersionedInode {
            guard let node = fs.versions.node(inode) else {
                fuse_reply_err(req, ENOENT)
                return
            }
            var st = fs.attributes(of: node)
            fuse_reply_attr(req, &st, FuseFileSystem.versionedTimeout)
            return
        }
        var (st, exists) = fs.attributes(inode: inode)
        guard exists else {
            fuse_reply_err(req, ENOENT)
            return
        }
        // The root's attributes never change: every path walk need not ask again.
        fuse_reply_attr(
            req, &st, inode == VirtualDirectory.rootInode ? FuseFileSystem.versionedTimeout : 0)
    }

    static let open: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, fi in
        let fs = fs(req)
        guard let fi else {
            fuse_reply_err(req, EINVAL)
            return
        }
        if inode == VirtualDirectory.rootInode {
            fuse_reply_err(req, EISDIR)
            return
        }
        guard fi.pointee.flags & O_ACCMODE == O_RDONLY, fi.pointee.flags & O_TRUNC == 0 else {
            fuse_reply_err(req, EROFS)
            return
        }
        if inode >= VirtualDirectory.firstVersionedInode {
            openVersioned(req, fs: fs, inode: inode, fi: fi)
            return
        }
        guard let file = fs.tree.file(at: inode) else {
            fuse_reply_err(req, ENOENT)
            return
        }
        switch file.open(caller(req)) {
        case .absent:
            fuse_reply_err(req, ENOENT)
        case .failure(let errno):
            fuse_reply_err(req, errno)
        case .bytes(let bytes, _, _):
            let fh = fs.handles.add(.file(inode: inode, bytes: bytes))
            fi.pointee.fh = fh
            fi.pointee.direct_io = 1
            fi.pointee.keep_cache = 0
            if fuse_reply_open(req, fi) != 0 {
                // The open was interrupted: no release will follow.
                fs.handles.remove(fh)
            }
        }
    }

    /// An open of a versioned inode: allowed only while its version is the file's current
    /// one (checked through the file's `open`, which also applies expiry and waits).
    static func openVersioned(
        _ req: fuse_req_t?, fs: FuseFileSystem, inode: UInt64, fi: UnsafeMutablePointer<fuse_file_info>
    ) {
        guard let node = fs.versions.node(inode) else {
            fuse_reply_err(req, ESTALE)
            return
        }
        switch fs.tree.files[node.fileIndex].open(caller(req)) {
        case .absent:
            fuse_reply_err(req, ENOENT)
        case .failure(let errno):
            fuse_reply_err(req, errno)
        case .bytes(let bytes, _, let version):
            if version == node.version {
                // The common case: reads come from the kernel's page cache of this inode.
                fi.pointee.fh = 0
                fi.pointee.direct_io = 0
                fi.pointee.keep_cache = 1
                fuse_reply_open(req, fi)
            } else if case .bytes(_, _, let current) = fs.tree.files[node.fileIndex].peek(),
                current == node.version
            {
                // The reader is held to another version than the current inode's (a pin):
                // it reads its own snapshot, past the page cache, which stays untouched.
                let fh = fs.handles.add(.file(inode: inode, bytes: bytes))
                fi.pointee.fh = fh
                fi.pointee.direct_io = 1
                fi.pointee.keep_cache = 1
                if fuse_reply_open(req, fi) != 0 { fs.handles.remove(fh) }
            } else {
                // An old version's inode: make the kernel look the name up again.
                fuse_reply_err(req, ESTALE)
            }
        }
    }

    static let read:
        @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) ->
            Void = {
                req, inode, size, offset, fi in
                let fs = fs(req)
                let bytes: [UInt8]
                if let snapshot = fs.handles.bytes(fi?.pointee.fh ?? 0, inode: inode) {
                    bytes = snapshot
                } else if let node = fs.versions.node(inode) {
                    bytes = node.bytes
                } else if let fallback = fs.unknownHandleBytes(inode: inode) {
                    // A handle of an earlier server that was not carried over (Takeover.swift).
                    bytes = fallback
                } else {
                    fuse_reply_err(req, EBADF)
                    return
                }
                let count = bytes.count
                let start = min(max(Int(offset), 0), count)
                let end = min(start + size, count)
                bytes.withUnsafeBufferPointer { buffer in
                    _ = fuse_reply_buf(
                        req, buffer.baseAddress.map { UnsafeRawPointer($0 + start) }, end - start)
                }
            }

    static let release: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, _, fi in
        if let fh = fi?.pointee.fh { fs(req).handles.remove(fh) }
        fuse_reply_err(req, 0)
    }

    static let forget: @convention(c) (fuse_req_t?, fuse_ino_t, UInt64) -> Void = {
        req, inode, count in
        fs(req).versions.forget(inode, count: count)
        fuse_reply_none(req)
    }

    static let forgetMulti: @convention(c) (fuse_req_t?, Int, UnsafeMutablePointer<fuse_forget_data>?) -> Void = {
        req, count, forgets in
        let fs = fs(req)
        for i in 0..<count {
            guard let item = forgets?[i] else { continue }
            fs.versions.forget(item.ino, count: item.nlookup)
        }
        fuse_reply_none(req)
    }

    static let opendir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, fi in
        let fs = fs(req)
        guard let fi else {
            fuse_reply_err(req, EINVAL)
            return
        }
        guard inode == VirtualDirectory.rootInode else {
            fuse_reply_err(req, ENOTDIR)
            return
        }
        let fh = fs.handles.add(.directory(fs.rootListing()))
        fi.pointee.fh = fh
        if fuse_reply_open(req, fi) != 0 { fs.handles.remove(fh) }
    }

    static let readdir:
        @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) ->
            Void = {
                req, _, size, offset, fi in
                let fs = fs(req)
                // A listing of an earlier server's opendir is made again.
                let entries = fs.handles.directory(fi?.pointee.fh ?? 0) ?? fs.rootListing()
                var buffer = [CChar](repeating: 0, count: size)
                var used = 0
                buffer.withUnsafeMutableBufferPointer { out in
                    for index in max(Int(offset), 0)..<entries.count {
                        let entry = entries[index]
                        var st = stat()
                        st.st_ino = UInt(entry.inode)
                        st.st_mode = entry.mode
                        let needed = fuse_add_direntry(
                            req, out.baseAddress! + used, size - used, entry.name, &st, off_t(index + 1))
                        if needed > size - used { break }
                        used += needed
                    }
                    _ = fuse_reply_buf(req, out.baseAddress, used)
                }
            }

    static let releasedir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, _, fi in
        if let fh = fi?.pointee.fh { fs(req).handles.remove(fh) }
        fuse_reply_err(req, 0)
    }

    static let statfs: @convention(c) (fuse_req_t?, fuse_ino_t) -> Void = { req, _ in
        var st = statvfs()
        st.f_bsize = 4096
        st.f_frsize = 4096
        st.f_namemax = 255
        fuse_reply_statfs(req, &st)
    }
}
