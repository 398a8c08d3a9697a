import Synchronization

/// Open file and directory handles, kept by the bridge and named to the kernel by index.
///
/// A handle is `serial << 32 | (slot + 1)`: the kernel hands it back in later requests, and
/// a handle whose slot was freed and reused no longer matches, so a stale or forged `fh`
/// finds nothing instead of someone else's bytes. 0 is never a handle.
final class HandleTable<Value: Sendable>: Sendable {
    private struct Slot {
        var serial: UInt32
        var value: Value?
    }

    private struct State {
        var slots: [Slot] = []
        var free: [Int] = []
        var nextSerial: UInt32 = 1
        var count = 0
    }

    private let state = Mutex(State())

    /// Stores `value`; returns its handle.
    func insert(_ value: Value) -> UInt64 {
        state.withLock { s in
            let serial = s.nextSerial
            s.nextSerial = s.nextSerial == UInt32.max ? 1 : s.nextSerial + 1
            let slot: Int
            if let reused = s.free.popLast() {
                slot = reused
                s.slots[slot] = Slot(serial: serial, value: value)
            } else {
                slot = s.slots.count
                s.slots.append(Slot(serial: serial, value: value))
            }
            s.count += 1
            return UInt64(serial) << 32 | UInt64(slot + 1)
        }
    }

    /// The value behind `handle`, if it is live.
    func value(_ handle: UInt64) -> Value? {
        state.withLock { s in
            guard let slot = Self.slot(handle, in: s) else { return nil }
            return s.slots[slot].value
        }
    }

    /// Frees `handle`; returns what it held. Unknown handles are ignored.
    @discardableResult
    func remove(_ handle: UInt64) -> Value? {
        state.withLock { s in
            guard let slot = Self.slot(handle, in: s) else { return nil }
            let value = s.slots[slot].value
            s.slots[slot].value = nil
            s.free.append(slot)
            s.count -= 1
            return value
        }
    }

    /// Live handles.
    var count: Int { state.withLock { $0.count } }

    private static func slot(_ handle: UInt64, in s: State) -> Int? {
        let low = handle & 0xFFFF_FFFF
        guard low >= 1, low <= UInt64(s.slots.count) else { return nil }
        let slot = Int(low - 1)
        guard s.slots[slot].serial == UInt32(truncatingIfNeeded: handle >> 32), s.slots[slot].value != nil
        else { return nil }
        return slot
    }
}
