import CFuse3
import Foundation
import Synchronization
import Testing

@testable import FuseBridge

/// The bridge on its own, without credentials: handles, versioned inodes, listings.
@Suite struct HandleTableTests {
    @Test func handlesFindTheirBytesUntilRemoved() {
        let table = HandleTable()
        let a = table.add(.file(inode: 7, bytes: [1], uid: 0))
        let b = table.add(.file(inode: 7, bytes: [2], uid: 0))
        #expect(a != 0 && b != 0 && a != b)
        #expect(table.bytes(a, inode: 7) == [1] && table.bytes(b, inode: 7) == [2])
        #expect(table.bytes(a, inode: 8) == nil, "a handle answers only for the inode it was opened on")
        table.remove(a)
        #expect(table.bytes(a, inode: 7) == nil)
        #expect(table.count == 1)
    }

    @Test func forgedHandlesFindNothing() {
        let table = HandleTable()
        let real = table.add(.file(inode: 3, bytes: [5], uid: 0))
        let forged: [UInt64] = [0, 1, 0xFFFF_FFFF, UInt64.max, 1 << 32, real + 1, real ^ (1 << 40)]
        for handle in forged where handle != real {
            #expect(table.bytes(handle, inode: 3) == nil)
            #expect(table.directory(handle) == nil)
            table.remove(handle)
        }
        #expect(table.bytes(real, inode: 3) == [5])
    }

    /// Handles are not carried, only their epochs: a successor's handles never equal ones
    /// the kernel holds from its predecessor, and a predecessor's handle finds no snapshot
    /// (it reads its inode's bytes instead).
    @Test func aSuccessorsHandlesNeverCollideWithCarriedOnes() {
        let first = HandleTable()
        let carried = (0..<50).map { first.add(.file(inode: 9, bytes: [UInt8($0)], uid: 0)) }
        let exported = first.export()
        #expect(exported.files.isEmpty, "handles are not carried")
        let next = HandleTable()
        next.restore(exported)
        for handle in carried { #expect(next.bytes(handle, inode: 9) == nil) }
        let made = (0..<50).map { _ in next.add(.file(inode: 9, bytes: [0xFF], uid: 0)) }
        #expect(Set(made).isDisjoint(with: carried))
        #expect(Set(made.map { $0 >> 32 }).isDisjoint(with: Set(carried.map { $0 >> 32 })))
    }

    /// Epochs pile up one per takeover; the newest ``HandleTable/carriedEpochsAtMost`` go on.
    @Test func carriedEpochsAreBounded() {
        var exported = HandleTable().export()
        for _ in 0..<500 {
            let next = HandleTable()
            next.restore(exported)
            exported = next.export()
        }
        #expect(exported.epochs.count == HandleTable.carriedEpochsAtMost)
        #expect(Set(exported.epochs).count == exported.epochs.count)
    }

    /// One user's snapshots are bounded: past its share, a handle holds none (it reads the
    /// current bytes), other users still get theirs, and a release gives the share back.
    @Test func snapshotsAreBoundedPerUser() {
        let table = HandleTable()
        let share = HandleTable.snapshotsPerUser
        let flood = (0..<(share + 100)).map { _ in table.add(.file(inode: 4, bytes: [1, 2, 3], uid: 65534)) }
        #expect(table.count == share + 100)
        #expect(table.snapshotCount == share)
        #expect(flood.prefix(share).allSatisfy { table.bytes($0, inode: 4) == [1, 2, 3] })
        #expect(flood.suffix(100).allSatisfy { table.bytes($0, inode: 4) == nil })
        let other = table.add(.file(inode: 4, bytes: [9], uid: 1000))
        #expect(table.bytes(other, inode: 4) == [9], "another user's share is its own")
        table.remove(flood[0])
        let again = table.add(.file(inode: 4, bytes: [7], uid: 65534))
        #expect(table.bytes(again, inode: 4) == [7], "a release frees one place")
        flood.forEach(table.remove)
        table.remove(other)
        table.remove(again)
        #expect(table.count == 0 && table.snapshotCount == 0)
    }

    /// The carried nodes stay within their byte budget, each file's newest versions first.
    @Test func carriedNodesKeepTheNewestWithinTheBudget() {
        let nodes = (1...40).flatMap { version in
            (0..<3).map { file in
                BridgeState.Node(
                    inode: VersionTable.inode(file: file, version: UInt64(version))!, fileIndex: file,
                    version: UInt64(version), bytes: Data(repeating: 1, count: 1000), mtime: 0, lookups: 1)
            }
        }
        let chosen = BridgeState.newestFirst(nodes, budget: 10_500)
        #expect(chosen.count == 10)
        #expect(chosen.reduce(0) { $0 + $1.bytes.count } <= 10_500)
        // Versions 40, 39, 38 of every file, and 37 of the first.
        #expect(Set(chosen.map(\.version)) == [40, 39, 38, 37])
        #expect(chosen.filter { $0.version == 40 }.count == 3)
        #expect(chosen == chosen.sorted { $0.inode < $1.inode })
        #expect(BridgeState.newestFirst(nodes, budget: 1 << 20).count == nodes.count)
    }
}

@Suite struct VersionTableTests {
    @Test func inodeNumbersAreComputedAndDistinct() {
        var seen = Set<UInt64>()
        for version in [UInt64(1), 2, 3, 1000, VersionTable.maxVersion] {
            for file in 0..<VersionTable.maxFiles {
                let inode = VersionTable.inode(file: file, version: version)
                #expect(inode != nil && inode! >= VersionTable.firstInode)
                #expect(seen.insert(inode!).inserted)
            }
        }
        #expect(VersionTable.inode(file: 0, version: 0) == nil)
        #expect(VersionTable.inode(file: 0, version: VersionTable.maxVersion + 1) == nil)
        #expect(VersionTable.inode(file: VersionTable.maxFiles, version: 1) == nil)
        #expect(VersionTable.inode(file: -1, version: 1) == nil)
    }

