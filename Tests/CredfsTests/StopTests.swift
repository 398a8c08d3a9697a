import Foundation
import Testing

/// SIGTERM with files held open (issue 26): the daemon detaches the mount at once, serves
/// what is still held for up to 0.5 s (docs/decisions.md, "`unmount` is lazy"), and exits
/// when the last one is closed.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct StopTests {
    @Test func sigtermServesHeldFilesUntilTheyAreClosed() throws {
        let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3600"])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        let credentials = open(daemon.path("credentials"), O_RDONLY)
        let status = open(daemon.path("status"), O_RDONLY)
        try #require(credentials >= 0 && status >= 0)
        var held = [credentials, status]
        defer { held.forEach { _ = close($0) } }
        daemon.signal(SIGTERM)
        // SIGTERM handled: the mount is gone from the namespace (a lazy unmount).
        try waitUntil("the mount detached") { !isMounted(daemon.mountpoint) }
        for (fd, key) in [(credentials, "\"AccessKeyId\""), (status, "\"state\"")] {
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = pread(fd, &buffer, buffer.count, 0)
            let failure = n < 0 ? String(cString: strerror(errno)) : ""
            #expect(n > 0, "pread after SIGTERM: \(failure)")
            #expect(String(decoding: buffer.prefix(max(n, 0)), as: UTF8.self).contains(key))
        }
        #expect(daemon.process.isRunning, "exited while files were held")
        let closedAt = Date()
        for fd in held {
            let result = close(fd)
            let failure = result != 0 ? String(cString: strerror(errno)) : ""
            #expect(result == 0, "close after SIGTERM: \(failure)")
        }
        held = []
        try waitUntil("the daemon to exit", timeout: 5) { !daemon.process.isRunning }
        print(
            "SIGTERM with held files: exited \(Int(Date().timeIntervalSince(closedAt) * 1000)) ms after the last close")
        #expect(daemon.process.terminationStatus == 0)
    }

    /// A reader that never closes does not hold the stop up: the daemon exits after its
    /// grace, and the reader's next read fails.
    @Test func aFileHeldForEverDoesNotHoldTheStopUp() throws {
        let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3600"])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        let fd = open(daemon.path("credentials"), O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        let signalled = Date()
        daemon.signal(SIGTERM)
        try waitUntil("the daemon to exit with a file held", timeout: 5) { !daemon.process.isRunning }
        print("SIGTERM with a file held for ever: exited after \(Int(Date().timeIntervalSince(signalled) * 1000)) ms")
        #expect(daemon.process.terminationStatus == 0)
        var buffer = [UInt8](repeating: 0, count: 64)
        #expect(pread(fd, &buffer, buffer.count, 0) < 0)
        #expect(errno == ENOTCONN)
    }
}
