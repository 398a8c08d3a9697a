import Glibc
import Testing

@testable import FuseBridge

/// LOOKUP, answered without a mount: which inode a name gets, for how long the kernel may
/// keep it, and when a name is refused.
@Suite struct LookupAnswerTests {
    @Test func lookupsOutsideTheRootAreENOTDIR() {
        let bridge = TestBridge([Source(Source.text("a")).file("a")])
        for parent: UInt64 in [0, 2, 3, VersionTable.firstInode, UInt64.max] {
            let answer = bridge.fs.lookup(
                parent: parent, name: Array("a".utf8), caller: TestBridge.reader, request: TestBridge.request(1))
            #expect(answer.errno == ENOTDIR)
        }
    }

    /// Names match byte for byte: no name, an empty one, one with a NUL inside, one 4 KiB
    /// long or a prefix of a real name find nothing.
    @Test func unknownAndMalformedNamesAreENOENT() {
        let bridge = TestBridge([Source(Source.text("a")).file("abc")])
        let names: [[UInt8]?] = [
            nil, [], Array("ab".utf8), Array("abcd".utf8), [0x61, 0x62, 0x63, 0], [0x61, 0, 0x62, 0x63],
            [UInt8](repeating: 0x61, count: 4096), Array("ABC".utf8), Array("abc/".utf8),
        ]
        for name in names {
            let answer = bridge.fs.lookup(
                parent: VirtualDirectory.rootInode, name: name, caller: TestBridge.reader,
                request: TestBridge.request(1))
            #expect(answer.errno == ENOENT, "\(name?.count ?? -1) bytes")
        }
        #expect(bridge.lookup("abc").entry != nil)
    }

    @Test func anAbsentFileIsENOENT() {
        let bridge = TestBridge([Source(.absent).file("gone"), Source(.absent).file("gone2", caching: .versioned)])
        #expect(bridge.lookup("gone").errno == ENOENT)
        #expect(bridge.lookup("gone2").errno == ENOENT)
    }

    /// A per-open file's name is its fixed inode, never cached: every open asks again.
    @Test func aPerOpenNameIsItsFixedInodeNeverCached() throws {
        let bridge = TestBridge([Source(Source.text("x")).file("first"), Source(Source.text("hello")).file("second")])
        let entry = try #require(bridge.lookup("second").entry)
        #expect(entry.inode == 3)
        #expect(entry.attrTimeout == 0 && entry.entryTimeout == 0)
        #expect(!entry.counted)
        #expect(entry.attr.st_size == 5)
        #expect(bridge.fs.versionedInodeCount == 0)
    }

    /// A versioned name is the inode of its version, computed from (file, version), kept by
    /// the kernel for the file's cache timeout, and counted once per lookup.
    @Test func aVersionedNameIsTheInodeOfItsVersion() throws {
        let source = Source(Source.text("one", version: 7))
        let bridge = TestBridge([
            Source(Source.text("x")).file("other"), source.file("v", caching: .versioned, cacheTimeout: 30),
        ])
        let entry = try #require(bridge.lookup("v").entry)
        #expect(entry.inode == VersionTable.inode(file: 1, version: 7))
        #expect(entry.attrTimeout == 30 && entry.entryTimeout == 30)
        #expect(entry.counted)
        #expect(entry.attr.st_size == 3)
        #expect(bridge.lookup("v").entry?.inode == entry.inode)
        #expect(bridge.fs.versions.node(entry.inode)?.lookups == 2)
        #expect(bridge.fs.versionedInodeCount == 1)
    }

    /// A new version is a new inode; the old one keeps its own bytes until its last FORGET.
    @Test func aNewVersionIsANewInodeAndTheOldKeepsItsBytes() throws {
        let (bridge, _, old, new) = try TestBridge.twoVersions()
        #expect(new != old)
        #expect(bridge.fs.getattr(inode: old).attr?.st_size == 3)
        #expect(bridge.read(old).text == "one")
        #expect(bridge.fs.getattr(inode: new).attr?.st_size == 6)
        #expect(bridge.fs.forget([(old, 1)]).isNone)
        #expect(bridge.fs.getattr(inode: old).errno == ESTALE, "a version no longer held nor served")
    }

