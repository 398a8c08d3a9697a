import Glibc
import Testing

@testable import FuseBridge

/// GETATTR and STATFS, answered without a mount: modes, owners, sizes that match the bytes
/// served, ESTALE for a version no longer served.
@Suite struct AttributeAnswerTests {
    @Test func theRootIsADirectoryKeptLong() throws {
        let bridge = TestBridge([Source(Source.text("a")).file("a")])
        let answer = bridge.fs.getattr(inode: VirtualDirectory.rootInode)
        let st = try #require(answer.attr)
        #expect(st.st_mode == S_IFDIR | 0o555)
        #expect(st.st_uid == 10 && st.st_gid == 20 && st.st_nlink == 2 && st.st_ino == 1)
        #expect(st.st_mtim.tv_sec == 1_700_000_000)
        #expect(answer.attrTimeout == FuseFileSystem.versionedTimeout)
    }

    /// A file's mode, owner and size are what it says and what a read returns; per-open
    /// attributes are never cached.
    @Test func sizesModesAndOwnersMatchTheBytesServed() throws {
        let source = Source(Source.text(String(repeating: "k", count: 1_000)))
        let bridge = TestBridge([source.file("a", permissions: 0o400)])
        let answer = bridge.fs.getattr(inode: 2)
        let st = try #require(answer.attr)
        #expect(st.st_mode == S_IFREG | 0o400)
        #expect(st.st_uid == 1000 && st.st_gid == 1001 && st.st_nlink == 1 && st.st_ino == 2)
        #expect(st.st_blocks == 2 && st.st_blksize == 4096)
        #expect(answer.attrTimeout == 0)
        let fh = try #require(bridge.open(2).opened).fh
        #expect(bridge.read(2, fh: fh).bytes?.count == Int(st.st_size))
        // A change shows at once in the next attributes.
        source.set(Source.text("short"))
        #expect(bridge.fs.getattr(inode: 2).attr?.st_size == 5)
    }

    @Test func aVersionedInodesAttributesAreFixedForItsLife() throws {
        let source = Source(Source.text("four", version: 1))
        let bridge = TestBridge([source.file("v", caching: .versioned, permissions: 0o444)])
        let inode = try #require(bridge.lookup("v").entry).inode
        source.set(Source.text("a longer one", version: 2))
        let answer = bridge.fs.getattr(inode: inode)
        let st = try #require(answer.attr)
        #expect(st.st_size == 4 && st.st_ino == inode && st.st_mode == S_IFREG | 0o444)
        #expect(answer.attrTimeout == 86_400)
        #expect(bridge.read(inode).bytes?.count == Int(st.st_size))
    }

    /// A file without content yet, or failing, exists with size 0 (its open decides); an
    /// absent one does not.
    @Test func pendingAndFailingFilesExistEmptyAbsentOnesDoNot() {
        let bridge = TestBridge([
            Source(.pending(timeout: .seconds(5))).file("p"), Source(.failure(EIO)).file("f"),
            Source(.absent).file("a"),
        ])
        #expect(bridge.fs.getattr(inode: 2).attr?.st_size == 0)
        #expect(bridge.fs.getattr(inode: 3).attr?.st_size == 0)
        #expect(bridge.fs.getattr(inode: 4).errno == ENOENT)
    }

    @Test func unknownInodesAreENOENTOrESTALE() {
        let bridge = TestBridge([Source(Source.text("a", version: 3)).file("a", caching: .versioned)])
        for inode: UInt64 in [0, 3, 4, 1000, VersionTable.firstInode - 1] {
            #expect(bridge.fs.getattr(inode: inode).errno == ENOENT, "\(inode)")
        }
        // Versioned numbers: another version than the current one, never looked up.
        let other = [
            VersionTable.inode(file: 0, version: 2), VersionTable.inode(file: 0, version: 4),
            VersionTable.inode(file: 1, version: 3), VersionTable.firstInode, UInt64.max,
        ]
        for inode in other.compactMap({ $0 }) {
            #expect(bridge.fs.getattr(inode: inode).errno == ESTALE, "\(inode)")
        }
    }

    @Test func getattrsAreCounted() {
        let bridge = TestBridge([])
        _ = bridge.fs.getattr(inode: 1)
        _ = bridge.fs.getattr(inode: 99)
        #expect(bridge.fs.requestCounts.getattr == 2)
    }

    @Test func statfsIsFixed() throws {
        guard case .statfs(let st) = FuseFileSystem.statfs() else {
            Issue.record("not a statfs answer")
            return
        }
        #expect(st.f_bsize == 4096 && st.f_frsize == 4096 && st.f_namemax == 255)
        #expect(st.f_blocks == 0 && st.f_files == 0)
    }
}
