import Foundation
import Testing

@testable import FuseBridge

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
