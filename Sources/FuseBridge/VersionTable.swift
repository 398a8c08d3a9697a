import FoundationEssentials
import Posix
import Synchronization

/// The inodes of ``VirtualFile/Caching/versioned`` files: one per (file, version), holding
/// that version's bytes while the kernel knows the inode (until its last FORGET) and the
/// version may still be served.
///
/// Inode numbers are computed, not allocated: ``inode(file:version:)`` is the same number in
/// a listing, a lookup and a later process serving the same connection.
///
/// Bounded whatever the kernel keeps: the kernel holds unused inodes until memory pressure
/// (a FORGET may never come), so a node also goes ``grace`` after its version's time is up
/// (what ``servedFor(_:)`` said when it was created) and when its file has more than
/// ``versionsPerFile`` versions (the least recently looked-up goes). The kernel's requests
/// on an inode that went are answered as for any unknown old inode: ESTALE to an open or
/// `stat` (the kernel looks the name up again), an error to a read (docs/hitless.md).
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
    /// Versions of one file held at most: more than are ever valid at once (the current
    /// generation, the one before it until it expires, a pinned one).
    static let versionsPerFile = 8

    private struct Entry {
        var node: Node
        /// When the node was last looked up (a counter: the newest is the highest).
        var used: UInt64
        /// When its version stops being served; nil: no end known.
        var until: ContinuousClock.Instant?
    }

    private struct Table {
        var entries: [UInt64: Entry] = [:]
        var uses: UInt64 = 0

        /// Drops the nodes whose time is up, and the least recently used past the cap of
        /// `file` (never `keep`). True when any went.
        mutating func trim(file: Int, keep: UInt64?, now: ContinuousClock.Instant) -> Bool {
            let before = entries.count
            entries = entries.filter { $0.key == keep || ($0.value.until.map { now < $0 } ?? true) }
            let ofFile = entries.values.filter { $0.node.fileIndex == file }
            if ofFile.count > VersionTable.versionsPerFile {
                let oldest = ofFile.filter { $0.node.inode != keep }.sorted { $0.used < $1.used }
                for entry in oldest.prefix(ofFile.count - VersionTable.versionsPerFile) {
                    entries[entry.node.inode] = nil
                }
            }
            return entries.count != before
        }
    }

    private let table = Mutex(Table())
    private let changed = Hook<@Sendable () -> Void>()
    private let served = Hook<@Sendable (_ fileIndex: Int, _ version: UInt64) -> Double?>()

    /// Called when a node is created or freed (a successor's state changed).
    func onChange(_ hook: (@Sendable () -> Void)?) { changed.set(hook) }
    private func notify() { changed.function?() }

    /// Tells the table how many more seconds a version of a file is served (nil: no end;
    /// 0: not now), asked once when its node is created (``VirtualFile/servedFor``).
    func servedFor(_ hook: (@Sendable (_ fileIndex: Int, _ version: UInt64) -> Double?)?) { served.set(hook) }

    /// The inode of `version` of file `fileIndex`; nil for version 0 or out of range.
    static func inode(file fileIndex: Int, version: UInt64) -> UInt64? {
        guard version > 0, version <= maxVersion, fileIndex >= 0, fileIndex < maxFiles else { return nil }
        return firstInode + (version << fileBits | UInt64(fileIndex))
    }

    /// The node for this version of the file, created if new, with one more lookup counted
    /// (the caller is about to hand it to the kernel in a lookup reply).
    func lookUp(fileIndex: Int, version: UInt64, bytes: [UInt8], mtime: Date) -> Node? {
        guard let inode = Self.inode(file: fileIndex, version: version) else { return nil }
        let now = ContinuousClock.now
        // Asked outside the lock, and only for a node that is not there (or whose time was
        // up: the file gives this version out again, so it is served for what it says now).
        let known = table.withLock { $0.entries[inode].map { $0.until.map { now < $0 } ?? true } ?? false }
        let until = known ? nil : deadline(served.function?(fileIndex, version), now: now)
        let (node, changed) = table.withLock { table -> (Node, Bool) in
            table.uses &+= 1
            if var entry = table.entries[inode] {
                entry.node.lookups &+= 1
                entry.used = table.uses
                if !known { entry.until = until }
                table.entries[inode] = entry
                return (entry.node, false)
            }
            let node = Node(
                inode: inode, fileIndex: fileIndex, version: version, bytes: bytes, mtime: mtime, lookups: 1)
            table.entries[inode] = Entry(node: node, used: table.uses, until: until)
            _ = table.trim(file: fileIndex, keep: inode, now: now)
            return (node, true)
        }
        if changed { notify() }
        return node
    }

    /// How long a node outlives its version's end: a reader that looked the name up just
    /// before it (a pinned group reading several fields) still gets its `stat` and reads
    /// answered, as they were before nodes had an end (the kernel asks for the attributes
    /// at each read of an inode whose attributes it may not cache).
    let grace: Duration

    init(grace: Duration = .seconds(30)) {
        self.grace = grace
    }

    /// When a node of a version served for `seconds` more goes (``grace`` after the
    /// version's end): nil for no end, or none known (0 is a version not served to new
    /// readers now, such as a pinned one).
    func deadline(_ seconds: Double?, now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard let seconds, seconds.isFinite, seconds > 0 else { return nil }
        return now.advanced(by: .milliseconds(Int64(min(seconds, 366 * 86_400) * 1000))).advanced(by: grace)
    }

    func node(_ inode: UInt64) -> Node? {
        let now = ContinuousClock.now
        return table.withLock { table in
            guard let entry = table.entries[inode], entry.until.map({ now < $0 }) ?? true else { return nil }
            return entry.node
        }
    }

    /// The kernel dropped `count` references; a node it no longer knows is freed.
    func forget(_ inode: UInt64, count: UInt64) {
        let freed = table.withLock { table -> Bool in
            guard var entry = table.entries[inode] else { return false }
            entry.node.lookups = entry.node.lookups > count ? entry.node.lookups - count : 0
            table.entries[inode] = entry.node.lookups == 0 ? nil : entry
            return entry.node.lookups == 0
        }
        if freed { notify() }
    }

    /// How many versioned inodes are held now.
    var count: Int { table.withLock { $0.entries.count } }

    /// Every node still served (for handing the table to a successor process).
    var all: [Node] {
        let now = ContinuousClock.now
        return table.withLock { $0.entries.values.filter { $0.until.map { now < $0 } ?? true }.map(\.node) }
    }
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
    /// Within ``versionsPerFile``: the newest versions of each file. A carried node ends as
    /// a new one would (its version's end and ``grace``); one of a version not served now
    /// ends after ``grace`` (the predecessor's view of the kernel may be a push behind: a
    /// node the kernel already forgot would otherwise stay).
    func restore(_ state: BridgeState.Versions) {
        let now = ContinuousClock.now
        let served = served.function
        let ends = state.nodes.map { node in
            deadline(served?(node.fileIndex, node.version), now: now)
                ?? (served?(node.fileIndex, node.version) == 0 ? now.advanced(by: grace) : nil)
        }
        table.withLock { table in
            for (node, until) in zip(state.nodes, ends).sorted(by: { $0.0.version < $1.0.version }) {
                guard Self.inode(file: node.fileIndex, version: node.version) == node.inode else { continue }
                table.uses &+= 1
                let restored = Node(
                    inode: node.inode, fileIndex: node.fileIndex, version: node.version, bytes: Array(node.bytes),
                    mtime: Date(timeIntervalSince1970: node.mtime), lookups: node.lookups)
                table.entries[node.inode] = Entry(node: restored, used: table.uses, until: until)
                _ = table.trim(file: node.fileIndex, keep: node.inode, now: now)
            }
        }
    }
}
