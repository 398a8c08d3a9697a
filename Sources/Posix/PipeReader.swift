import Glibc

/// Reads a child's pipes to their end: the one reader of pipes (``SmallFile`` in the core
/// is the one reader of files). Every pipe is read until it closes; of each, at most its
/// limit is kept (the rest is read and dropped, so a chatty child never blocks on a full
/// pipe); never past `deadline`.
public enum PipeReader {
    public struct Result: Sendable {
        /// What each pipe gave, in the order the pipes were given.
        public var outputs: [[UInt8]]
        /// The deadline came before every pipe closed.
        public var timedOut = false
    }

    /// Reads `fds` (closing none of them) until each closes, `deadline` passes, or `done`
    /// (asked whenever no pipe had anything for 50 ms) says the writer is gone: a child may
    /// leave a process of its own holding the pipe open. Without a deadline and `done`, it
    /// waits for end of file.
    public static func read(
        _ fds: [Int32], limits: [Int], until deadline: ContinuousClock.Instant? = nil,
        done: (() -> Bool)? = nil
    ) -> Result {
        var result = Result(outputs: fds.map { _ in [] })
        var open = Array(fds.indices)
        var buffer = [UInt8](repeating: 0, count: 16_384)
        var writerGone = false
        while !open.isEmpty {
            var wait: Int32 = done == nil ? -1 : 50
            if let deadline {
                let left = deadline - ContinuousClock.now
                guard left > .zero else {
                    result.timedOut = true
                    break
                }
                let (seconds, attoseconds) = left.components
                let ms = Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
                wait = wait < 0 ? ms : min(wait, ms)
            }
            if writerGone { wait = 0 }
            var polled = open.map { pollfd(fd: fds[$0], events: Int16(POLLIN), revents: 0) }
            let ready = poll(&polled, nfds_t(polled.count), wait)
            if ready < 0, errno == EINTR { continue }
            if ready <= 0 {
                if writerGone || ready < 0 { break }
                writerGone = done?() ?? false
                continue
            }
            for (slot, entry) in zip(open, polled) where entry.revents != 0 {
                let n = Glibc.read(entry.fd, &buffer, buffer.count)
                if n < 0, errno == EINTR || errno == EAGAIN { continue }
                guard n > 0 else {
                    open.removeAll { $0 == slot }
                    continue
                }
                let room = max(0, (limits.indices.contains(slot) ? limits[slot] : 0) - result.outputs[slot].count)
                result.outputs[slot] += buffer.prefix(min(n, room))
            }
        }
        return result
    }
}
