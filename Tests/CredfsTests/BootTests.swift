import Foundation
import Testing

/// Boot and operations (issue 4): permissions with a real second user, the systemd
/// readiness protocol, crash recovery, the mount helper, and a secrets leak check.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct BootTests {
    static let secretFiles = ["credentials", "access_key_id", "access_key_secret", "token"]
    static let user: (uid: uid_t, gid: gid_t) = (1000, 1000)
    static let nobody: (uid: uid_t, gid: gid_t) = (65534, 65534)

    @Test func allowOtherWithUidGidAndModeDecidesWhoReads() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon([
            "--provider", "uri", "--uri", server.url, "--allow-other", "--uid", "1000", "--gid", "1000",
            "--mode",
            "0440",
        ])
        defer { daemon.stop() }
        chmod(daemon.dir.path, 0o755)

        for name in Self.secretFiles {
            let asUser = try runAs(uid: Self.user.uid, gid: Self.user.gid, ["cat", daemon.path(name)])
            #expect(asUser.status == 0, "uid 1000 reading \(name): \(asUser.stderr)")
            #expect(asUser.stdout == daemon.read(name).text)
            let asNobody = try runAs(
                uid: Self.nobody.uid, gid: Self.nobody.gid, ["cat", daemon.path(name)])
            #expect(asNobody.status != 0)
            #expect(
                asNobody.stderr.contains("Permission denied"), "nobody reading \(name): \(asNobody.stderr)")
            var st = stat()
            stat(daemon.path(name), &st)
            #expect(st.st_uid == 1000 && st.st_gid == 1000 && st.st_mode & 0o7777 == 0o440)
        }
        for name in ["status", "expiration"] {
            let asNobody = try runAs(
                uid: Self.nobody.uid, gid: Self.nobody.gid, ["cat", daemon.path(name)])
            #expect(asNobody.status == 0, "nobody reading \(name): \(asNobody.stderr)")
        }
    }

    @Test func withoutAllowOtherOtherUsersCannotEnter() async throws {
        let daemon = try Daemon(["--provider", "demo", "--mode", "0444"])
        defer { daemon.stop() }
        chmod(daemon.dir.path, 0o755)
        let list = try runAs(uid: Self.user.uid, gid: Self.user.gid, ["ls", daemon.mountpoint])
        #expect(list.status != 0)
        #expect(list.stderr.contains("Permission denied"), "\(list.stderr)")
        let read = try runAs(uid: Self.user.uid, gid: Self.user.gid, ["cat", daemon.path("status")])
        #expect(read.status != 0)
        // Root, the mounting user, still reads.
        #expect(daemon.read("status").bytes != nil)
    }

    @Test func readyComesOnlyOnceCredentialsAreServed() async throws {
        let server = FakeCredentialServer()
        server.setBehaviour(.status(500))
        try await server.start()
        let socketDir = try TempDir()
        defer { socketDir.remove() }
        let listener = try NotifyListener(path: socketDir.path + "/notify")
        defer { listener.close() }

        var environment = Host.hermeticEnvironment
        environment["NOTIFY_SOCKET"] = listener.path
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url], environment: environment)
        defer { daemon.stop() }

        // Mounted and failing: no READY=1 yet.
        try waitUntil("a failed fetch") { try daemon.status()["lastError"] is String }
        var messages = listener.drain()
        #expect(!messages.contains { $0.contains("READY=1") }, "\(messages)")
        #expect(messages.contains { $0.contains("STATUS=refresh failing") }, "\(messages)")

        server.setBehaviour(.serve)
        daemon.signal(SIGHUP)
        try waitUntil("READY=1") {
            messages += listener.drain()
            return messages.contains { $0.contains("READY=1") }
        }
        // The moment READY=1 is out, credentials are readable.
        #expect(daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(1))
        #expect(messages.filter { $0.contains("READY=1") }.count == 1)

        daemon.stop()
        messages += listener.drain()
        #expect(messages.contains { $0.contains("STOPPING=1") })
    }

    @Test func restartAfterSigkillClearsTheStaleMountAndServes() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let first = try Daemon(["--provider", "uri", "--uri", server.url])
        first.removesDirectory = false
        kill(first.pid, SIGKILL)
        first.process.waitUntilExit()
        // The mount is stale: the daemon behind it is gone.
        var fs = statvfs()
        #expect(statvfs(first.mountpoint, &fs) == -1 && errno == ENOTCONN)

        let started = Date()
        let second = try Daemon(["--provider", "uri", "--uri", server.url], in: first.dir)
        defer { second.stop() }
        try waitUntil("credentials", timeout: 5) { second.read("access_key_id").bytes != nil }
        let seconds = Date().timeIntervalSince(started)
        #expect(second.log.contains("cleared a stale FUSE mount"))
        print("restart after SIGKILL: serving after \(Int(seconds * 1000)) ms")
    }

    /// The fstab path, as mount(8) takes it: `/sbin/mount.fuse.credfs`. The test runs in a
    /// private mount namespace where an overlay over `/sbin` holds this build's helper, so an
    /// installed helper is neither used nor changed, and nothing outside sees the mount.
    @Test(.enabled(if: Host.hasOverlay, Host.hasOverlayReason))
    func mountHelperMountsFromFstabOptionsAndUmountUnmounts() async throws {
        let work = try TempDir()
        defer { work.remove() }
        chmod(work.path, 0o755)
        let mountpoint = work.path + "/mnt"
        let before = Host.fingerprint(["/sbin", "/usr/local/bin", "/etc/systemd/system"])
        let result = try runProcess(
            "/usr/bin/unshare",
            ["--mount", "--propagation", "private", "/bin/bash", "-c", Self.helperScript, "helper-test"]
                + [Binary.credfs, mountpoint, work.path])
        let facts = Dictionary(
            result.stdout.split(separator: "\n").compactMap { line -> (String, String)? in
                let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
                return parts.count == 2 ? (parts[0], parts[1]) : nil
            }, uniquingKeysWith: { $1 })
        let context = "stdout: \(result.stdout) stderr: \(result.stderr)"
        #expect(result.status == 0, "\(context)")
        #expect(facts["helper"] == Binary.credfs, "the helper mount(8) found is this build's: \(context)")
        #expect(facts["mount"] == "0", "\(context)")
        #expect(facts["mounted"] == "fuse.credfs", "\(context)")
        #expect(facts["userread"] == "STS.DEMO", "uid 1000 reads access_key_id: \(context)")
        #expect(facts["mode"] == "440", "\(context)")
        #expect(facts["umount"] == "0", "\(context)")
        #expect(facts["daemon"] == "exited", "\(context)")
        // Private: the mount never showed in this namespace, and no system path changed.
        #expect(!isMounted(mountpoint))
        #expect(Host.fingerprint(["/sbin", "/usr/local/bin", "/etc/systemd/system"]) == before)
    }

    /// Runs inside `unshare --mount --propagation private`. Arguments: credfs, mount point,
    /// work directory. Prints `key=value` facts; cleans up whatever happens.
    static let helperScript = #"""
        set -u
        bin=$1 mnt=$2 work=$3 pid=
        trap '[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; umount -l "$mnt" 2>/dev/null' EXIT
        sbin=$(readlink -f /sbin)
        mkdir -p "$work/upper" "$work/ovl" "$mnt"
        ln -s "$bin" "$work/upper/mount.fuse.credfs"
        mount -t overlay overlay -o "lowerdir=$sbin,upperdir=$work/upper,workdir=$work/ovl" "$sbin" || exit 3
        echo "helper=$(readlink /sbin/mount.fuse.credfs)"
        mount -t fuse.credfs credfs "$mnt" -o provider=demo,allow_other,uid=1000,gid=1000,mode=0440,_netdev,nofail \
            2>"$work/mount.err"
        echo "mount=$? $(head -c 300 "$work/mount.err" | tr '\n' ' ')" | sed 's/ *$//'
        echo "mounted=$(awk -v m="$mnt" '$2 == m { print $3 }' /proc/self/mounts)"
        echo "userread=$(setpriv --reuid=1000 --regid=1000 --clear-groups cat "$mnt/access_key_id" | head -c 8)"
        echo "mode=$(stat -c %a "$mnt/credentials")"
        pid=$(pgrep -f -- "mount $mnt " | head -n 1)
        umount "$mnt"
        echo "umount=$?"
        for _ in $(seq 500); do kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
        kill -0 "$pid" 2>/dev/null && echo "daemon=running" || { echo "daemon=exited"; pid=; }
        """#

    @Test func noSecretReachesLogsStatusOrArgv() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--log-level", "trace"])
        defer { daemon.stop() }
        let cmdline = String(
            decoding: FileManager.default.contents(atPath: "/proc/\(daemon.pid)/cmdline") ?? Data(),
            as: UTF8.self)

        // A full session: reads, a rotation, upstream errors, status, SIGTERM.
        var seen = [cmdline]
        #expect(daemon.read("credentials").bytes != nil)
        seen.append(try runCredfs(["status", daemon.mountpoint]).stdout)
        server.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("generation 2") {
            daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(2)
        }
        server.setBehaviour(.status(500))
        daemon.signal(SIGHUP)
        try waitUntil("a failed refresh") { try daemon.state() == "stale" }
        seen.append(try runCredfs(["status", daemon.mountpoint]).stdout)
        server.setBehaviour(.notJSON)
        daemon.signal(SIGHUP)
        try waitUntil("a second failure") {
            (try daemon.status()["consecutiveFailures"] as? Int ?? 0) >= 2
        }
        seen.append(daemon.read("status").text ?? "")
        let (exited, _) = daemon.stop()
        #expect(exited)
        seen.append(daemon.log)
        #expect(daemon.log.contains("refresh failed"))
        // PR_GET_DUMPABLE, as the daemon read it back after PR_SET_DUMPABLE 0.
        #expect(daemon.log.contains("dumpable=false"))

        let secrets = (1...2).flatMap { g in
            [
                FakeCredentialServer.secret(g), FakeCredentialServer.token(g),
                FakeCredentialServer.accessKeyId(g),
            ]
        }
        let everything = seen.joined(separator: "\n")
        let hits = secrets.filter { everything.contains($0) }
        #expect(hits.isEmpty, "\(hits.count) secrets or unmasked key ids leaked")
        #expect(everything.contains("STS.F*********A"), "the masked id is what the log and status show")
    }
}

/// A unix datagram socket standing in for systemd's `$NOTIFY_SOCKET`.
final class NotifyListener {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw HarnessError(description: "socket failed") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in path.utf8.enumerated() { raw[i] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard bound == 0 else { throw HarnessError(description: "bind \(path) failed: errno \(errno)") }
    }

    /// Every datagram received so far.
    func drain() -> [String] {
        var messages: [String] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { return messages }
            messages.append(String(decoding: buffer[0..<n], as: UTF8.self))
        }
    }

    func close() { Glibc.close(fd) }
}
