import FoundationEssentials
import Posix
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
    private let changed = Hook<@Sendable () -> Void>()

    /// Called when a node is created or freed (a successor's state changed).
    func onChange(_ hook: (@Sendable () -> Void)?) { changed.set(hook) }
    private func notify() { changed.function?() }

    /// The inode of `version` of file `fileIndex`; nil for version 0 or out of range.
    static func inode(file fileIndex: Int, version: UInt64) -> UInt64? {
        guard version > 0, version <= maxVersion, fileIndex >= 0, fileIndex < maxFiles else { return nil }
        return firstInode + (version << fileBits | UInt64(fileIndex))
    }

    /// The node for this version of the file, created if new, with one more lookup counted
    /// (the caller is about to hand it to the kernel in a lookup reply).
    func lookUp(fileIndex: Int, version: UInt64, bytes: [UInt8], mtime: Date) -> Node? {
        guard let inode = Self.inode(file: fileIndex, version: version) else { return nil }
        let (node, created) = nodes.withLock { nodes -> (Node, Bool) in
            let created = nodes[inode] == nil
            var node =
                nodes[inode]
                ?? Node(inode: inode, fileIndex: fileIndex, version: version, bytes: bytes, mtime: mtime, lookups: 0)
            node.lookups += 1
            nodes[inode] = node
            return (node, created)
        }
        if created { notify() }
        return node
    }

    func node(_ inode: UInt64) -> Node? {
        nodes.withLock { $0[inode] }
    }

    /// The kernel dropped `count` references; a node it no longer knows is freed.
    func forget(_ inode: UInt64, count: UInt64) {
        let freed = nodes.withLock { nodes -> Bool in
            guard var node = nodes[inode] else { return false }
            node.lookups = node.lookups > count ? node.lookups - count : 0
            nodes[inode] = node.lookups == 0 ? nil : node
            return node.lookups == 0
        }
        if freed { notify() }
    }

    /// How many versioned inodes the kernel holds now.
    var count: Int { nodes.withLock { $0.count } }

    /// Every node (for handing the table to a successor process).
    var all: [Node] { nodes.withLock { Array($0.values) } }
}

extension VersionTable {
    /// Every node, for a successor (see Takeover.swift).
    func export() -> BridgeState.Versions {
        BridgeState.Versions(
            nextInode: 0,
            nodes: all.sorted { $0.inode < $1.inode }.map {
                BridgeState.Node(
                    inode: $0.inode, fileIndex: $0.fileIndex, version: $0.version, bytes: Data($0.bytes),
                    mtime: $0.mtime.timeIntervalSince1970, lookups: $0.lookups)
            })
    }

    /// Takes over a predecessor's nodes. Inode numbers are computed from (file, version), so
    /// a carried node is kept only where its number is the one this process computes for it:
    /// an inode number never stands for other bytes.
    func restore(_ state: BridgeState.Versions) {
        nodes.withLock { nodes in
            for node in state.nodes {
                guard Self.inode(file: node.fileIndex, version: node.version) == node.inode else { continue }
                nodes[node.inode] = Node(
                    inode: node.inode, fileIndex: node.fileIndex, version: node.version, bytes: Array(node.bytes),
                    mtime: Date(timeIntervalSince1970: node.mtime), lookups: node.lookups)
            }
        }
    }
}
