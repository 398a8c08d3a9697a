import Glibc
import Testing

@testable import FuseBridge

/// A successor's answers to what the kernel holds from its predecessor, without a mount:
/// carried versioned inodes, current-version inodes it never heard of, handles it never
/// issued. See docs/hitless.md.
@Suite struct TakeoverAnswerTests {
    /// The carried nodes answer as they did: an old version's attributes and bytes (the
    /// kernel still holds it), ESTALE on its open once another version is served.
    @Test func carriedVersionsAnswerAsBefore() throws {
        let (first, source, old, new) = try TestBridge.twoVersions()
        let next = TestBridge([source.file("v", caching: .versioned)])
        next.fs.importState(first.fs.exportState())
        #expect(next.fs.versionedInodeCount == 2)
        #expect(next.fs.getattr(inode: old).attr?.st_size == 3)
        #expect(next.read(old).text == "one")
        #expect(next.open(old).errno == ESTALE)
        #expect(next.open(new).opened?.keepCache == true)
        // The carried lookup counts go on: one FORGET each frees them.
        _ = next.fs.forget([(old, 1), (new, 1)])
        #expect(next.fs.versionedInodeCount == 0)
    }

    /// An inode of the current version that the predecessor gave out after its last state
    /// push is known by its number alone; another version's is ESTALE.
    @Test func theCurrentVersionIsKnownByItsNumberAlone() throws {
        let source = Source(Source.text("now", version: 6))
        let bridge = TestBridge([Source(Source.text("x")).file("x"), source.file("v", caching: .versioned)])
        let current = try #require(VersionTable.inode(file: 1, version: 6))
        #expect(bridge.fs.getattr(inode: current).attr?.st_size == 3)
        #expect(bridge.open(current).opened == OpenAnswer(fh: 0, directIO: false, keepCache: true))
        #expect(bridge.read(current).text == "now")
        for other in [VersionTable.inode(file: 1, version: 5), VersionTable.inode(file: 0, version: 6)] {
            #expect(bridge.fs.getattr(inode: other ?? 0).errno == ESTALE)
            #expect(bridge.open(other ?? 0).errno == ESTALE)
            #expect(bridge.read(other ?? 0).errno == EBADF)
        }
        #expect(bridge.fs.versionedInodeCount == 0, "nothing is counted without a lookup")
    }

    /// A handle the process never issued (an earlier server's, or a forged one) on a
    /// per-open inode reads the file's current bytes, as a new open would snapshot.
    @Test func aHandleNeverIssuedReadsTheCurrentBytes() throws {
        let source = Source(Source.text("old"))
        let first = TestBridge([source.file("p")])
        let fh = try #require(first.open(2).opened).fh
        source.set(Source.text("current"))
        let next = TestBridge([source.file("p")])
        next.fs.importState(first.fs.exportState())
        #expect(next.read(2, fh: fh).text == "current")
        #expect(next.read(2, fh: UInt64.max).text == "current")
        let made = try #require(next.open(2).opened).fh
        #expect(made >> 32 != fh >> 32, "a successor's handles are of another epoch")
        source.set(.pending(timeout: .seconds(5)))
        #expect(next.read(2, fh: fh).errno == EBADF, "no content to read")
    }

    /// Carried nodes are matched by name (an upgrade may reorder or drop files); a node
    /// whose number this binary gives another file, or of a file it no longer has, is
    /// dropped: ESTALE, never another file's bytes.
    @Test func carriedNodesMatchByName() throws {
        let kept = Source(Source.text("kept", version: 3))
        let moved = Source(Source.text("moved", version: 3))
        let dropped = Source(Source.text("dropped", version: 3))
        let first = TestBridge([
            kept.file("kept", caching: .versioned), moved.file("moved", caching: .versioned),
            dropped.file("dropped", caching: .versioned),
        ])
        let keptInode = try #require(first.lookup("kept").entry).inode
        let movedInode = try #require(first.lookup("moved").entry).inode
        let droppedInode = try #require(first.lookup("dropped").entry).inode
        kept.set(Source.text("kept4", version: 4))
        moved.set(Source.text("moved4", version: 4))
        let next = TestBridge([
            kept.file("kept", caching: .versioned), Source(.absent).file("new"),
            moved.file("moved", caching: .versioned),
        ])
        next.fs.importState(first.fs.exportState())
        #expect(next.read(keptInode).text == "kept")
        #expect(next.fs.getattr(inode: movedInode).errno == ESTALE)
        #expect(next.fs.getattr(inode: droppedInode).errno == ESTALE)
        #expect(next.fs.versionedInodeCount == 1)
    }

    /// Within the state's byte budget, each file's newest versions go first; versions
    /// past it are ESTALE in the successor (a lookup again).
    @Test func versionsPastTheBudgetAreESTALEInTheSuccessor() throws {
        let source = Source(Source.text(String(repeating: "a", count: 100), version: 1))
        let first = TestBridge([source.file("v", caching: .versioned)])
        var inodes: [UInt64] = []
        for version in 1...5 {
            source.set(Source.text(String(repeating: "a", count: 100), version: UInt64(version)))
            inodes.append(try #require(first.lookup("v").entry).inode)
        }
        let next = TestBridge([source.file("v", caching: .versioned)])
        next.fs.importState(first.fs.exportState(nodeBudget: 250))
        #expect(inodes.map { next.fs.getattr(inode: $0).errno } == [ESTALE, ESTALE, ESTALE, nil, nil])
    }
}
