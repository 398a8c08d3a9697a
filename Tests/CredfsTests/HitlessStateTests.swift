import Foundation
import Testing

/// What a takeover carries besides the credentials (docs/hitless.md), through real mounts:
/// the process-group pins with the generations they hold, and the ECS metadata provider's
/// token and role name. Timings are reported, never asserted.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct HitlessStateTests {
    /// One process group (a script) reads `access_key_id` of generation 1, the credentials
    /// rotate to generation 2, the server is replaced (kill -9 or `credfs upgrade`); then the
    /// same group reads `access_key_secret` and `token` of generation 1 from the successor,
    /// while a new group reads generation 2. The successor asks the upstream nothing.
    @Test(arguments: ["kill -9", "upgrade"])
    func aPinnedGroupKeepsItsGenerationAcrossATakeover(_ takeover: String) async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let logDir = try TempDir()
        defer { logDir.remove() }
        let logFile = logDir.path + "/credfs.log"
        let mount = try Supervised(["--provider", "uri", "--uri", server.url, "--log-file", logFile])
        defer { try? mount.stop() }
        try waitUntil("the first credentials") { (try? mount.status()["generation"] as? Int) == 1 }
        #expect(mount.supervisor > 0)

        // The group: one read, then it waits on a FIFO, then three more reads.
        let dir = mount.dir.path
        let fifo = dir + "/go"
        #expect(mkfifo(fifo, 0o600) == 0)
        let script = """
            m="$1"; d="$2"
            cat "$m/access_key_id" > "$d/id1" && echo ready > "$d/ready"
            read go < "$d/go"
            cat "$m/access_key_secret" > "$d/secret"
            cat "$m/token" > "$d/token"
            cat "$m/access_key_id" > "$d/id2"
            echo done > "$d/done"
            """
        let group = Process()
        group.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
        group.arguments = ["--wait", "sh", "-c", script, "sh", mount.mountpoint, dir]
        group.standardOutput = FileHandle.nullDevice
        group.standardError = FileHandle.nullDevice
        try group.run()
        defer { if group.isRunning { kill(group.processIdentifier, SIGKILL) } }
        try waitUntil("the group's first read") { FileManager.default.fileExists(atPath: dir + "/ready") }
        let pinned = Date()
        #expect(try String(contentsOfFile: dir + "/id1", encoding: .utf8) == FakeCredentialServer.accessKeyId(1))

        // Rotation: generation 2 is served to everyone else.
        server.rotate()
        let old = try mount.serverPID()
        kill(old, SIGHUP)
        try waitUntil("generation 2") { (try? mount.status()["generation"] as? Int) == 2 }
        #expect(readFileAsNewGroup(mount.path("access_key_id")) == FakeCredentialServer.accessKeyId(2))
        try SupervisorStore.waitFor("generation 2 and the group's pin", supervisor: mount.supervisor) { state in
            let credentials = state["credentials"] as? [String: Any]
            let pins = (state["pins"] as? [String: Any])?["pins"] as? [[String: Any]] ?? []
            return credentials?["generation"] as? Int == 2 && pins.contains { $0["generation"] as? Int == 1 }
        }

        let replaced = Date()
        if takeover == "upgrade" {
            let result = try runCredfs(["upgrade", mount.mountpoint, "--binary", Binary.credfs])
            #expect(result.status == 0, "\(result.stderr)")
        } else {
            kill(old, SIGKILL)
        }
        try waitUntil("a successor", timeout: 5) { (try? mount.serverPID()).map { $0 != old && $0 > 0 } ?? false }
        let took = Date().timeIntervalSince(replaced)
        #expect(try mount.status()["restarts"] as? Int == 1)

        // The group goes on: generation 1 from the successor, though 2 is served.
        let go = open(fifo, O_WRONLY)
        #expect(go >= 0)
        _ = "go\n".withCString { write(go, $0, 3) }
        close(go)
        try waitUntil("the group's last reads") { FileManager.default.fileExists(atPath: dir + "/done") }
        let held = Date().timeIntervalSince(pinned)
        #expect(try String(contentsOfFile: dir + "/secret", encoding: .utf8) == FakeCredentialServer.secret(1))
        #expect(try String(contentsOfFile: dir + "/token", encoding: .utf8) == FakeCredentialServer.token(1))
        #expect(try String(contentsOfFile: dir + "/id2", encoding: .utf8) == FakeCredentialServer.accessKeyId(1))
        group.waitUntilExit()

        // A new group gets generation 2, whole.
        #expect(readFileAsNewGroup(mount.path("access_key_id")) == FakeCredentialServer.accessKeyId(2))
        #expect(readFileAsNewGroup(mount.path("access_key_secret")) == FakeCredentialServer.secret(2))
        #expect(readFileAsNewGroup(mount.path("token")) == FakeCredentialServer.token(2))
        #expect(try mount.status()["generation"] as? Int == 2)
        // One request per generation: the successor asked nothing.
        #expect(server.requests == 2)
        let log = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
        #expect(log.contains("took over process-group pins"), "the successor's log")
        for generation in 1...2 {
            #expect(!log.contains(FakeCredentialServer.secret(generation)), "a secret reached the log")
            #expect(!log.contains(FakeCredentialServer.token(generation)), "a token reached the log")
        }
        Timings.report(
            "pinned group across \(takeover): takeover \(Int(took * 1000)) ms, group's reads spanned \(Int(held * 1000)) ms of its 10 s pin"
        )
    }

    /// ECS metadata: the token and the discovered role carry over, so a refresh by the
    /// successor (after kill -9, then after an upgrade) is one GET: no new token request
    /// and no new role lookup.
    @Test func theMetadataTokenAndRoleCarryOver() async throws {
        let fake = FakeMetadataServer(tokenMode: .required)
        try await fake.start()
        let logDir = try TempDir()
        defer { logDir.remove() }
        let logFile = logDir.path + "/credfs.log"
        let mount = try Supervised(
            ["--provider", "ecs-ram-role", "--imds-endpoint", fake.endpoint, "--log-file", logFile],
            environment: Fixtures.environment())
        defer { try? mount.stop() }
        try waitUntil("the first credentials") { (try? mount.status()["generation"] as? Int) == 1 }
        func counts() -> (tokens: Int, roles: Int, gets: Int, tokenless: Int, rejected: Int) {
            fake.read { ($0.tokenPuts, $0.roleListGets, $0.credentialGets, $0.tokenlessGets, $0.rejectedTokens) }
        }
        #expect(counts() == (1, 1, 1, 0, 0))
        // A state pushed during the first fetch has the token but no credentials yet.
        try SupervisorStore.waitFor("generation 1, the metadata token and role", supervisor: mount.supervisor) {
            state in
            let provider = state["provider"] as? [String: Any]
            let values = provider?["values"] as? [String: String] ?? [:]
            return (state["credentials"] as? [String: Any])?["generation"] as? Int == 1
                && provider?["provider"] as? String == "ecs-ram-role" && values["token"] != nil
                && values["role"] == "EcsRamRoleTest"
        }

        for (round, takeover) in ["kill -9", "upgrade"].enumerated() {
            let old = try mount.serverPID()
            let before = counts()
            if takeover == "upgrade" {
                let result = try runCredfs(["upgrade", mount.mountpoint, "--binary", Binary.credfs])
                #expect(result.status == 0, "\(result.stderr)")
            } else {
                kill(old, SIGKILL)
            }
            try waitUntil("a successor after \(takeover)", timeout: 5) {
                (try? mount.serverPID()).map { $0 != old && $0 > 0 } ?? false
            }
            // The takeover itself asks nothing (fresh credentials).
            #expect(counts() == before)
            // The successor's refresh: one GET with the carried token, for the carried role.
            fake.rotate()
            let successor = try mount.serverPID()
            kill(successor, SIGHUP)
            let generation = round + 2
            try waitUntil("generation \(generation)") { (try? mount.status()["generation"] as? Int) == generation }
            let after = counts()
            #expect(after.tokens == before.tokens, "a new token request after \(takeover)")
            #expect(after.roles == before.roles, "a new role lookup after \(takeover)")
            #expect(after.gets == before.gets + 1)
            #expect(after.tokenless == 0 && after.rejected == 0)
            #expect(readFileAsNewGroup(mount.path("token")) == FakeCredentialServer.token(generation))
            Timings.report(
                "ecs-ram-role across \(takeover): token requests \(before.tokens) -> \(after.tokens), role lookups \(before.roles) -> \(after.roles), credential GETs \(before.gets) -> \(after.gets)"
            )
            try SupervisorStore.waitFor("generation \(generation)", supervisor: mount.supervisor) { state in
                (state["credentials"] as? [String: Any])?["generation"] as? Int == generation
                    && state["provider"] != nil
            }
        }
        #expect(fake.read { $0.issued.count } == 1)
        let log = (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
        #expect(log.contains("took over the mount"), "the successors' log")
        #expect(!log.contains("imds-token-"), "the metadata token reached the log")
        #expect(!log.contains("secret-") && !log.contains("token-1-"))
    }
}