    @Test func nodesLiveUntilTheirLastForget() {
        let table = VersionTable()
        let now = Date()
        let first = table.lookUp(fileIndex: 2, version: 7, bytes: [1, 2], mtime: now)
        let again = table.lookUp(fileIndex: 2, version: 7, bytes: [9], mtime: now)
        #expect(first?.inode == again?.inode)
        #expect(again?.bytes == [1, 2], "one version keeps the bytes it was created with")
        #expect(table.count == 1)
        let inode = first!.inode
        table.forget(inode, count: 1)
        #expect(table.node(inode) != nil)
        table.forget(inode, count: 1)
        #expect(table.node(inode) == nil)
        #expect(table.count == 0)
        // More forgets than lookups, or of unknown inodes, change nothing.
        table.forget(inode, count: 5)
        table.forget(12345, count: 1)
        #expect(table.count == 0)
    }

    /// The kernel may never FORGET (it keeps unused inodes until memory pressure): a file
    /// keeps at most `versionsPerFile` versions, the least recently looked-up one goes.
    @Test func aFileKeepsABoundedNumberOfVersions() {
        let table = VersionTable()
        let cap = VersionTable.versionsPerFile
        let now = Date()
        for version in 1...UInt64(cap) {
            _ = table.lookUp(fileIndex: 1, version: version, bytes: [UInt8(version)], mtime: now)
        }
        _ = table.lookUp(fileIndex: 0, version: 1, bytes: [0], mtime: now)
        // Version 1 is looked up again (a pinned reader): version 2 is now the least recent.
        _ = table.lookUp(fileIndex: 1, version: 1, bytes: [1], mtime: now)
        for version in UInt64(cap + 1)...UInt64(cap + 500) {
            _ = table.lookUp(fileIndex: 1, version: version, bytes: [UInt8(truncatingIfNeeded: version)], mtime: now)
            #expect(table.count <= cap + 1)
        }
        #expect(table.count == cap + 1, "another file's node is not counted against this one")
        #expect(table.node(VersionTable.inode(file: 0, version: 1)!) != nil)
        #expect(
            table.node(VersionTable.inode(file: 1, version: UInt64(cap + 500))!)?.bytes == [
                UInt8(truncatingIfNeeded: cap + 500)
            ])
        #expect(table.node(VersionTable.inode(file: 1, version: 2)!) == nil)
        #expect(table.all.allSatisfy { $0.fileIndex == 0 || $0.version > 500 })
    }

