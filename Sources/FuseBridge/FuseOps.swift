import CFuse3
import Glibc

/// The thin layer between libfuse and the bridge: the low-level operations table, whose
/// C functions take a request's values out of libfuse's buffers, ask ``FuseFileSystem`` for
/// the ``Answer`` (FuseFileSystem+Answers.swift), and send it with ``reply(_:to:)``, the
/// only caller of `fuse_reply_*`. No rule of the bridge lives here.
///
/// The closures capture nothing and live outside `main.swift`, so libfuse's worker threads
/// may call them. Operations not in the table (writes, `setattr`, `mknod`, xattrs...) never
/// reach the bridge: the mount is `ro`, and libfuse answers the rest ENOSYS.
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

    /// A name's bytes up to its NUL, at most 4,096 of them (longer names match nothing).
    static func name(_ name: UnsafePointer<CChar>?) -> [UInt8]? {
        guard let name else { return nil }
        return Array(UnsafeBufferPointer(start: name, count: strnlen(name, 4096))).map { UInt8(bitPattern: $0) }
    }

    /// Sends the answer `decide` gives for the request's file system, or EIO without one.
    static func serve(_ req: fuse_req_t?, _ decide: (fuse_req_t, FuseFileSystem) -> Answer) {
        guard let req else { return }
        guard let fs = fs(req) else {
            _ = reply(.error(EIO), to: req)
            return
        }
        fs.deliver(decide(req, fs), to: req)
    }

    /// Sends `answer` to the kernel. False when it did not take it (the request was
    /// interrupted): the caller gives back what the answer held.
    static func reply(_ answer: Answer, to req: fuse_req_t) -> Bool {
        switch answer {
        case .entry(let entry):
            var param = fuse_entry_param()
            param.ino = entry.inode
            param.attr = entry.attr
            param.attr_timeout = entry.attrTimeout
            param.entry_timeout = entry.entryTimeout
            return fuse_reply_entry(req, &param) == 0
        case .attr(var st, let timeout):
            return fuse_reply_attr(req, &st, timeout) == 0
        case .open(let open):
            var info = fuse_file_info()
            info.fh = open.fh
            info.direct_io = open.directIO ? 1 : 0
            info.keep_cache = open.keepCache ? 1 : 0
            return fuse_reply_open(req, &info) == 0
        case .data(let bytes):
            return bytes.withUnsafeBufferPointer { fuse_reply_buf(req, $0.baseAddress, $0.count) } == 0
        case .directory(let entries):
            return replyDirectory(entries, to: req)
        case .statfs(var st):
            return fuse_reply_statfs(req, &st) == 0
        case .success:
            return fuse_reply_err(req, 0) == 0
        case .error(let code):
            return fuse_reply_err(req, code) == 0
        case .none:
            fuse_reply_none(req)
            return true
        case .parked:
            return true
        }
    }

    /// Packs `entries` with `fuse_add_direntry` (each one's offset: its index + 1, where the
    /// next READDIR resumes) and sends them.
    static func replyDirectory(_ entries: ArraySlice<DirectoryEntry>, to req: fuse_req_t) -> Bool {
        let capacity = entries.reduce(0) { $0 + $1.size }
        guard capacity > 0 else { return fuse_reply_buf(req, nil, 0) == 0 }
        var buffer = [CChar](repeating: 0, count: capacity)
        return buffer.withUnsafeMutableBufferPointer { out -> Bool in
            guard let base = out.baseAddress else { return fuse_reply_buf(req, nil, 0) == 0 }
            var used = 0
            for index in entries.indices {
                let entry = entries[index]
                var st = stat()
                st.st_ino = UInt(truncatingIfNeeded: entry.inode)
                st.st_mode = entry.mode
                let needed = fuse_add_direntry(req, base + used, capacity - used, entry.name, &st, off_t(index + 1))
                if needed > capacity - used { break }
                used += needed
            }
            return fuse_reply_buf(req, base, used) == 0
        }
    }

    static let initialize: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutablePointer<fuse_conn_info>?) -> Void = {
        userdata, conn in
        guard let userdata, let conn else { return }
        let fs = Unmanaged<FuseFileSystem>.fromOpaque(userdata).takeUnretainedValue()
        fs.invalidator.kernelOffered(minor: conn.pointee.proto_minor)
        conn.pointee.want |= fs.wants(capable: conn.pointee.capable)
    }

    static let lookup: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafePointer<CChar>?) -> Void = {
        req, parent, name in
        serve(req) { req, fs in
            fs.lookup(parent: parent, name: FuseOps.name(name), caller: caller(req), request: req)
        }
    }

    static let getattr: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, _ in
        serve(req) { _, fs in fs.getattr(inode: inode) }
    }

    static let open: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, fi in
        serve(req) { req, fs in
            fs.open(inode: inode, flags: fi?.pointee.flags, caller: caller(req), request: req)
        }
    }

    static let read:
        @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) ->
            Void = {
                req, inode, size, offset, fi in
                serve(req) { _, fs in
                    fs.read(inode: inode, fh: fi?.pointee.fh ?? 0, size: size, offset: Int64(offset))
                }
            }

    static let release: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, _, fi in
        serve(req) { _, fs in fs.release(fh: fi?.pointee.fh) }
    }

    static let forget: @convention(c) (fuse_req_t?, fuse_ino_t, UInt64) -> Void = {
        req, inode, count in
        guard let req else { return }
        _ = reply(fs(req)?.forget([(inode, count)]) ?? .none, to: req)
    }

    static let forgetMulti: @convention(c) (fuse_req_t?, Int, UnsafeMutablePointer<fuse_forget_data>?) -> Void = {
        req, count, forgets in
        guard let req else { return }
        var items: [(inode: UInt64, count: UInt64)] = []
        if let forgets, count > 0 {
            items = UnsafeBufferPointer(start: forgets, count: count).map { ($0.ino, $0.nlookup) }
        }
        _ = reply(fs(req)?.forget(items) ?? .none, to: req)
    }

    static let opendir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, inode, fi in
        serve(req) { _, fs in fs.opendir(inode: inode, hasInfo: fi != nil) }
    }

    static let readdir:
        @convention(c) (fuse_req_t?, fuse_ino_t, Int, off_t, UnsafeMutablePointer<fuse_file_info>?) ->
            Void = {
                req, _, size, offset, fi in
                serve(req) { _, fs in fs.readdir(fh: fi?.pointee.fh ?? 0, size: size, offset: Int64(offset)) }
            }

    static let releasedir: @convention(c) (fuse_req_t?, fuse_ino_t, UnsafeMutablePointer<fuse_file_info>?) -> Void = {
        req, _, fi in
        serve(req) { _, fs in fs.release(fh: fi?.pointee.fh) }
    }

    static let statfs: @convention(c) (fuse_req_t?, fuse_ino_t) -> Void = { req, _ in
        guard let req else { return }
        // Fixed figures: no file system needed.
        _ = reply(FuseFileSystem.statfs(), to: req)
    }
}
