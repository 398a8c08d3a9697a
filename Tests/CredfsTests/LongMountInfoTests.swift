import Foundation
import Testing

/// A /proc/self/mountinfo longer than 4 KiB, as in a container or on a Kubernetes node:
/// `credfs unmount` and `mount`'s refusal of a live credfs mount still find a credfs mount
/// listed after the first 4 KiB (`String(contentsOfFile:)` reads only that much of a
/// procfs file; found by the boot test, docs/boot.md).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct LongMountInfoTests {
    @Test func unmountAndLiveMountRefusalSeePastTheFirst4KiB() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        var padding: [String] = []
        defer {
            for path in padding.reversed() { _ = umount2(path, 2) }  // 2: MNT_DETACH
        }
        while procFileSize("/proc/self/mountinfo") <= 8192, padding.count < 400 {
            let path = dir.path + "/pad\(padding.count)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            let status = "size=4k".withCString { mount("tmpfs", path, "tmpfs", 0, $0) }
            try #require(status == 0, "mount tmpfs: errno \(errno)")
            padding.append(path)
        }
        #expect(procFileSize("/proc/self/mountinfo") > 8192)

        // Mounted after the padding: its mountinfo line lies past the first 4 KiB.
        let daemon = try Daemon(["--provider", "demo"])
        defer { daemon.stop() }
        let second = try runCredfs(["mount", daemon.mountpoint, "--provider", "demo"])
        #expect(second.status == 1, "\(second.stderr)")
        #expect(second.stderr.contains("a live credfs mount is already at"), "\(second.stderr)")
        let result = try runCredfs(["unmount", daemon.mountpoint])
        #expect(result.status == 0, "\(result.stderr)")
        try waitUntil("exit", timeout: 5) { !daemon.process.isRunning }
        #expect(daemon.process.terminationStatus == 0)
    }
}

private func procFileSize(_ path: String) -> Int { readProcFile(path)?.utf8.count ?? 0 }
