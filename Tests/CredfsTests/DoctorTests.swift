import CredentialCore
import Foundation
import Testing

/// `credfs doctor` on a healthy mount and in each broken setup it claims to detect
/// (issue 13). The metadata probe always points at 127.0.0.1: a closed port (nothing
/// answers) or a fake metadata service.
@Suite(.stopsFakes, .serialized) struct DoctorTests {
    /// An environment with none of the variables doctor looks at.
    static var cleanEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ALIBABA_CLOUD_") }
    }

    /// A loopback URL on which nothing listens.
    static func closedEndpoint() -> String { "http://127.0.0.1:\(unusedLoopbackPort())" }

    func doctor(
        _ mountpoint: String, _ extra: [String] = [], environment: [String: String] = cleanEnvironment,
        imds: String = closedEndpoint()
    ) throws -> CommandResult {
        try runCredfs(["doctor", mountpoint, "--imds-endpoint", imds] + extra, environment: environment)
    }

    /// The line of check `name`, and the fix line after it if any.
    func lines(of name: String, in output: String) -> String {
        let all = output.split(separator: "\n").map(String.init)
        guard let index = all.firstIndex(where: { $0.dropFirst(5).hasPrefix(name + ":") }) else { return "" }
        var found = all[index]
        if index + 1 < all.count, all[index + 1].hasPrefix("     fix:") { found += "\n" + all[index + 1] }
        return found
    }

    func healthyMount(_ arguments: [String] = [], lifetime: TimeInterval = 3600) async throws -> (
        FakeCredentialServer, Daemon
    ) {
        let server = FakeCredentialServer(lifetime: lifetime)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url] + arguments)
        try waitUntil("credentials") { try daemon.generation() == 1 }
        return (server, daemon)
    }

    @Test func aHealthyMountIsAllWell() async throws {
        let (_, daemon) = try await healthyMount(["--allow-other", "--uid", "65534"])
        defer { daemon.stop() }
        let result = try doctor(daemon.mountpoint, ["--user", "nobody"])
        print("doctor, healthy mount:\n\(result.stdout)")
        #expect(result.status == 0, "\(result.stdout)\(result.stderr)")
        #expect(result.stdout.hasSuffix("all well\n"))
        for name in ["mount", "lifetime", "user", "environment", "metadata", "namespace"] {
            #expect(lines(of: name, in: result.stdout).hasPrefix("ok   \(name):"), "\(name)")
        }
        let json = try runCredfs(
            ["doctor", daemon.mountpoint, "--json", "--imds-endpoint", Self.closedEndpoint()],
            environment: Self.cleanEnvironment)
        #expect(json.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(object?["ok"] as? Bool == true)
        #expect((object?["checks"] as? [[String: Any]])?.count == 6)
    }

    @Test func noMount() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let result = try doctor(dir.path)
        #expect(result.status == 1)
        #expect(lines(of: "mount", in: result.stdout).contains("no credfs mount at \(dir.path)"))
        #expect(lines(of: "mount", in: result.stdout).contains("fix: start it: credfs mount"))
    }

    @Test func failingUpstreamAndShortLifetime() async throws {
        // 10-minute credentials: served with under 15 minutes left from the start.
        let (server, daemon) = try await healthyMount(lifetime: 600)
        defer { daemon.stop() }
        var result = try doctor(daemon.mountpoint)
        #expect(result.status == 1)
        #expect(lines(of: "lifetime", in: result.stdout).hasPrefix("FAIL lifetime: credentials served with"))
        #expect(lines(of: "lifetime", in: result.stdout).contains("fix: "))
        #expect(lines(of: "mount", in: result.stdout).hasPrefix("ok   mount:"))

        server.setBehaviour(.status(503))
        daemon.signal(SIGHUP)
        try waitUntil("a failed refresh") { try daemon.state() == "stale" }
        result = try doctor(daemon.mountpoint)
        #expect(result.status == 1)
        #expect(lines(of: "mount", in: result.stdout).hasPrefix("FAIL mount: state stale"))
        #expect(lines(of: "mount", in: result.stdout).contains("HTTP 503"))
    }

    @Test func accessKeyVariablesAreNamedNeverShown() async throws {
        let (_, daemon) = try await healthyMount()
        defer { daemon.stop() }
        var environment = Self.cleanEnvironment
        environment["ALIBABA_CLOUD_ACCESS_KEY_ID"] = "LTAI5tDoctorMustNotPrintThis"
        environment["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = "doctor-secret-must-not-print"
        let result = try doctor(daemon.mountpoint, environment: environment)
        #expect(result.status == 1)
        let line = lines(of: "environment", in: result.stdout)
        #expect(line.hasPrefix("FAIL environment: ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET set"))
        #expect(line.contains("fix: unset ALIBABA_CLOUD_ACCESS_KEY_ID ALIBABA_CLOUD_ACCESS_KEY_SECRET"))
        for output in [result.stdout, result.stderr] {
            #expect(!output.contains("MustNotPrint"))
            #expect(!output.contains("must-not-print"))
            #expect(!output.contains(FakeCredentialServer.secret(1)))
            #expect(!output.contains(FakeCredentialServer.token(1)))
        }
    }

    @Test func metadataServiceThatAnswers() async throws {
        let (server, daemon) = try await healthyMount()
        let imds = FakeMetadataServer()
        try await imds.start()
        defer {
            daemon.stop()
            Task {
                await server.stop()
                await imds.stop()
            }
        }
        let started = Date()
        var result = try doctor(daemon.mountpoint, imds: imds.endpoint)
        #expect(result.status == 1)
        #expect(
            lines(of: "metadata", in: result.stdout).contains(
                "fix: export ALIBABA_CLOUD_ECS_METADATA_DISABLED=true"))
        // Disabled for the SDKs: no longer a problem.
        var environment = Self.cleanEnvironment
        environment["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"
        result = try doctor(daemon.mountpoint, environment: environment, imds: imds.endpoint)
        #expect(result.status == 0, "\(result.stdout)")
        print("doctor with a metadata service that answers: \(Date().timeIntervalSince(started)) s for two runs")
    }

    @Test func metadataProbeGivesUpOnAServiceThatNeverAnswers() async throws {
        // A service that accepts and never answers.
        let hanging = FakeHTTPServer { _ in .hang }
        try await hanging.start()
        let dir = try TempDir()
        defer { dir.remove() }
        let started = Date()
        let result = try doctor(dir.path, imds: hanging.baseURL)
        let elapsed = Date().timeIntervalSince(started)
        print("doctor against a metadata service that never answers: \(elapsed) s")
        #expect(lines(of: "metadata", in: result.stdout).hasPrefix("ok   metadata: no metadata service answers"))
    }

    @Test func userWhoCannotRead() async throws {
        let (_, daemon) = try await healthyMount()
        defer { daemon.stop() }
        // Mounted by root without allow_other: nobody cannot even enter.
        var result = try doctor(daemon.mountpoint, ["--user", "nobody"])
        #expect(result.status == 1)
        #expect(lines(of: "user", in: result.stdout).contains("made without allow_other"))
        result = try doctor(daemon.mountpoint, ["--user", "no-such-user-credfs"])
        #expect(lines(of: "user", in: result.stdout).hasPrefix("FAIL user: no user named"))
    }

    @Test func userWhoCannotReadTheSecretFiles() async throws {
        let (_, daemon) = try await healthyMount(["--allow-other"])
        defer { daemon.stop() }
        let result = try doctor(daemon.mountpoint, ["--user", "nobody"])
        #expect(result.status == 1)
        let line = lines(of: "user", in: result.stdout)
        #expect(line.contains("nobody cannot read the secret files (owner 0, group 0, mode 400)"))
        #expect(line.contains("fix: mount with --uid $(id -u nobody)"))
        // And the check is right: nobody really cannot read it.
        let read = try runAs(uid: 65534, gid: 65534, ["/bin/cat", daemon.path("credentials")])
        #expect(read.status != 0)
        print("doctor, broken setup (--allow-other, root-owned 0400, --user nobody):\n\(result.stdout)")
    }

    @Test func clockSkewOverAMinute() async throws {
        let server = FakeCredentialServer(clockOffset: 600)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        let result = try doctor(daemon.mountpoint)
        #expect(result.status == 1)
        #expect(lines(of: "clock", in: result.stdout).hasPrefix("FAIL clock: the local clock is"))
        #expect(lines(of: "clock", in: result.stdout).contains("behind the cloud's"))
    }

    @Test func mountInAPrivateNamespace() throws {
        // A mount made in a mount namespace of its own (as a sandboxed service would):
        // doctor, run in that namespace, sees the mount but PID 1 does not.
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        let script = """
            set -e
            mount --make-rprivate /
            "$0" mount "$1" --provider demo --demo-lifetime 3600
            set +e
            # The mount is up; its first credentials may still be on their way.
            tries=0
            until grep -q '"state": "fresh"' "$1/status" || [ $tries -ge 200 ]; do
                tries=$((tries + 1)); sleep 0.05
            done
            "$0" doctor "$1" --imds-endpoint "$2"
            status=$?
            "$0" unmount "$1"
            exit $status
            """
        let result = try runProcess(
            "/usr/bin/unshare", ["-m", "/bin/sh", "-c", script, Binary.credfs, mountpoint, Self.closedEndpoint()],
            environment: Self.cleanEnvironment)
        #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
        #expect(lines(of: "mount", in: result.stdout).hasPrefix("ok   mount:"))
        #expect(lines(of: "namespace", in: result.stdout).hasPrefix("FAIL namespace:"))
        #expect(!isMounted(mountpoint))
    }

    @Test func badFlagsExit64() throws {
        let result = try runCredfs(["doctor", "--no-such-flag"])
        #expect(result.status == 64)
        #expect(result.stderr.split(separator: "\n").count == 1)
    }
}

