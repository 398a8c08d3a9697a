import FoundationEssentials
import Synchronization

/// The inodes of ``VirtualFile/Caching/versioned`` files: one per (file, version), holding
/// that version's bytes for as long as the kernel knows the inode (until its last FORGET).
///
/// Inode numbers are computed, not allocated: ``inode(file:version:)`` is the same number in
/// a listing, a lookup and a later process serving the same connection.
final class VersionTable: Sendable {
    struct Node: Sendable {
        let inode: UInt64
        let fileIndex: Int
        let version: UInt64
        let bytes: [UInt8]
        let mtime: Date
        var lookups: UInt64
    }

    /// Versioned inodes start here; below are the root (1) and the unversioned inodes.
    static let firstInode: UInt64 = 1 << 20
    /// Files per version: the low bits of a versioned inode name the file.
    static let fileBits: UInt64 = 5
    static let maxFiles = 1 << 5
    /// Versions past this have no inode of their own (served unversioned): never in practice.
    static let maxVersion: UInt64 = (UInt64.max - firstInode) >> fileBits

    private let nodes = Mutex<[UInt64: Node]>([:])

    /// The inode of `version` of file `fileIndex`; nil for version 0 or out of range.
    static func inode(file fileIndex: Int, version: UInt64) -> UInt64? {
        guard version > 0, version <= maxVersion, fileIndex >= 0, fileIndex < maxFiles else { return nil }
        return firstInode + (version << fileBits | UInt64(fileIndex))
    }

    /// The node for this version of the file, created if new, with one more lookup counted
    /// (the caller is about to hand it to the kernel in a lookup reply).
    func lookUp(fileIndex: Int, version: UInt64, bytes: [UInt8], mtime: Date) -> Node? {
        guard let inode = Self.inode(file: fileIndex, version: version) else { return nil }
        return nodes.withLock { nodes in
            var node =
                nodes[inode]
                ?? Node(inode: inode, fileIndex: fileIndex, version: version, bytes: bytes, mtime: mtime, lookups: 0)
            node.lookups += 1
            nodes[inode] = node
            return node
        }
    }

    func node(_ inode: UInt64) -> Node? {
        nodes.withLock { $0[inode] }
    }

    /// The kernel dropped `count` references; a node it no longer knows is freed.
    func forget(_ inode: UInt64, count: UInt64) {
        nodes.withLock { nodes in
            guard var node = nodes[inode] else { return }
            node.lookups = node.lookups > count ? node.lookups - count : 0
            nodes[inode] = node.lookups == 0 ? nil : node
        }
    }

    /// How many versioned inodes the kernel holds now.
    var count: Int { nodes.withLock { $0.count } }

    /// Every node (for handing the table to a successor process).
    var all: [Node] { nodes.withLock { Array($0.values) } }
}
