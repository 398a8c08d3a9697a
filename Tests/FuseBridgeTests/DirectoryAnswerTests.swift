import Glibc
import Testing

@testable import FuseBridge

/// OPENDIR, READDIR and RELEASEDIR, answered without a mount: the entries, `.` and `..`,
/// resuming at an offset, offsets past the end, small buffers.
@Suite struct DirectoryAnswerTests {
    static func tree() -> TestBridge {
        TestBridge([
            Source(Source.text("p")).file("per"), Source(.absent).file("gone"),
            Source(Source.text("v", version: 9)).file("ver", caching: .versioned),
            Source(.pending(timeout: .seconds(5))).file("later"),
        ])
    }

    /// `.` and `..` first, then every file that exists, with the inode a lookup gives now
    /// (so `ls -i` and `stat` agree) and its type.
    @Test func aListingHasTheDotsAndTheInodesLookupsGive() throws {
        let bridge = Self.tree()
        let entries = Array(bridge.fs.readdir(fh: 0, size: 4096, offset: 0).listing)
        #expect(entries.map(\.name) == [".", "..", "per", "ver", "later"])
        #expect(entries.map(\.inode) == [1, 1, 2, VersionTable.inode(file: 2, version: 9), 5])
        #expect(entries.map(\.mode) == [S_IFDIR, S_IFDIR, S_IFREG, S_IFREG, S_IFREG])
        #expect(bridge.lookup("ver").entry?.inode == entries[3].inode)
        #expect(bridge.lookup("per").entry?.inode == entries[2].inode)
    }

    /// Each entry's offset is its index: a read from any offset lists the rest.
    @Test func aReadFromAnyOffsetListsTheRest() {
        let bridge = Self.tree()
        let all = bridge.list()
        for offset in 0...all.count {
            let answer = bridge.fs.readdir(fh: 0, size: 4096, offset: Int64(offset))
            #expect(answer.listing.map(\.name) == Array(all[offset...]))
            #expect(answer.listing.isEmpty || answer.listing.startIndex == offset, "the next read resumes at index + 1")
        }
    }

    @Test func offsetsPastTheEndOrNegativeAreTheEnd() {
        let bridge = Self.tree()
        let count = Int64(bridge.list().count)
        for offset in [count, count + 1, 1 << 40, Int64.max, -1, Int64.min] {
            #expect(bridge.list(offset: offset).isEmpty, "\(offset)")
        }
    }

    /// A reply never holds more than the request asked for: what fits, and the next read
    /// resumes after it, so small buffers list everything exactly once.
    @Test func aSmallBufferTakesWhatFitsAndTheNextReadResumes() {
        let bridge = Self.tree()
        let all = bridge.list()
        for size in [32, 40, 64, 100] {
            var names: [String] = []
            var offset: Int64 = 0
            while true {
                let part = bridge.fs.readdir(fh: 0, size: size, offset: offset).listing
                #expect(part.reduce(0) { $0 + $1.size } <= size)
                guard let last = part.indices.last else { break }
                names += part.map(\.name)
                offset = Int64(last + 1)
            }
            #expect(names == all, "size \(size)")
        }
        for size in [0, 31, -1, Int.min] {
            #expect(bridge.list(size: size).isEmpty, "size \(size)")
        }
        #expect(bridge.list(size: Int.max) == all)
    }

    /// However large the request, a reply holds at most 64 KiB.
    @Test func aReplyIsAtMost64KiB() {
        let files = (0..<VersionTable.maxFiles).map { i in
            Source(Source.text("x")).file(String(repeating: "n", count: 2100) + "\(i)")
        }
        let entries = TestBridge(files).fs.readdir(fh: 0, size: Int.max, offset: 0).listing
        #expect(entries.reduce(0) { $0 + $1.size } <= FuseFileSystem.readdirCapacity)
        #expect(entries.count < VersionTable.maxFiles + 2)
        #expect(entries.count > 10)
    }

    /// An open directory lists what was there at its OPENDIR; a handle the process does not
    /// know (an earlier server's, after a takeover) lists afresh.
    @Test func aListingIsFixedAtOpendirAndUnknownHandlesListAfresh() throws {
        let source = Source(Source.text("here"))
        let bridge = TestBridge([source.file("a"), Source(Source.text("b")).file("b")])
        let handle = try #require(bridge.fs.opendir(inode: 1, hasInfo: true).opened)
        #expect(handle.fh != 0)
        source.set(.absent)
        #expect(bridge.list(fh: handle.fh) == [".", "..", "a", "b"])
        #expect(bridge.list(fh: 0) == [".", "..", "b"])
        #expect(bridge.list(fh: handle.fh &+ 1) == [".", "..", "b"])
        #expect(bridge.list(fh: UInt64.max) == [".", "..", "b"])
        #expect(bridge.fs.openHandleCount == 1)
        #expect(bridge.fs.release(fh: handle.fh).isSuccess)
        #expect(bridge.fs.openHandleCount == 0)
    }

    /// A file handle is not a directory's: its listing is made afresh.
    @Test func aFileHandleListsAfresh() throws {
        let bridge = TestBridge([Source(Source.text("x")).file("a")])
        let fh = try #require(bridge.open(2).opened).fh
        #expect(bridge.list(fh: fh) == [".", "..", "a"])
    }

    @Test func onlyTheRootOpensAsADirectory() {
        let bridge = Self.tree()
        for inode: UInt64 in [0, 2, 3, 99, VersionTable.firstInode, UInt64.max] {
            #expect(bridge.fs.opendir(inode: inode, hasInfo: true).errno == ENOTDIR, "\(inode)")
        }
        #expect(bridge.fs.opendir(inode: 1, hasInfo: false).errno == EINVAL)
        #expect(bridge.fs.openHandleCount == 0)
    }

    /// An OPENDIR the kernel does not take leaves no handle.
    @Test func anOpendirTheKernelDoesNotTakeLeavesNoHandle() {
        let bridge = Self.tree()
        let answer = bridge.fs.opendir(inode: 1, hasInfo: true)
        bridge.recorder.accepts.store(false, ordering: .relaxed)
        bridge.fs.deliver(answer, to: TestBridge.request(2))
        #expect(bridge.fs.openHandleCount == 0)
    }
}
