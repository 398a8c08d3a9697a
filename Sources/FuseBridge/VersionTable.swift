import FoundationEssentials
import Synchronization

/// The inodes of ``VirtualFile/Caching/versioned`` files: one per (file, version), holding
/// that version's bytes for as long as the kernel knows the inode (until its last FORGET).
final class VersionTable: Sendable {
    /// `lookups` changes only under the table's lock; everything else is immutable.
    final class Node: @unchecked Sendable {
        let inode: UInt64
        let fileIndex: Int
        let version: UInt64
        let bytes: [UInt8]
        let mtime: Date
        var lookups: UInt64 = 0

        init(inode: UInt64, fileIndex: Int, version: UInt64, bytes: [UInt8], mtime: Date) {
            self.inode = inode
            self.fileIndex = fileIndex
            self.version = version
            self.bytes = bytes
            self.mtime = mtime
        }
    }

    private struct Key: Hashable {
        let fileIndex: Int
        let version: UInt64
    }

    private struct State {
        var byInode: [UInt64: Node] = [:]
        var byKey: [Key: UInt64] = [:]
        var nextInode = VirtualDirectory.firstVersionedInode
    }
    private let state = Mutex(State())

    /// The node for this version of the file, created if new, with one more lookup counted
    /// (the caller is about to hand it to the kernel in a lookup reply).
    func lookUp(fileIndex: Int, version: UInt64, bytes: [UInt8], mtime: Date) -> Node {
        state.withLock { s in
            let key = Key(fileIndex: fileIndex, version: version)
            let node: Node
            if let inode = s.byKey[key], let existing = s.byInode[inode] {
                node = existing
            } else {
                node = Node(
                    inode: s.nextInode, fileIndex: fileIndex, version: version, bytes: bytes, mtime: mtime)
                s.nextInode += 1
                s.byInode[node.inode] = node
                s.byKey[key] = node.inode
            }
            node.lookups += 1
            return node
        }
    }

    func node(_ inode: UInt64) -> Node? {
        state.withLock { $0.byInode[inode] }
    }

    /// The kernel dropped `count` references; a node it no longer knows is freed.
    func forget(_ inode: UInt64, count: UInt64) {
        state.withLock { s in
            guard let node = s.byInode[inode] else { return }
            node.lookups = node.lookups > count ? node.lookups - count : 0
            if node.lookups == 0 {
                s.byInode[inode] = nil
                s.byKey[Key(fileIndex: node.fileIndex, version: node.version)] = nil
            }
        }
    }

    /// How many versioned inodes the kernel holds now.
    var count: Int { state.withLock { $0.byInode.count } }
}
