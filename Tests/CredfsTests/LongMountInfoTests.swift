import CredentialCore
import Foundation
import Testing

/// A /proc/self/mountinfo longer than 4 KiB, as in a container or on a Kubernetes node:
/// `credfs unmount` and `mount`'s refusal of a live credfs mount still find a credfs mount
/// listed after the first 4 KiB (`String(contentsOfFile:)` reads only that much of a
/// procfs file; found by the boot test, docs/boot.md).
@Suite(.serialized, .timeLimit(.minutes(2)))
struct LongMountInfoTests {
    /// tmpfs mounts under `dir` until /proc/self/mountinfo (here PID 1's namespace too) is
    /// over 8 KiB; the paths, to unmount.
    func pad(_ dir: TempDir) throws -> [String] {
        var padding: [String] = []
        while procFileSize("/proc/self/mountinfo") <= 8192, padding.count < 400 {
            let path = dir.path + "/pad\(padding.count)"
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            let status = "size=4k".withCString { mount("tmpfs", path, "tmpfs", 0, $0) }
            guard status == 0 else {
                Self.unpad(padding)
                throw HarnessError(description: "mount tmpfs: errno \(errno)")
            }
            padding.append(path)
        }
        return padding
    }

    static func unpad(_ padding: [String]) {
        for path in padding.reversed() { _ = umount2(path, 2) }  // 2: MNT_DETACH
    }

    @Test func unmountAndLiveMountRefusalSeePastTheFirst4KiB() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let padding = try pad(dir)
        defer { Self.unpad(padding) }
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

    /// `credfs doctor` reads PID 1's mountinfo whole: a healthy mount listed after 8 KiB of
    /// other mounts is visible (it read only the first 4 KiB, and said it was not).
    @Test func doctorSeesAMountPast8KiBOfPID1sMountinfo() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let padding = try pad(dir)
        defer { Self.unpad(padding) }
        let first = try #require(padding.first)
        try #require(
            SmallFile.text("/proc/1/mountinfo")?.contains(" \(first) ") == true,
            "this test needs to run in PID 1's mount namespace")
        let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3600"])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        let text = try #require(SmallFile.text("/proc/1/mountinfo"))
        let line = try #require(text.split(separator: "\n").firstIndex { $0.contains(" \(daemon.mountpoint) ") })
        let before = text.split(separator: "\n").prefix(line).map { $0.utf8.count + 1 }.reduce(0, +)
        #expect(before > 8192, "the mount's line starts at byte \(before)")
        let result = try runCredfs([
            "doctor", daemon.mountpoint, "--imds-endpoint", "http://127.0.0.1:\(unusedLoopbackPort())",
        ])
        #expect(result.stdout.contains("ok   namespace: visible in PID 1's mount namespace"), "\(result.stdout)")
        #expect(result.stdout.contains("ok   mount: live at \(daemon.mountpoint)"), "\(result.stdout)")
    }
}

private func procFileSize(_ path: String) -> Int { readProcFile(path)?.utf8.count ?? 0 }