    /// A file whose lookup depends on the caller: names are not cached (each open asks),
    /// attributes are.
    @Test func aPerCallerLookupIsNeverCachedByName() throws {
        let file = VirtualFile(
            name: "p", permissions: 0o400, caching: .versioned, cacheTimeout: 50,
            peek: { Source.text("new", version: 2) },
            lookup: { caller in caller.uid == 7 ? Source.text("old", version: 1) : Source.text("new", version: 2) },
            open: { _ in Source.text("new", version: 2) })
        let bridge = TestBridge([file])
        let held = try #require(bridge.lookup("p", caller: Caller(pid: 1, uid: 7, gid: 7)).entry)
        let fresh = try #require(bridge.lookup("p").entry)
        #expect(held.inode == VersionTable.inode(file: 0, version: 1))
        #expect(fresh.inode == VersionTable.inode(file: 0, version: 2))
        #expect(held.entryTimeout == 0 && held.attrTimeout == 50)
    }

    /// The kernel keeps a version no longer than it is served, less a margin.
    @Test func servedForShortensTheTimeouts() throws {
        let figures: [(Double?, Double)] = [
            (nil, 86_400), (10, 9), (0.5, 0), (-3, 0), (.infinity, 86_400), (-.infinity, 0), (.nan, 0),
        ]
        for (seconds, timeout) in figures {
            let source = Source(Source.text("s", version: 3))
            let bridge = TestBridge([source.file("s", caching: .versioned, servedFor: { _ in seconds })])
            let entry = try #require(bridge.lookup("s").entry)
            #expect(entry.attrTimeout == timeout && entry.entryTimeout == timeout, "\(String(describing: seconds))")
            #expect(bridge.fs.getattr(inode: entry.inode).attrTimeout == timeout)
        }
    }

    /// Versioned content without a version (0) is served like a per-open file.
    @Test func versionZeroIsServedUnversioned() throws {
        let bridge = TestBridge([Source(Source.text("z")).file("z", caching: .versioned)])
        let entry = try #require(bridge.lookup("z").entry)
        #expect(entry.inode == 2 && !entry.counted && entry.entryTimeout == 0)
        #expect(bridge.fs.versionedInodeCount == 0)
    }

    /// A failing file is found (its open fails), but without OPEN the lookup refuses it.
    @Test func aFailureWaitsForTheOpenUnlessOpensBypassTheDaemon() {
        let failing = Source(.failure(EACCES))
        #expect(TestBridge([failing.file("f")]).lookup("f").entry?.inode == 2)
        var options = MountOptions()
        options.kernelCache = true
        #expect(TestBridge([failing.file("f")], options: options).lookup("f").errno == EACCES)
    }

    /// Once opens no longer reach the daemon, a versioned file's content without an inode of
    /// its own has nothing valid to serve.
    @Test func withoutOpensUnversionedContentOfAVersionedFileIsEIO() {
        var options = MountOptions()
        options.kernelCache = true
        let bridge = TestBridge(
            [Source(Source.text("z")).file("z", caching: .versioned), Source(Source.text("p")).file("p")],
            options: options)
        bridge.fs.noOpen.store(true, ordering: .relaxed)
        #expect(bridge.lookup("z").entry != nil, "opens still come: they decide")
        bridge.fs.opensEndedFlag.store(true, ordering: .relaxed)
        #expect(bridge.lookup("z").errno == EIO)
        #expect(bridge.lookup("p").entry?.inode == 3, "per-open files are not versioned: served as before")
    }

    /// A lookup reply the kernel does not take gives its count back: the node goes.
    @Test func aLookupTheKernelDoesNotTakeIsNotCounted() throws {
        let bridge = TestBridge([Source(Source.text("v", version: 4)).file("v", caching: .versioned)])
        let answer = bridge.lookup("v")
        let inode = try #require(answer.entry).inode
        bridge.recorder.accepts.store(false, ordering: .relaxed)
        bridge.fs.deliver(answer, to: TestBridge.request(9))
        #expect(bridge.fs.versions.node(inode) == nil)
        #expect(bridge.fs.versionedInodeCount == 0)
    }

    @Test func lookupsAreCounted() {
        let bridge = TestBridge([Source(Source.text("a")).file("a")])
        _ = bridge.lookup("a")
        _ = bridge.lookup("b")
        #expect(bridge.fs.requestCounts.lookup == 2)
    }
}
