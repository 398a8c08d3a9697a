import CFuse3
import Foundation
import Synchronization
import Testing

@testable import FuseBridge

/// The session io's wait, with pipes standing in for `/dev/fuse`.
@Suite struct SessionIOTests {
    /// A request-sized message (longer than a FUSE header), written into `fd`.
    static func send(_ fd: Int32) {
        let message = [UInt8](repeating: 7, count: 64)
        _ = message.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// Runs `body` on one thread of its own; nil if it has not returned within `timeout`.
    static func onOneThread<T: Sendable>(timeout: TimeInterval = 5, _ body: @escaping @Sendable () -> T) -> T? {
        let result = Mutex<T?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let value = body()
            result.withLock { $0 = value }
            done.signal()
        }
        guard done.wait(timeout: .now() + timeout) == .success else { return nil }
        return result.withLock { $0 }
    }

    @Test func oneThreadWaitsForOneSessionThenAnotherOnTheSameDescriptorNumbers() throws {
        let counts = Self.onOneThread { () -> [Int] in
            var counts: [Int] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            for _ in 0..<3 {
                var pipe: [Int32] = [-1, -1]
                guard Glibc.pipe(&pipe) == 0, let io = try? SessionIO(fd: pipe[0], replay: nil) else { return [] }
                Self.send(pipe[1])
                counts.append(buffer.withUnsafeMutableBytes { io.read(into: $0.baseAddress!, capacity: $0.count) })
                // The numbers go back to the process: the next session is likely given the
                // same ones, and this thread's wait must not still watch the closed files.
                close(pipe[0])
                close(pipe[1])
            }
            return counts
        }
        #expect(counts == [64, 64, 64], "a read on a later session did not return (waited on closed files?)")
    }

    @Test func stopWakesEveryWaitingReader() throws {
        var pipe: [Int32] = [-1, -1]
        #expect(Glibc.pipe(&pipe) == 0)
        defer {
            close(pipe[0])
            close(pipe[1])
        }
        let io = try SessionIO(fd: pipe[0], replay: nil)
        let ended = Mutex(0)
        let threads = Mutex<[pid_t]>([])
        let readers = 4
        for _ in 0..<readers {
            Thread.detachNewThread {
                threads.withLock { $0.append(credfs_gettid()) }
                var buffer = [UInt8](repeating: 0, count: 4096)
                let n = buffer.withUnsafeMutableBytes { io.read(into: $0.baseAddress!, capacity: $0.count) }
                if n == -1, errno == ENODEV { ended.withLock { $0 += 1 } }
            }
        }
        // Until every reader sleeps in epoll_wait (x86_64 syscall 232): then the stop must
        // wake them, not find them before their wait.
        func waiting() -> Int {
            threads.withLock { $0 }.filter { tid in
                let text = (try? String(contentsOfFile: "/proc/self/task/\(tid)/syscall", encoding: .utf8)) ?? ""
                return text.hasPrefix("232 ")
            }.count
        }
        var deadline = Date().addingTimeInterval(5)
        while waiting() < readers, Date() < deadline { usleep(5_000) }
        #expect(waiting() == readers, "the readers never waited")
        io.stop()
        deadline = Date().addingTimeInterval(5)
        while ended.withLock({ $0 }) < readers, Date() < deadline { usleep(10_000) }
        #expect(ended.withLock { $0 } == readers, "a stop must wake every reader")
    }
}
