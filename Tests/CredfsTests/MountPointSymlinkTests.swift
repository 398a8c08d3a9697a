import CFuse3
import Foundation
import Testing

@testable import credfs

/// A mount point is resolved once, the same way by every command (docs/security.md,
/// "Mount points"): a symlink given to `mount` is mounted at its target, and `status`,
/// `doctor`, `upgrade` and `unmount` given the same symlink find that mount.
@Suite(.serialized) struct MountPointSymlinkTests {
    @Test func resolveReplacesEverySymlinkAndKeepsAMissingTail() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let real = MountPoint.resolve(dir.path)  // /tmp itself may be a symlink
        try FileManager.default.createDirectory(atPath: dir.path + "/a/b", withIntermediateDirectories: true)
        symlink(dir.path + "/a", dir.path + "/abs")
        symlink("a/b", dir.path + "/rel")
        symlink("../a", dir.path + "/a/up")
        symlink("loop", dir.path + "/loop")
        #expect(MountPoint.resolve(dir.path + "/abs/b") == real + "/a/b")
        #expect(MountPoint.resolve(dir.path + "/rel") == real + "/a/b")
        #expect(MountPoint.resolve(dir.path + "/a/up/b/") == real + "/a/b")
        #expect(MountPoint.resolve(dir.path + "/abs/./b/../b") == real + "/a/b")
        #expect(MountPoint.resolve(dir.path + "/abs/missing/x") == real + "/a/missing/x")
        #expect(MountPoint.resolve(dir.path + "/loop") == real + "/loop")
    }

    @Test(.enabled(if: Host.canMount, Host.canMountReason))
    func allFiveCommandsAcceptTheSymlink() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let target = MountPoint.resolve(dir.path) + "/target"
        let link = dir.path + "/link"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: false)
        #expect(symlink(target, link) == 0)
        let mounted = try runCredfs(["mount", link, "--provider", "demo", "--demo-lifetime", "3600"])
        #expect(mounted.status == 0, "\(mounted.stderr)")
        defer { if isMounted(target) { umount2(target, Int32(MNT_DETACH)) } }
        func serverPID() -> pid_t? {
            guard let bytes = readFile(target + "/status").bytes,
                let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
            else { return nil }
            return (object["pid"] as? Int).map { pid_t($0) }
        }
        #expect(isMounted(target))
        #expect(MountPoint.mountType(at: target) == "fuse.credfs")
        // The symlink is left as it was (nothing is mounted over it).
        var st = stat()
        #expect(lstat(link, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK)
        try waitUntil("credentials") { readFile(target + "/expiration").bytes != nil }

        let status = try runCredfs(["status", link])
        #expect(status.status == 0, "\(status.stderr)")
        #expect(status.stdout.contains("\"state\""))

        let doctor = try runCredfs(["doctor", link, "--imds-endpoint", "http://127.0.0.1:\(unusedLoopbackPort())"])
        #expect(doctor.stdout.contains("ok   mount: live at \(target)"), "\(doctor.stdout)")

        let before = try #require(serverPID())
        let upgrade = try runCredfs(["upgrade", link, "--binary", Binary.credfs])
        #expect(upgrade.status == 0, "\(upgrade.stderr)")
        #expect(serverPID().map { $0 != before } == true)

        let unmount = try runCredfs(["unmount", link])
        #expect(unmount.status == 0, "\(unmount.stderr)")
        try waitUntil("the mount to go") { !isMounted(target) }
        #expect(lstat(link, &st) == 0 && st.st_mode & S_IFMT == S_IFLNK)
    }
}
