import CFuse3
import Foundation
import Testing

/// `--metrics` on a real mount: the fstab spelling, any address, and a busy port (for
/// `--serve-uri` too).
/// (Values against `status` are checked by Tests/clients/test_metrics.py with the
/// official Prometheus parser.)
@Suite(.serialized) struct MetricsMountTests {
    func scrape(_ url: String) throws -> CommandResult {
        try runProcess("/usr/bin/curl", ["-s", "-S", "--max-time", "5", "-w", "\n%{http_code}", url])
    }

    @Test func fstabOptionAndAnyAddress() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        let port = unusedLoopbackPort()
        // As mount(8) runs the helper: SOURCE MOUNTPOINT -o OPTIONS.
        let mounted = try runCredfs([
            "credfs", mountpoint, "-o", "provider=demo,demo_lifetime=3600,metrics=0.0.0.0:\(port)",
        ])
        #expect(mounted.status == 0, "\(mounted.stderr)")
        defer {
            _ = try? runCredfs(["unmount", mountpoint])
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        }
        // Ready means the mount answers; the first generation may come a moment later.
        try waitUntil("the first generation") { readFile(mountpoint + "/access_key_id").bytes != nil }
        let result = try scrape("http://127.0.0.1:\(port)/metrics")
        #expect(result.stdout.hasSuffix("\n200"))
        #expect(result.stdout.contains("credfs_generation 1\n"))
        #expect(result.stdout.contains("credfs_upstream_requests_total{provider=\"demo\"} 1\n"))
        #expect(!result.stdout.contains("DEMO"))
        let credentials = try #require(readFile(mountpoint + "/credentials").text)
        #expect(!result.stdout.contains(String(credentials.prefix(40))))
    }

    /// A first start that cannot bind (another process holds the port) fails before
    /// mounting, with one line and exit 1: for either listener.
    @Test(arguments: [("--metrics", "metrics"), ("--serve-uri", "the credentials URI")])
    func busyPortFailsWithOneLineAndNoMount(flag: String, what: String) throws {
        let (holder, port) = boundLoopbackSocket()
        defer { close(holder) }
        #expect(listen(holder, 1) == 0)
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        let result = try runCredfs([
            "mount", mountpoint, "--provider", "demo", "--demo-lifetime", "3600", flag, "127.0.0.1:\(port)",
        ])
        #expect(result.status == 1)
        #expect(
            result.stderr == "credfs: cannot listen on 127.0.0.1:\(port) for \(what): Address already in use\n",
            "\(result.stderr)")
        #expect(!isMounted(mountpoint))
    }
}
