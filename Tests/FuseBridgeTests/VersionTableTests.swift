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
}
