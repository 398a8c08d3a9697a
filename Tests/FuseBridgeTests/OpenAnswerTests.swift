import Glibc
import Testing

@testable import FuseBridge

/// OPEN, READ and RELEASE, answered without a mount: writes refused, snapshots per open,
/// versioned inodes through the page cache, ESTALE for a version no longer served.
@Suite struct OpenAnswerTests {
    /// Any write access is EROFS, before any content is asked for; no handle is made.
    @Test func writesAreEROFS() {
        let asked = Source(Source.text("x"))
        let bridge = TestBridge([asked.file("a")])
        for flags in [O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_CREAT, O_RDWR | O_APPEND, O_ACCMODE] {
            #expect(bridge.open(2, flags: flags).errno == EROFS, "flags \(flags)")
        }
        #expect(bridge.fs.openHandleCount == 0)
    }

    @Test func theRootIsEISDIRAndAnOpenWithoutInfoIsEINVAL() {
        let bridge = TestBridge([Source(Source.text("x")).file("a")])
        #expect(bridge.open(VirtualDirectory.rootInode).errno == EISDIR)
        #expect(
            bridge.fs.open(inode: 2, flags: nil, caller: TestBridge.reader, request: TestBridge.request(1)).errno
                == EINVAL)
    }

    /// A per-open file: each open snapshots the bytes for its whole life (`direct_io`, no
    /// cache), and its release drops the snapshot.
    @Test func eachOpenOfAPerOpenFileReadsOneSnapshot() throws {
        let source = Source(Source.text("first"))
        let bridge = TestBridge([source.file("a")])
        let first = try #require(bridge.open(2).opened)
        #expect(first.fh != 0 && first.directIO && !first.keepCache)
        source.set(Source.text("second"))
        let second = try #require(bridge.open(2).opened)
        #expect(second.fh != first.fh)
        #expect(bridge.read(2, fh: first.fh).text == "first")
        #expect(bridge.read(2, fh: second.fh).text == "second")
        #expect(bridge.fs.openHandleCount == 2)
        #expect(bridge.fs.release(fh: first.fh).isSuccess)
        #expect(bridge.fs.release(fh: second.fh).isSuccess)
        #expect(bridge.fs.openHandleCount == 0)
    }

    /// The current version's inode opens without a handle and keeps the kernel's cache: its
    /// pages only ever hold this version.
    @Test func theCurrentVersionOpensThroughThePageCache() throws {
        let bridge = TestBridge([Source(Source.text("cached", version: 5)).file("v", caching: .versioned)])
        let inode = try #require(bridge.lookup("v").entry).inode
        let open = try #require(bridge.open(inode).opened)
        #expect(open == OpenAnswer(fh: 0, directIO: false, keepCache: true))
        #expect(bridge.read(inode).text == "cached")
        #expect(bridge.fs.openHandleCount == 0)
    }

    /// An old version's inode is ESTALE, even while the kernel still holds it: the kernel
    /// looks the name up again and finds the new inode. Its bytes are never served as
    /// another version's.
    @Test func anOpenOfAVersionNoLongerServedIsESTALE() throws {
        let (bridge, _, old, new) = try TestBridge.twoVersions()
        #expect(bridge.open(old).errno == ESTALE)
        #expect(bridge.read(old).text == "one", "read through its own page cache: its own bytes")
        #expect(bridge.open(new).opened?.keepCache == true)
    }

    /// A reader held to an older version (its open gives that version) is ESTALE on the
    /// newer inode, and opens its own version's inode.
    @Test func aReaderHeldToAnOlderVersionIsESTALEOnTheNewInode() throws {
        let held = Caller(pid: 5, uid: 7, gid: 7)
        let content: @Sendable (Caller) -> VirtualFile.Content = { caller in
            caller.uid == 7 ? Source.text("old", version: 1) : Source.text("new", version: 2)
        }
        let file = VirtualFile(
            name: "v", permissions: 0o444, caching: .versioned, peek: { Source.text("new", version: 2) },
            lookup: content, open: content)
        let bridge = TestBridge([file])
        let new = try #require(bridge.lookup("v").entry).inode
        let old = try #require(bridge.lookup("v", caller: held).entry).inode
        #expect(bridge.open(new, caller: held).errno == ESTALE)
        #expect(bridge.open(old, caller: held).opened?.keepCache == true)
        #expect(bridge.read(old).text == "old")
        #expect(bridge.open(old).errno == ESTALE)
    }

    @Test func unknownInodesAreENOENTOrESTALE() {
        let bridge = TestBridge([Source(Source.text("x", version: 2)).file("a", caching: .versioned)])
        for inode: UInt64 in [0, 3, VersionTable.firstInode - 1] {
            #expect(bridge.open(inode).errno == ENOENT, "\(inode)")
        }
        for inode in [VersionTable.inode(file: 0, version: 1), VersionTable.inode(file: 5, version: 2), UInt64.max] {
            #expect(bridge.open(inode ?? 0).errno == ESTALE)
        }
        #expect(bridge.fs.openHandleCount == 0)
    }

    @Test func anOpenFailsAsTheFileSays() {
        let bridge = TestBridge([Source(.failure(EACCES)).file("f"), Source(.absent).file("a")])
        #expect(bridge.open(2).errno == EACCES)
        #expect(bridge.open(3).errno == ENOENT)
        #expect(bridge.fs.requestCounts.open == 2)
    }

    /// `default_permissions`: the kernel checks modes and owners before an OPEN comes, so the
    /// bridge opens for any caller the file's content allows.
    @Test func permissionsAreTheKernelsToCheck() throws {
        #expect(MountOptions().optionString.split(separator: ",").contains("default_permissions"))
        let bridge = TestBridge([Source(Source.text("secret")).file("a", permissions: 0o400)])
        let stranger = Caller(pid: 9, uid: 4242, gid: 4242)
        let fh = try #require(bridge.open(2, caller: stranger).opened).fh
        #expect(bridge.read(2, fh: fh).text == "secret")
    }

    /// An open answer the kernel does not take leaves no handle behind.
    @Test func anOpenTheKernelDoesNotTakeLeavesNoHandle() throws {
        let bridge = TestBridge([Source(Source.text("x")).file("a")])
        let answer = bridge.open(2)
        #expect(bridge.fs.openHandleCount == 1)
        bridge.recorder.accepts.store(false, ordering: .relaxed)
        bridge.fs.deliver(answer, to: TestBridge.request(3))
        #expect(bridge.fs.openHandleCount == 0)
        bridge.fs.deliver(.open(OpenAnswer(fh: 0, directIO: false, keepCache: true)), to: TestBridge.request(4))
        bridge.fs.deliver(.error(EIO), to: TestBridge.request(5))
        #expect(bridge.fs.openHandleCount == 0)
    }

    // MARK: read

    /// Offsets and sizes of any value give the bytes that exist there, or none.
    @Test func readsClampToTheBytes() throws {
        let bridge = TestBridge([Source(Source.text("0123456789")).file("a")])
        let fh = try #require(bridge.open(2).opened).fh
        let cases: [(size: Int, offset: Int64, expected: String)] = [
            (4, 0, "0123"), (4, 8, "89"), (100, 3, "3456789"), (0, 0, ""), (-1, 0, ""), (Int.min, 5, ""),
            (Int.max, 0, "0123456789"), (Int.max, 9, "9"), (1, 10, ""), (1, 11, ""), (Int.max, Int64.max, ""),
        ]
        for (size, offset, expected) in cases {
            #expect(bridge.fs.read(inode: 2, fh: fh, size: size, offset: offset).text == expected, "\(size)@\(offset)")
        }
        #expect(bridge.fs.read(inode: 2, fh: fh, size: 4, offset: -1).errno == EINVAL)
        #expect(bridge.fs.read(inode: 2, fh: fh, size: 4, offset: Int64.min).errno == EINVAL)
    }

    /// A handle answers only for the inode it was opened on.
    @Test func aHandleReadsOnlyItsOwnInode() throws {
        let first = Source(Source.text("first"))
        let bridge = TestBridge([first.file("a"), Source(Source.text("other")).file("b")])
        let fh = try #require(bridge.open(2).opened).fh
        first.set(Source.text("changed"))
        #expect(bridge.read(2, fh: fh).text == "first")
        #expect(bridge.read(3, fh: fh).text == "other", "not the first file's snapshot")
    }

    /// Without a handle a per-open inode has nothing to read from (EBADF; EIO once opens no
    /// longer reach the daemon); an inode nobody knows neither.
    @Test func readsWithoutAHandleOrOfUnknownInodesFail() {
        let bridge = TestBridge([Source(Source.text("x")).file("a")])
        #expect(bridge.read(2, fh: 0).errno == EBADF)
        for inode: UInt64 in [0, 1, 3, VersionTable.firstInode, UInt64.max] {
            #expect(bridge.read(inode, fh: 0).errno == EBADF, "\(inode)")
            #expect(bridge.read(inode, fh: 0xDEAD_BEEF).errno == EBADF, "\(inode)")
        }
        bridge.fs.opensEndedFlag.store(true, ordering: .relaxed)
        #expect(bridge.read(2, fh: 0).errno == EIO)
        #expect(bridge.fs.requestCounts.read == 12)
    }

    /// Releases of handles never issued (or already released) change nothing.
    @Test func releasesOfUnknownHandlesChangeNothing() throws {
        let bridge = TestBridge([Source(Source.text("x")).file("a")])
        let fh = try #require(bridge.open(2).opened).fh
        for other: UInt64? in [nil, 0, 1, fh + 1, fh ^ (1 << 40), UInt64.max] {
            #expect(bridge.fs.release(fh: other).isSuccess)
        }
        #expect(bridge.fs.openHandleCount == 1)
        #expect(bridge.read(2, fh: fh).text == "x")
        _ = bridge.fs.release(fh: fh)
        _ = bridge.fs.release(fh: fh)
        #expect(bridge.fs.openHandleCount == 0)
    }
}
