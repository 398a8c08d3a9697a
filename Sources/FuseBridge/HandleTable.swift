import FoundationEssentials
import Glibc
import Synchronization

/// Open handles: what `fi->fh` stands for. A handle is a key into this table, never a
/// pointer, so a value the kernel hands back that this process does not know (one a
/// previous server created, after a takeover) is looked up and missed, never dereferenced.
///
/// A key is `epoch << 32 | serial`: each process picks an epoch no carried handle uses, so
/// a handle it creates never equals one the kernel still holds from an earlier server.
final class HandleTable: Sendable {
    enum Entry: Sendable {
        /// A file's snapshot for one open, with the inode it was opened on.
        case file(inode: UInt64, bytes: [UInt8])
        /// A listing for one opendir.
        case directory([DirectoryEntry])
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var epoch: UInt32
        /// Epochs of carried handles (not reused).
        var carriedEpochs: Set<UInt32> = []
        var serial: UInt32 = 0
    }
    private let state = Mutex(State(epoch: UInt32.random(in: 1...UInt32.max)))
    /// Called when a file handle is added or removed (set before serving).
    nonisolated(unsafe) var onChange: (@Sendable () -> Void)?

    /// A new handle for `entry` (never 0).
    func add(_ entry: Entry) -> UInt64 {
        let fh = state.withLock { state -> UInt64 in
            while true {
                state.serial &+= 1
                if state.serial == 0 { state.serial = 1 }
                let fh = UInt64(state.epoch) << 32 | UInt64(state.serial)
                if state.entries[fh] == nil {
                    state.entries[fh] = entry
                    return fh
                }
            }
        }
        if case .file = entry { onChange?() }
        return fh
    }

    func remove(_ fh: UInt64) {
        let removed = state.withLock { $0.entries.removeValue(forKey: fh) }
        if case .file = removed { onChange?() }
    }

    /// The snapshot of a file handle, if `fh` is one of ours and was opened on `inode`.
    func bytes(_ fh: UInt64, inode: UInt64) -> [UInt8]? {
        guard fh != 0 else { return nil }
        return state.withLock { state in
            guard case .file(let opened, let bytes) = state.entries[fh], opened == inode else { return nil }
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

    /// File handles only: a directory listing is rebuilt on demand.
    func export() -> BridgeState.Handles {
        state.withLock { state in
            var files: [BridgeState.Handle] = []
            for (fh, entry) in state.entries {
                if case .file(let inode, let bytes) = entry {
                    files.append(BridgeState.Handle(fh: fh, inode: inode, bytes: Data(bytes)))
                }
            }
            files.sort { $0.fh < $1.fh }
            return BridgeState.Handles(
                epochs: Array(state.carriedEpochs.union([state.epoch])).sorted(), files: files)
        }
    }

    func restore(_ carried: BridgeState.Handles) {
        state.withLock { state in
            for handle in carried.files where handle.fh != 0 {
                state.entries[handle.fh] = .file(inode: handle.inode, bytes: Array(handle.bytes))
            }
            state.carriedEpochs.formUnion(carried.epochs)
            // Also epochs of handles created after the predecessor's last export are unknown:
            // a fresh random epoch avoids them but for a 2^-32 chance.
            while state.carriedEpochs.contains(state.epoch) {
                state.epoch = UInt32.random(in: 1...UInt32.max)
            }
        }
    }
}
