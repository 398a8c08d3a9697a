import FoundationEssentials
import Glibc
import Synchronization

/// Open handles: what `fi->fh` stands for. A handle is a key into this table, never a
/// pointer, so a value the kernel hands back that this process does not know (one a
/// previous server created, after a takeover) is looked up and missed, never dereferenced.
///
/// A key is `epoch << 32 | serial`: each process picks an epoch no carried handle uses, so
/// a handle it creates never equals one the kernel still holds from an earlier server.
///
/// Bounded whatever users do: a handle costs a table entry; the snapshot it reads from is
/// kept for at most ``snapshotsPerUser`` handles of one user (and ``snapshots`` in all).
/// Past that a handle reads the file's current bytes, as a handle of an earlier server
/// does. Handles are not carried to a successor, only their epochs (docs/hitless.md).
final class HandleTable: Sendable {
    enum Entry: Sendable {
        /// A file's snapshot for one open (nil: past the opener's share, read the current
        /// bytes), with the inode it was opened on and who opened it.
        case file(inode: UInt64, bytes: [UInt8]?, uid: UInt32)
        /// A listing for one opendir.
        case directory([DirectoryEntry])
    }

    /// Snapshots one user holds at most, and all users together.
    static let snapshotsPerUser = 256
    static let snapshots = 4096
    /// Epochs carried to a successor at most (the newest): an older epoch's handle could
    /// only meet a new one by a 2^-32 chance, as for an epoch the table never learnt.
    static let carriedEpochsAtMost = 64

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var epoch: UInt32
        /// Epochs of earlier servers, oldest first (not reused).
        var carriedEpochs: [UInt32] = []
        var serial: UInt32 = 0
        /// Snapshots held, by user and in all.
        var snapshotsByUser: [UInt32: Int] = [:]
        var snapshots = 0

        mutating func count(_ entry: Entry?, _ delta: Int) {
            guard case .file(_, let bytes, let uid) = entry, bytes != nil else { return }
            snapshots += delta
            let held = snapshotsByUser[uid, default: 0] + delta
            snapshotsByUser[uid] = held > 0 ? held : nil
        }
    }
    private let state = Mutex(State(epoch: UInt32.random(in: 1...UInt32.max)))

    /// A new handle for `entry` (never 0). A file snapshot past its opener's share is
    /// dropped: the handle then reads the current bytes.
    func add(_ entry: Entry) -> UInt64 {
        state.withLock { state -> UInt64 in
            var entry = entry
            if case .file(let inode, .some, let uid) = entry,
                state.snapshotsByUser[uid, default: 0] >= Self.snapshotsPerUser || state.snapshots >= Self.snapshots
            {
                entry = .file(inode: inode, bytes: nil, uid: uid)
            }
            while true {
                state.serial &+= 1
                if state.serial == 0 { state.serial = 1 }
                let fh = UInt64(state.epoch) << 32 | UInt64(state.serial)
                if state.entries[fh] == nil {
                    state.entries[fh] = entry
                    state.count(entry, 1)
                    return fh
                }
            }
        }
    }

    func remove(_ fh: UInt64) {
        state.withLock { state in
            let removed = state.entries.removeValue(forKey: fh)
            state.count(removed, -1)
        }
    }

    /// The snapshot of a file handle, if `fh` is one of ours, was opened on `inode` and
    /// holds one.
    func bytes(_ fh: UInt64, inode: UInt64) -> [UInt8]? {
        guard fh != 0 else { return nil }
        return state.withLock { state in
            guard case .file(let opened, let bytes, _) = state.entries[fh], opened == inode else { return nil }
            return bytes
        }
    }

    func directory(_ fh: UInt64) -> [DirectoryEntry]? {
        guard fh != 0 else { return nil }
        return state.withLock { state in
            guard case .directory(let entries) = state.entries[fh] else { return nil }
            return entries
        }
    }

    var count: Int { state.withLock { $0.entries.count } }

    /// Snapshots held now (for tests).
    var snapshotCount: Int { state.withLock { $0.snapshots } }

    /// What a successor needs: the epochs in use, never the handles (a handle it does not
    /// know reads its inode's bytes). `files` stays empty: older binaries read the field.
    func export() -> BridgeState.Handles {
        state.withLock { state in
            BridgeState.Handles(
                epochs: Array((state.carriedEpochs + [state.epoch]).suffix(Self.carriedEpochsAtMost)), files: [])
        }
    }

    /// Takes over a predecessor's epochs (handles an older binary carried are not kept:
    /// they read their inode's bytes like any handle this process does not know).
    func restore(_ carried: BridgeState.Handles) {
        state.withLock { state in
            for epoch in carried.epochs.suffix(Self.carriedEpochsAtMost) where !state.carriedEpochs.contains(epoch) {
                state.carriedEpochs.append(epoch)
            }
            state.carriedEpochs = Array(state.carriedEpochs.suffix(Self.carriedEpochsAtMost - 1))
            // Also epochs of handles created after the predecessor's last export are unknown:
            // a fresh random epoch avoids them but for a 2^-32 chance.
            while state.carriedEpochs.contains(state.epoch) {
                state.epoch = UInt32.random(in: 1...UInt32.max)
            }
        }
    }
}
