import CFuse3
import Glibc
import Testing

@testable import FuseBridge

/// The thin layer's own few facts, without a mount: which operations reach the bridge, how
/// a name is read, how READDIR entries are sized, what INIT asks for, the mount options.
@Suite struct ReplyLayerTests {
    /// Only reads reach the bridge: no operation that writes is in the table (the mount is
    /// `ro`; the kernel answers EROFS for writes and libfuse ENOSYS for the rest).
    @Test func theTableHoldsNoWritingOperation() {
        let ops = FuseOps.table
        #expect(ops.write == nil && ops.write_buf == nil && ops.setattr == nil && ops.create == nil)
        #expect(ops.mknod == nil && ops.mkdir == nil && ops.unlink == nil && ops.rmdir == nil)
        #expect(ops.symlink == nil && ops.rename == nil && ops.link == nil && ops.fallocate == nil)
        #expect(ops.setxattr == nil && ops.removexattr == nil && ops.copy_file_range == nil)
        #expect(ops.getxattr == nil && ops.listxattr == nil && ops.access == nil && ops.flush == nil)
        #expect(ops.lookup != nil && ops.getattr != nil && ops.open != nil && ops.read != nil)
        #expect(ops.release != nil && ops.opendir != nil && ops.readdir != nil && ops.releasedir != nil)
        #expect(ops.statfs != nil && ops.forget != nil && ops.forget_multi != nil && ops.`init` != nil)
    }

    @Test func theMountIsReadOnlyWithDefaultPermissions() {
        var options = MountOptions()
        let fixed = ["ro", "nosuid", "nodev", "noexec", "default_permissions", "fsname=credfs", "subtype=credfs"]
        #expect(options.optionString.split(separator: ",").map(String.init) == fixed)
        options.allowOther = true
        #expect(options.optionString.split(separator: ",").map(String.init) == fixed + ["allow_other"])
    }

    /// A name is read up to its NUL and at most 4,096 bytes (the kernel sends at most 1,024).
    @Test func namesStopAtTheirNulAndAt4KiB() {
        #expect(FuseOps.name(nil) == nil)
        "a\u{0}b".withCString { #expect(FuseOps.name($0) == [0x61]) }
        "".withCString { #expect(FuseOps.name($0) == []) }
        String(repeating: "n", count: 5000).withCString { #expect(FuseOps.name($0)?.count == 4096) }
    }

    /// The READDIR sizes the bridge decides with are the ones `fuse_add_direntry` packs.
    @Test func entrySizesAreLibfuses() {
        for length in [0, 1, 7, 8, 9, 255, 256, 4095] {
            let entry = DirectoryEntry(name: String(repeating: "e", count: length), inode: 2, mode: S_IFREG)
            let packed = entry.name.withCString { fuse_add_direntry(TestBridge.request(1), nil, 0, $0, nil, 0) }
            #expect(entry.size == packed, "name of \(length) bytes")
        }
    }

    /// INIT asks for parallel lookups when offered, and for the end of OPEN only with
    /// ``MountOptions/kernelCache`` and only when offered.
    @Test func initAsksOnlyForWhatIsOfferedAndWanted() {
        let parallel = UInt32(FUSE_CAP_PARALLEL_DIROPS)
        let noOpen = UInt32(FUSE_CAP_NO_OPEN_SUPPORT)
        let plain = TestBridge([])
        #expect(plain.fs.wants(capable: 0) == 0)
        #expect(plain.fs.wants(capable: parallel | noOpen) == parallel)
        #expect(!plain.fs.opensBypassDaemon)
        var options = MountOptions()
        options.kernelCache = true
        let cached = TestBridge([], options: options)
        #expect(cached.fs.wants(capable: parallel) == parallel)
        #expect(!cached.fs.opensBypassDaemon)
        #expect(cached.fs.wants(capable: UInt32.max) == parallel | noOpen)
        #expect(cached.fs.opensBypassDaemon)
    }

    /// With the kernel's page cache only (no OPEN), the first open of a current version
    /// ends opens, but only once every file is versioned; until then opens decide.
    @Test func opensEndOnlyOnceEveryFileIsVersioned() throws {
        var options = MountOptions()
        options.kernelCache = true
        let late = Source(.pending(timeout: .seconds(60)))
        let bridge = TestBridge(
            [Source(Source.text("v", version: 2)).file("v", caching: .versioned), late.file("w", caching: .versioned)],
            options: options)
        _ = bridge.fs.wants(capable: UInt32(FUSE_CAP_NO_OPEN_SUPPORT))
        let inode = try #require(bridge.lookup("v").entry).inode
        #expect(bridge.open(inode).opened?.keepCache == true)
        #expect(!bridge.fs.opensEnded)
        late.set(Source.text("w", version: 1))
        #expect(bridge.open(inode).errno == ENOSYS)
        #expect(bridge.fs.opensEnded)
        #expect(bridge.open(inode, flags: O_WRONLY).errno == EROFS, "writes are refused first")
    }

    /// FORGET frees a node at its last reference; unknown inodes and any counts are no
    /// trouble, and FORGET has no reply.
    @Test func forgetsFreeNodesAndIgnoreTheUnknown() throws {
        let bridge = TestBridge([Source(Source.text("v", version: 1)).file("v", caching: .versioned)])
        let inode = try #require(bridge.lookup("v").entry).inode
        _ = bridge.lookup("v")
        let hostile: [(inode: UInt64, count: UInt64)] = [(0, 1), (1, UInt64.max), (UInt64.max, UInt64.max), (2, 0)]
        #expect(bridge.fs.forget(hostile).isNone)
        #expect(bridge.fs.forget([]).isNone)
        #expect(bridge.fs.versionedInodeCount == 1)
        _ = bridge.fs.forget([(inode, 1)])
        #expect(bridge.fs.versionedInodeCount == 1)
        _ = bridge.fs.forget([(inode, UInt64.max)])
        #expect(bridge.fs.versionedInodeCount == 0)
    }
}