    /// A version's node goes (`grace` after) the file stops serving it (its credentials
    /// expired), FORGET or not; a version not served to new readers (0: a pinned one) has
    /// no end.
    @Test func aNodeGoesWhenItsVersionIsNoLongerServed() {
        #expect(VersionTable().grace == .seconds(30))
        let table = VersionTable(grace: .milliseconds(50))
        // Version 1 ends in 0.05 s; version 2 is not served now; 3 never ends.
        table.servedFor { _, version in version == 1 ? 0.05 : (version == 2 ? 0 : nil) }
        let now = Date()
        let expiring = table.lookUp(fileIndex: 0, version: 1, bytes: [1], mtime: now)!.inode
        let pinned = table.lookUp(fileIndex: 0, version: 2, bytes: [2], mtime: now)!.inode
        let forever = table.lookUp(fileIndex: 0, version: 3, bytes: [3], mtime: now)!.inode
        #expect(table.node(expiring)?.bytes == [1])
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while table.node(expiring) != nil, ContinuousClock.now < deadline { usleep(5_000) }
        #expect(table.node(expiring) == nil, "bytes of a version no longer served are not served")
        #expect(table.node(pinned) != nil && table.node(forever) != nil)
        // The next node made sweeps it out of the table.
        _ = table.lookUp(fileIndex: 1, version: 3, bytes: [3], mtime: now)
        #expect(table.count == 3)
        #expect(!table.all.contains { $0.inode == expiring })
    }

    /// A successor takes over at most `versionsPerFile` versions of a file, the newest.
    @Test func restoreKeepsTheNewestVersionsOfEachFile() {
        let nodes = (1...40).map { version in
            BridgeState.Node(
                inode: VersionTable.inode(file: 2, version: UInt64(version))!, fileIndex: 2,
                version: UInt64(version), bytes: Data([UInt8(version)]), mtime: 0, lookups: 1)
        }
        let table = VersionTable()
        table.restore(BridgeState.Versions(nextInode: 0, nodes: nodes.shuffled()))
        #expect(table.count == VersionTable.versionsPerFile)
        #expect(Set(table.all.map(\.version)) == Set((41 - UInt64(VersionTable.versionsPerFile))...40))
        // Carried nodes of versions not served now end after the grace; the current one stays.
        let successor = VersionTable(grace: .milliseconds(50))
        successor.servedFor { _, version in version == 40 ? nil : 0 }
        successor.restore(BridgeState.Versions(nextInode: 0, nodes: Array(nodes.suffix(3))))
        #expect(successor.count == 3)
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        while successor.all.count > 1, ContinuousClock.now < deadline { usleep(5_000) }
        #expect(successor.all.map(\.version) == [40])
    }
}

/// The session io's wait, with pipes standing in for `/dev/fuse`.
@Suite struct SessionIOTests {
    /// A request-sized message (longer than a FUSE header), written into `fd`.
    static func send(_ fd: Int32) {
        let message = [UInt8](repeating: 7, count: 64)
        _ = message.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// Runs `body` on one thread of its own; nil if it has not returned within `timeout`.
    static func onOneThread<T: Sendable>(timeout: TimeInterval = 5, _ body: @escaping @Sendable () -> T) -> T? {
        let result = Mutex<T?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let value = body()
            result.withLock { $0 = value }
            done.signal()
        }
        guard done.wait(timeout: .now() + timeout) == .success else { return nil }
        return result.withLock { $0 }
    }

    @Test func oneThreadWaitsForOneSessionThenAnotherOnTheSameDescriptorNumbers() throws {
        let counts = Self.onOneThread { () -> [Int] in
            var counts: [Int] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<3 {
                var pipe: [Int32] = [-1, -1]
                guard Glibc.pipe(&pipe) == 0, let io = try? SessionIO(fd: pipe[0], replay: nil) else { return [] }
                Self.send(pipe[1])
                counts.append(buffer.withUnsafeMutableBytes { io.read(into: $0.baseAddress!, capacity: $0.count) })
                // The numbers go back to the process: the next session is likely given the
                // same ones, and this thread's wait must not still watch the closed files.
                close(pipe[0])
                close(pipe[1])
            }
            return counts
        }
        #expect(counts == [64, 64, 64], "a read on a later session did not return (waited on closed files?)")
    }

    @Test func stopWakesEveryWaitingReader() throws {
        var pipe: [Int32] = [-1, -1]
        #expect(Glibc.pipe(&pipe) == 0)
        defer {
            close(pipe[0])
            close(pipe[1])
        }
        let io = try SessionIO(fd: pipe[0], replay: nil)
        let ended = Mutex(0)
        let threads = Mutex<[pid_t]>([])
        let readers = 4
        for _ in 0..<readers {
            Thread.detachNewThread {
                threads.withLock { $0.append(credfs_gettid()) }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = buffer.withUnsafeMutableBytes { io.read(into: $0.baseAddress!, capacity: $0.count) }
                if n == -1, errno == ENODEV { ended.withLock { $0 += 1 } }
            }
        }
        // Until every reader sleeps in epoll_wait (x86_64 syscall 232): then the stop must
        // wake them, not find them before their wait.
        func waiting() -> Int {
            threads.withLock { $0 }.filter { tid in
                let text = (try? String(contentsOfFile: "/proc/self/task/\(tid)/syscall", encoding: .utf8)) ?? ""
                return text.hasPrefix("232 ")
            }.count
        }
        var deadline = Date().addingTimeInterval(5)
        while waiting() < readers, Date() < deadline { usleep(5_000) }
        #expect(waiting() == readers, "the readers never waited")
        io.stop()
        deadline = Date().addingTimeInterval(5)
        while ended.withLock({ $0 }) < readers, Date() < deadline { usleep(10_000) }
        #expect(ended.withLock { $0 } == readers, "a stop must wake every reader")
    }
}

