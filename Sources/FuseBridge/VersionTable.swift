import Foundation

/// The inodes of ``VirtualFile/Caching/versioned`` files: one per (file, version), holding
/// that version's bytes for as long as the kernel knows the inode (until its last FORGET).
final class VersionTable: @unchecked Sendable {
    final class Node {
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

    struct Key: Hashable {
        let fileIndex: Int
        let version: UInt64
    }

    let lock = NSLock()
    var byInode: [UInt64: Node] = [:]
    var byKey: [Key: UInt64] = [:]
    /// A fresh table starts at a random place (below 2^32, for 32-bit `stat` callers): a
    /// server that could not take over its predecessor's table never reuses an inode
    /// number the kernel still holds for other bytes. See ``restore(_:)``.
    var nextInode = VirtualDirectory.firstVersionedInode + UInt64.random(in: 0..<(1 << 30))
    /// Called when a node is created or freed (set before serving).
    nonisolated(unsafe) var onChange: (@Sendable () -> Void)?

    /// The node for this version of the file, created if new, with one more lookup counted
    /// (the caller is about to hand it to the kernel in a lookup reply).
    func lookUp(fileIndex: Int, version: UInt64, bytes: [UInt8], mtime: Date) -> Node {
        lock.withLock {
            let key = Key(fileIndex: fileIndex, version: version)
            let node: Node
            if let inode = byKey[key], let existing = byInode[inode] {
                node = existing
            } else {
                while byInode[nextInode] != nil { nextInode += 1 }
                node = Node(
                    inode: nextInode, fileIndex: fileIndex, version: version, bytes: bytes, mtime: mtime)
                nextInode += 1
                byInode[node.inode] = node
                byKey[key] = node.inode
                onChange?()
            }
            node.lookups += 1
            return node
        }
    }

    func node(_ inode: UInt64) -> Node? {
        lock.withLock { byInode[inode] }
    }

    /// The kernel dropped `count` references; a node it no longer knows is freed.
    func forget(_ inode: UInt64, count: UInt64) {
        lock.withLock {
            guard let node = byInode[inode] else { return }
            node.lookups = node.lookups > count ? node.lookups - count : 0
            if node.lookups == 0 {
                byInode[inode] = nil
                byKey[Key(fileIndex: node.fileIndex, version: node.version)] = nil
                onChange?()
            }
        }
    }

    /// How many versioned inodes the kernel holds now.
    var count: Int { lock.withLock { byInode.count } }
}

extension VersionTable {
    func export() -> BridgeState.Versions {
        lock.withLock {
            BridgeState.Versions(
                nextInode: nextInode,
                nodes: byInode.values.sorted { $0.inode < $1.inode }.map {
                    BridgeState.Node(
                        inode: $0.inode, fileIndex: $0.fileIndex, version: $0.version, bytes: Data($0.bytes),
                        mtime: $0.mtime.timeIntervalSince1970, lookups: $0.lookups)
                })
        }
    }

    /// Takes over a predecessor's nodes. New inodes are numbered past a gap, so that none
    /// collides with an inode it created after its last exported state.
    func restore(_ state: BridgeState.Versions) {
        lock.withLock {
            for node in state.nodes where node.inode >= VirtualDirectory.firstVersionedInode {
                let restored = Node(
                    inode: node.inode, fileIndex: node.fileIndex, version: node.version, bytes: Array(node.bytes),
                    mtime: Date(timeIntervalSince1970: node.mtime))
                restored.lookups = node.lookups
                byInode[node.inode] = restored
                byKey[Key(fileIndex: node.fileIndex, version: node.version)] = node.inode
            }
            let (gapped, overflow) = state.nextInode.addingReportingOverflow(1 << 16)
            if !overflow, gapped < (1 << 32) - (1 << 16) {
                nextInode = max(nextInode, gapped)
            } else {
                nextInode = VirtualDirectory.firstVersionedInode + UInt64.random(in: 0..<(1 << 30))
            }
        }
    }
}
