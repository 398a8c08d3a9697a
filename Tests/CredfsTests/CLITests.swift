import Foundation
import Testing

@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct CLITests {
    @Test(arguments: [
        ["mount", "/tmp/credfs-never", "--bogus"],
        ["mount", "/tmp/credfs-never", "--provider", "nope"],
        ["mount", "/tmp/credfs-never", "--provider", "uri", "--uri", "ftp://example"],
        ["mount", "/tmp/credfs-never", "--mode", "0999"],
        ["mount", "/tmp/credfs-never", "--initial-wait", "soon"],
        ["mount", "/tmp/credfs-never", "--refresh-before", "0"],
        ["mount", "/tmp/credfs-never", "--provider", "demo", "--demo-lifetime", "1"],
        ["mount", "/tmp/credfs-never", "--provider", "demo", "--demo-lifetime", "9223372036854775807"],
        ["mount", "/tmp/credfs-never", "--provider", "demo", "--demo-lifetime", "1e19"],
        ["mount", "/tmp/credfs-never", "--uid", "4294967295"],
        ["mount", "/tmp/credfs-never", "--uid", "-1"],
        ["mount", "/tmp/credfs-never", "--gid", "99999999999"],
        ["mount", "/tmp/credfs-never", "--mode", "7777"],
        ["mount", "/tmp/credfs-never", "--refresh-before", "1e308h"],
        ["mount", "/tmp/credfs-never", "--refresh-before", "30d"],
        ["mount", "/tmp/credfs-never", "--initial-wait", "nan"],
        ["mount", "/tmp/credfs-never", "--initial-wait", "2h"],
        ["mount", "/tmp/credfs-never", "--duration", "1e19"],
        ["mount", "/tmp/credfs-never", "--duration", "43201"],
        ["mount", "/tmp/credfs-never", "--serve-uri", "127.0.0.1:99999"],
        ["mount", "/tmp/credfs-never", "--serve-uri", "10.0.0.1:80"],
        ["mount", "/tmp/credfs-never", "--metrics", "9464"],
        ["mount", "/tmp/credfs-never", "--metrics", "example.com:9464"],
        ["mount", "/tmp/credfs-never", "--metrics", "::1:9464"],
        ["mount", "/tmp/credfs-never", "--metrics", "127.0.0.1:70000"],
        ["get", "--field", "password"],
        ["frobnicate"],
    ])
    func badArgumentsExit64WithOneLine(arguments: [String]) throws {
        var environment = Host.hermeticEnvironment
        environment["ALIBABA_CLOUD_CREDENTIALS_URI"] = nil
        let result = try runCredfs(arguments, environment: environment)
        #expect(result.status == 64)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "stderr: \(result.stderr)")
        #expect(lines.first?.hasPrefix("credfs: ") == true)
        #expect(result.stdout.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "/tmp/credfs-never"))
    }

    @Test func uriProviderWithoutURIExit64() throws {
        var environment = Host.hermeticEnvironment
        environment["ALIBABA_CLOUD_CREDENTIALS_URI"] = nil
        let result = try runCredfs(
            ["mount", "/tmp/credfs-never", "--provider", "uri"], environment: environment)
        #expect(result.status == 64)
        #expect(
            result.stderr == "credfs: --provider uri needs --uri or ALIBABA_CLOUD_CREDENTIALS_URI\n")
    }

    /// Without -f, `mount` returns only once the mount answers; SIGTERM then unmounts.
    @Test func mountReturnsWhenLiveAndSigtermUnmounts() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let dir = try TempDir()
        let mountpoint = dir.path + "/not/yet/there"
        defer {
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            dir.remove()
        }
        let result = try runCredfs(["mount", mountpoint, "--provider", "uri", "--uri", server.url])
        #expect(result.status == 0, "\(result.stderr)")
        // Live the moment mount returns: no waiting here.
        #expect(isMounted(mountpoint))
        var st = stat()
        #expect(stat(mountpoint, &st) == 0 && st.st_ino == 1)
        #expect(readFile(mountpoint + "/access_key_id").text == FakeCredentialServer.accessKeyId(1))
        let status = try runCredfs(["status", mountpoint])
        #expect(status.status == 0)
        #expect(status.stdout.contains("\"state\": \"fresh\""))

        // A second mount on a live credfs mount is refused.
        let again = try runCredfs(["mount", mountpoint, "--provider", "uri", "--uri", server.url])
        #expect(again.status == 1)
        #expect(again.stderr == "credfs: a live credfs mount is already at \(mountpoint)\n")

        let pid = try #require(daemonPID(mountpoint: mountpoint))
        let started = Date()
        kill(pid, SIGTERM)
        try waitUntil("the daemon to exit", timeout: 5) { kill(pid, 0) != 0 }
        print("SIGTERM to exit: \(Int(Date().timeIntervalSince(started) * 1000)) ms")
        #expect(!isMounted(mountpoint))
        #expect(try runCredfs(["status", mountpoint]).status == 1)
    }

    /// `x=$(credfs mount … 2>&1)` returns: the daemon keeps none of the caller's
    /// descriptors, and it leaves the caller's working directory (issue 10).
    @Test func backgroundMountKeepsNoCallerPipeNorDirectory() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        defer { if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) } }
        let result = try runProcess(
            "/usr/bin/timeout",
            [
                "20", "/bin/sh", "-c",
                "cd \(dir.path) && x=$(\(Binary.credfs) mount mnt --provider demo 2>&1); echo \"rc=$? out=$x\"",
            ])
        #expect(result.stdout == "rc=0 out=\n", "\(result.stdout) \(result.stderr)")
        let pid = try #require(daemonPID(mountpoint: "mnt") ?? daemonPID(mountpoint: mountpoint))
        defer { kill(pid, SIGTERM) }
        let cwd = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/cwd")
        #expect(cwd == "/")
        #expect(isMounted(mountpoint))
        #expect(try runCredfs(["unmount", mountpoint]).status == 0)
        try waitUntil("the daemon to exit", timeout: 5) { kill(pid, 0) != 0 }
    }

    @Test func sigtermWithAFileHeldOpenExitsZero() async throws {
        let daemon = try Daemon(["--provider", "demo"])
        defer { daemon.stop() }
        let fd = open(daemon.path("credentials"), O_RDONLY)
        #expect(fd >= 0)
        defer { close(fd) }
        let (exited, seconds) = daemon.stop()
        // Exited of itself (stop() kills it after 5 s); the time is reported, not bounded.
        #expect(exited, "took \(seconds) s")
        print("SIGTERM with a file held open to exit: \(Int(seconds * 1000)) ms")
        #expect(daemon.process.terminationStatus == 0)
        #expect(!isMounted(daemon.mountpoint))
    }

    @Test func sigintUnmountsAndExitsZero() async throws {
        let daemon = try Daemon(["--provider", "demo"])
        defer { daemon.stop() }
        daemon.signal(SIGINT)
        try waitUntil("exit", timeout: 2) { !daemon.process.isRunning }
        #expect(daemon.process.terminationStatus == 0)
        #expect(!isMounted(daemon.mountpoint))
    }

    @Test func unmountCommandEndsTheDaemon() async throws {
        let daemon = try Daemon(["--provider", "demo"])
        defer { daemon.stop() }
        let result = try runCredfs(["unmount", daemon.mountpoint])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(!isMounted(daemon.mountpoint))
        try waitUntil("exit", timeout: 5) { !daemon.process.isRunning }
        #expect(daemon.process.terminationStatus == 0)
        #expect(try runCredfs(["unmount", daemon.mountpoint]).status == 1)
    }

    @Test func getPrintsOneFetch() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let token = try runCredfs(["get", "--provider", "uri", "--uri", server.url, "--field", "token"])
        #expect(token.status == 0)
        #expect(token.stdout == FakeCredentialServer.token(1))
        let json = try runCredfs(["get", "--provider", "uri", "--uri", server.url])
        #expect(
            json.stdout.hasPrefix("{\n\t\"AccessKeyId\": \"\(FakeCredentialServer.accessKeyId(1))\",\n"))
        server.setBehaviour(.notJSON)
        let bad = try runCredfs(["get", "--provider", "uri", "--uri", server.url])
        #expect(bad.status == 1)
        #expect(bad.stderr == "credfs: answer is not a JSON object with the credential fields\n")
        #expect(bad.stdout.isEmpty)
    }
}

/// The pid of the `credfs mount` daemon serving `mountpoint`, from /proc.
func daemonPID(mountpoint: String) -> pid_t? {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else {
        return nil
    }
    for entry in entries {
        guard let pid = pid_t(entry),
            let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline")
        else { continue }
        let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        if args.count > 2, args[1] == "mount", args[2] == mountpoint, args.contains("--foreground") {
            return pid
        }
    }
    return nil
}