/// A real mount of a small tree served by this test process.
@Suite(
    .serialized,
    .enabled(if: geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0, "needs root and /dev/fuse to mount"))
struct BridgeMountTests {
    final class Versioned: Sendable {
        let state = Mutex<(version: UInt64, bytes: [UInt8])>((1, Array("one".utf8)))
        func set(_ version: UInt64, _ text: String) { state.withLock { $0 = (version, Array(text.utf8)) } }
        var content: VirtualFile.Content {
            state.withLock { .bytes($0.bytes, mtime: Date(timeIntervalSince1970: 1_700_000_000), version: $0.version) }
        }
    }

    func mount(_ files: [VirtualFile]) throws -> (FuseFileSystem, String) {
        signal(SIGPIPE, SIG_IGN)
        var template = Array("/tmp/credfs-bridge-XXXXXX".utf8CString)
        let dir = String(cString: mkdtemp(&template)!)
        let fs = FuseFileSystem(tree: VirtualDirectory(files: files, mtime: Date()), mountpoint: dir)
        try fs.mount()
        fs.start()
        return (fs, dir)
    }

    func unmount(_ fs: FuseFileSystem, _ dir: String) async {
        fs.stop(grace: .milliseconds(100))
        await fs.waitUntilStopped()
        rmdir(dir)
    }

    func read(_ path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// Drops unused dentries and inodes machine-wide, so the kernel sends its FORGETs.
    func dropKernelCaches() {
        let fd = open("/proc/sys/vm/drop_caches", O_WRONLY)
        guard fd >= 0 else { return }
        _ = write(fd, "2", 1)
        close(fd)
    }

    @Test func versionedInodesAreForgottenOnceTheKernelDropsThem() async throws {
        let file = Versioned()
        let (fs, dir) = try mount([
            VirtualFile(
                name: "data", permissions: 0o444, caching: .versioned, peek: { file.content },
                open: { _ in file.content })
        ])
        for version in 1...5 {
            file.set(UInt64(version), "version \(version)")
            fs.invalidate(["data"])
            #expect(read(dir + "/data") == "version \(version)")
        }
        // Each version was looked up once; invalidated names let the old ones go.
        dropKernelCaches()
        let deadline = Date().addingTimeInterval(10)
        while fs.versionedInodeCount > 0, Date() < deadline { usleep(20_000) }
        #expect(fs.versionedInodeCount == 0, "inodes the kernel forgot are still held")
        #expect(fs.openHandleCount == 0)
        await unmount(fs, dir)
    }

    @Test func readdirFromAnyOffsetListsTheRest() async throws {
        let files = (0..<5).map { i in
            VirtualFile(
                name: "f\(i)", permissions: 0o444, peek: { .bytes([UInt8(i)], mtime: Date()) },
                open: { _ in .bytes([UInt8(i)], mtime: Date()) })
        }
        let (fs, dir) = try mount(files)
        guard let stream = opendir(dir) else {
            Issue.record("opendir failed: errno \(errno)")
            await unmount(fs, dir)
            return
        }
        func names(from offset: Int) -> [String] {
            seekdir(stream, offset)
            var out: [String] = []
            while let entry = readdir(stream) {
                out.append(
                    withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                )
            }
            return out
        }
        #expect(names(from: 0) == [".", "..", "f0", "f1", "f2", "f3", "f4"])
        #expect(names(from: 4) == ["f2", "f3", "f4"])
        #expect(names(from: 7) == [])
        #expect(names(from: 1000) == [])
        closedir(stream)
        // RELEASEDIR is asynchronous.
        let deadline = Date().addingTimeInterval(5)
        while fs.openHandleCount > 0, Date() < deadline { usleep(10_000) }
        #expect(fs.openHandleCount == 0)
        await unmount(fs, dir)
    }
}
