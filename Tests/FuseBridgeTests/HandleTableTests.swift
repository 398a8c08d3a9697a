import Foundation
import Testing

@testable import FuseBridge

/// Open handles: keys, epochs across a takeover, snapshot shares, carried nodes.
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
