import Foundation
import Testing

/// Facts about the daemon seen from outside it: the kernel's view of the process, the
/// mount's life, the daemon's own counters checked against what a reader did.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct DaemonFactsTests {
    /// `umount -l`: the mount leaves the namespace at once; the daemon serves whoever still
    /// holds it (a new open through a held directory) and exits when the last holder closes.
    @Test func aLazyUnmountEndsTheDaemonWhenTheLastHolderCloses() throws {
        let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3600"])
        defer { daemon.stop() }
        try waitUntil("credentials") { daemon.read("credentials").bytes != nil }
        let directory = open(daemon.mountpoint, O_RDONLY | O_DIRECTORY)
        try #require(directory >= 0, "errno \(errno)")
        var directoryOpen = true
        defer { if directoryOpen { close(directory) } }

        let detached = try runProcess("/bin/umount", ["-l", daemon.mountpoint])
        #expect(detached.status == 0, "\(detached.stderr)")
        #expect(!isMounted(daemon.mountpoint))
        // Still served: a lookup and an open through the held directory reach the daemon.
        let fd = openat(directory, "access_key_id", O_RDONLY)
        #expect(fd >= 0, "open after the detach: errno \(errno)")
        if fd >= 0 {
            #expect(readAll(fd).text?.hasPrefix("STS.DEMO") == true)
            close(fd)
        }
        #expect(daemon.process.isRunning, "exited while the detached mount was still held")

        close(directory)
        directoryOpen = false
        try waitUntil("the daemon to exit after the last holder closed", timeout: 15) { !daemon.process.isRunning }
        #expect(daemon.process.terminationStatus == 0, "\(daemon.log.suffix(1000))")
    }

    static let bounded = ["/usr/bin/setpriv", "--bounding-set=-sys_ptrace"]

    /// `readlink /proc/PID/fd/0` as root without CAP_SYS_PTRACE: the kernel's ptrace access
    /// check (PTRACE_MODE_READ), which refuses a non-dumpable process to its own uid.
    static func fdLink(_ pid: pid_t) throws -> CommandResult {
        try runProcess(bounded[0], Array(bounded.dropFirst()) + ["/bin/readlink", "--verbose", "/proc/\(pid)/fd/0"])
    }

    /// PR_SET_DUMPABLE 0, seen by the kernel: a process with the daemon's uid and
    /// capabilities (root without CAP_SYS_PTRACE, both) reads the descriptor links of a
    /// dumpable process so started but not the daemon's. (`/proc/PID/environ` is not the
    /// probe: some kernels, this test machine's 6.18 among them, let the same uid read a
    /// non-dumpable process's environment.) Switched off (the daemon's prctl removed), the
    /// daemon's link reads like the control's and the test fails.
    @Test func theDaemonIsNotDumpable() throws {
        let bounded = Self.bounded
        let daemon = try Daemon(["--provider", "demo"], launcher: bounded)
        defer { daemon.stop() }
        let control = Process()
        control.executableURL = URL(fileURLWithPath: bounded[0])
        control.arguments = Array(bounded.dropFirst()) + ["/bin/sleep", "60"]
        try control.run()
        defer {
            // SIGKILL: a child of a test thread starts with SIGTERM blocked.
            kill(control.processIdentifier, SIGKILL)
            control.waitUntilExit()
        }
        try waitUntil("the control process to run sleep") {
            readProcFile("/proc/\(control.processIdentifier)/comm") == "sleep\n"
        }
        let readable = try Self.fdLink(control.processIdentifier)
        #expect(readable.status == 0, "the probe cannot read even a dumpable process: \(readable.stderr)")
        let refused = try Self.fdLink(daemon.pid)
        #expect(
            refused.status != 0 && refused.stderr.contains("Permission denied"),
            "the daemon's descriptors were readable: status \(refused.status) \(refused.stdout)\(refused.stderr)")
    }

    /// `openRequests` counts the OPENs that reach the daemon: every open in the default mode,
    /// none after the first with `--kernel-cache` (what KernelCacheTests relies on).
    @Test func openRequestsRiseWithEveryOpenUnlessKernelCache() throws {
        func opens(_ arguments: [String]) throws -> (before: Int, after: Int) {
            let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3600"] + arguments)
            defer { daemon.stop() }
            try waitUntil("credentials") { daemon.read("credentials").bytes != nil }
            let before = try daemon.status()["openRequests"] as? Int ?? -1
            for _ in 0..<100 {
                #expect(daemon.read("credentials").bytes != nil)
                #expect(daemon.read("access_key_id").bytes != nil)
            }
            return (before, try daemon.status()["openRequests"] as? Int ?? -1)
        }
        let plain = try opens([])
        // 200 opens, and the status reads' own.
        #expect(plain.after - plain.before >= 200, "default mode: \(plain)")
        let cached = try opens(["--kernel-cache"])
        #expect(cached.before <= 1 && cached.after == cached.before, "--kernel-cache: \(cached)")
        print(
            "openRequests over 200 opens: default \(plain.before) -> \(plain.after), kernel-cache \(cached.before) -> \(cached.after)"
        )
    }
}
