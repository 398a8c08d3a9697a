import CFuse3
import Foundation
import Testing

/// `--log-file` in a directory others can write to (docs/security.md, "Log file"): a planted
/// symlink, another user's file or a hard link to a root file is refused with one line
/// (exit 1, no mount, the target untouched); a new file is created 0600.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason))
struct LogFileTests {
    func mount(_ mountpoint: String, logFile: String) throws -> CommandResult {
        try runCredfs(["mount", mountpoint, "--provider", "demo", "--demo-lifetime", "3600", "--log-file", logFile])
    }

    @Test func plantedSymlinksOtherUsersFilesAndHardLinksAreRefused() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let shared = dir.path + "/shared"  // as /tmp or /var/tmp: anyone may plant a name here
        try FileManager.default.createDirectory(atPath: shared, withIntermediateDirectories: false)
        chmod(shared, 0o1777)
        let victim = dir.path + "/root-only"
        try "root's file\n".write(toFile: victim, atomically: false, encoding: .utf8)
        chmod(victim, 0o600)
        let mountpoint = dir.path + "/mnt"

        #expect(symlink(victim, shared + "/credfs.log") == 0)
        let viaSymlink = try mount(mountpoint, logFile: shared + "/credfs.log")
        #expect(viaSymlink.status == 1)
        #expect(
            viaSymlink.stderr == "credfs: cannot open the log file \(shared)/credfs.log: it is a symlink\n",
            "\(viaSymlink.stderr)")

        let theirs = shared + "/theirs.log"
        FileManager.default.createFile(atPath: theirs, contents: nil)
        chown(theirs, 65534, 65534)
        let owned = try mount(mountpoint, logFile: theirs)
        #expect(owned.status == 1)
        #expect(
            owned.stderr
                == "credfs: refusing the log file \(theirs): owned by uid 65534, not by uid 0 that credfs runs as\n",
            "\(owned.stderr)")

        #expect(link(victim, shared + "/hard.log") == 0)
        let hard = try mount(mountpoint, logFile: shared + "/hard.log")
        #expect(hard.status == 1)
        #expect(
            hard.stderr == "credfs: refusing the log file \(shared)/hard.log: it has 2 hard links\n", "\(hard.stderr)")

        #expect(readFile(victim).text == "root's file\n")
        #expect(!isMounted(mountpoint))
    }

    @Test func aNewLogFileIsCreatedForRootAlone() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        let log = dir.path + "/credfs.log"
        let result = try mount(mountpoint, logFile: log)
        #expect(result.status == 0, "\(result.stderr)")
        defer {
            _ = try? runCredfs(["unmount", mountpoint])
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        }
        var st = stat()
        #expect(lstat(log, &st) == 0)
        #expect(st.st_mode & 0o7777 == 0o600 && st.st_uid == 0)
        try waitUntil("the log's first lines") { readFile(log).text?.contains("mounted") == true }
    }
}