/// A real mount against an upstream whose clock runs 10 minutes ahead of or behind ours.
@Suite(.stopsFakes, .serialized) struct SkewMountTests {
    @Test func upstreamTenMinutesAheadIsFollowed() async throws {
        // The cloud's clock is 10 min ahead: its sets expire 5 s after issue by its clock,
        // which the local clock would read as 10 min 5 s. credfs must stop serving after 5 s.
        let server = FakeCredentialServer(lifetime: 5, clockOffset: 600)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        let status = try daemon.status()
        let skew = status["clockSkewSeconds"] as? Int ?? 0
        #expect(abs(skew - 600) <= 2, "\(skew)")
        #expect((status["secondsRemaining"] as? Int ?? 999) <= 5)
        server.setBehaviour(.status(503))
        let served = Date()
        try waitUntil("expiry by the cloud's clock", timeout: 10) { try daemon.state() == "expired" }
        #expect(Date().timeIntervalSince(served) < 7)
        #expect(daemon.read("credentials").error == EIO)
        #expect(daemon.log.contains("differs from the cloud's by more than 60 s"))
    }

    @Test func upstreamTenMinutesBehindKeepsTheLocalClock() async throws {
        let server = FakeCredentialServer(lifetime: 3600, clockOffset: -600)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        let status = try daemon.status()
        let skew = status["clockSkewSeconds"] as? Int ?? 0
        #expect(abs(skew + 600) <= 2, "\(skew)")
        // Its hour-long set reads as 50 minutes here, and is served by the local clock.
        let remaining = status["secondsRemaining"] as? Int ?? 0
        #expect(remaining > 2990 && remaining <= 3000, "\(remaining)")
        #expect(status["state"] as? String == "fresh")
        #expect(daemon.read("credentials").bytes != nil)
    }
}
