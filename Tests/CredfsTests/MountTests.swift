import CFuse3
import Foundation
import Testing

/// The expected `credentials` bytes for a fake generation, written out by hand from the
/// contract's layout (docs/contract.md, "Files"), not by the renderer under test.
func expectedCredentialsFile(generation g: Int, expiration: String) -> String {
    "{\n\t\"AccessKeyId\": \"\(FakeCredentialServer.accessKeyId(g))\",\n"
        + "\t\"AccessKeySecret\": \"\(FakeCredentialServer.secret(g))\",\n"
        + "\t\"SecurityToken\": \"\(FakeCredentialServer.token(g))\",\n"
        + "\t\"Expiration\": \"\(expiration)\"\n}\n"
}

/// Real mounts against a fake credentials URI on 127.0.0.1. Serialized: each test owns a
/// daemon, and the machine has two cores.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct MountTests {
    @Test func everyFileHasItsContentModeAndTruthfulSize() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }

        let credentials = daemon.read("credentials")
        let expiration = try #require(daemon.read("expiration").text)
        #expect(expiration.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ/) != nil)
        #expect(credentials.text == expectedCredentialsFile(generation: 1, expiration: expiration))
        #expect(daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(1))
        #expect(daemon.read("access_key_secret").text == FakeCredentialServer.secret(1))
        #expect(daemon.read("token").text == FakeCredentialServer.token(1))

        let modes: [String: mode_t] = [
            "credentials": 0o400, "access_key_id": 0o400, "access_key_secret": 0o400, "token": 0o400,
            "expiration": 0o444, "status": 0o444, "env": 0o400, "config.json": 0o400,
        ]
        let listed = try FileManager.default.contentsOfDirectory(atPath: daemon.mountpoint).sorted()
        #expect(listed == modes.keys.sorted())
        for (name, mode) in modes {
            var st = stat()
            #expect(stat(daemon.path(name), &st) == 0)
            #expect(st.st_mode & 0o7777 == mode, "\(name)")
            #expect(st.st_mode & S_IFMT == S_IFREG, "\(name)")
            if name != "status" {
                #expect(Int(st.st_size) == daemon.read(name).bytes?.count, "st_size of \(name)")
            }
        }
        let status = try daemon.status()
        #expect(status["state"] as? String == "fresh")
        #expect(status["provider"] as? String == "uri")
        #expect(status["generation"] as? Int == 1)
        #expect(status["accessKeyId"] as? String == "STS.F*********A")
        #expect(status["expiration"] as? String == expiration)
        #expect(status["upstreamRequests"] as? Int == 1)
        #expect(server.requests == 1)
    }

    @Test func unknownNamesAndEveryWriteFailWithoutChangingAnything() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        let before = daemon.read("credentials")
        let file = daemon.path("credentials")

        #expect(daemon.read("nope").error == ENOENT)
        #expect(daemon.read("Credentials").error == ENOENT)

        func fails(_ what: String, _ result: Int32) {
            let code = errno
            #expect(result == -1, "\(what) succeeded")
            #expect(code == EROFS || code == EACCES, "\(what): errno \(code)")
        }
        fails("open for writing", open(file, O_WRONLY))
        fails("open for append", open(file, O_RDWR | O_APPEND))
        fails("open with O_TRUNC", open(file, O_RDONLY | O_TRUNC))
        fails("create", open(daemon.path("new"), O_WRONLY | O_CREAT, 0o600))
        fails("mkdir", mkdir(daemon.path("dir"), 0o700))
        fails("unlink", unlink(file))
        fails("rename", rename(file, daemon.path("moved")))
        fails("chmod", chmod(file, 0o644))
        fails("chown", chown(file, 1, 1))
        fails("truncate", truncate(file, 0))
        fails("symlink", symlink("/etc/passwd", daemon.path("link")))
        fails("link", link(file, daemon.path("hard")))
        fails("setxattr", setxattr(file, "user.test", "x", 1, 0))

        #expect(daemon.read("credentials") == before)
        #expect(daemon.read("moved").error == ENOENT)
        #expect(daemon.read("new").error == ENOENT)
        var st = stat()
        stat(file, &st)
        #expect(st.st_mode & 0o7777 == 0o400)
    }

    @Test func anOpenKeepsItsGenerationAndTheNextOpenSeesTheNewOne() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        let firstExpiration = try #require(daemon.read("expiration").text)

        let fd = open(daemon.path("credentials"), O_RDONLY)
        #expect(fd >= 0)
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 10)
        #expect(read(fd, &head, 10) == 10)

        server.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("generation 2") { try daemon.generation() == 2 }

        // The held descriptor goes on with generation 1, to the end.
        let rest = readAll(fd, chunk: 7)
        let whole = String(decoding: head + (rest.bytes ?? []), as: UTF8.self)
        #expect(whole == expectedCredentialsFile(generation: 1, expiration: firstExpiration))

        // A new open sees generation 2, and stat agrees with it. (Field files are read from
        // a new process group: this one is pinned to generation 1 for 10 s.)
        let secondExpiration = try #require(daemon.readAsNewGroup("expiration"))
        let fresh = daemon.read("credentials")
        #expect(fresh.text == expectedCredentialsFile(generation: 2, expiration: secondExpiration))
        #expect(daemon.readAsNewGroup("token") == FakeCredentialServer.token(2))
        var st = stat()
        stat(daemon.path("credentials"), &st)
        #expect(Int(st.st_size) == fresh.bytes?.count)
        #expect(server.requests == 2)
    }

    @Test func upstreamDownFromTheStart() async throws {
        let server = FakeCredentialServer()
        server.setBehaviour(.status(500))
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--initial-wait", "1"])
        defer { daemon.stop() }

        let started = Date()
        let read = daemon.read("credentials")
        let waited = Date().timeIntervalSince(started)
        #expect(read.error == EIO)
        #expect(waited >= 0.9 && waited < 5, "waited \(waited) s")
        #expect(daemon.read("token").error == EIO)

        try waitUntil("a failure in status") { try daemon.status()["lastError"] is String }
        let status = try daemon.status()
        #expect(status["state"] as? String == "pending")
        #expect((status["lastError"] as? String)?.contains("HTTP 500") == true)
        #expect((status["lastError"] as? String)?.contains("fake upstream is failing") == true)
        #expect(try runCredfs(["status", daemon.mountpoint]).status == 1)

        // It recovers on the next good answer.
        server.setBehaviour(.serve)
        daemon.signal(SIGHUP)
        try waitUntil("credentials after recovery") { daemon.read("credentials").bytes != nil }
        #expect(daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(1))
        #expect(try runCredfs(["status", daemon.mountpoint]).status == 0)
    }

    @Test func upstreamDownLaterServesLastGoodUntilExpiryThenEIOThenRecovers() async throws {
        let server = FakeCredentialServer(lifetime: 5)
        try await server.start()
        // Refresh when 3 s are left, so the failing refreshes start well before expiry.
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--refresh-before", "3"])
        defer { daemon.stop() }
        let good = daemon.read("credentials")
        #expect(good.bytes != nil)
        let expiration = try #require(daemon.read("expiration").text)
        let expiresAt = try #require(ISO8601DateFormatter().date(from: expiration))
        server.setBehaviour(.status(503))

        try waitUntil("a failed refresh") { try daemon.state() == "stale" }
        // Static stability: the last good credentials, unchanged, until they expire.
        #expect(Date() < expiresAt)
        #expect(daemon.read("credentials") == good)

        try waitUntil("expiry", timeout: 10) { Date() >= expiresAt }
        #expect(daemon.read("credentials").error == EIO)
        #expect(daemon.read("access_key_id").error == EIO)
        let status = try daemon.status()
        #expect(status["state"] as? String == "expired")
        #expect((status["consecutiveFailures"] as? Int ?? 0) >= 1)
        #expect((status["lastError"] as? String)?.contains("HTTP 503") == true)

        server.setBehaviour(.serve)
        server.rotate()
        // Backoff after a few failures is at most 8 s here (1, 2, 4, 8 s with jitter).
        try waitUntil("recovery", timeout: 15) {
            daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(2)
        }
        #expect(try daemon.state() == "fresh")
    }

    @Test func environmentCredentialsWithoutTokenOrExpiration() async throws {
        var environment = Host.hermeticEnvironment
        environment["ALIBABA_CLOUD_ACCESS_KEY_ID"] = "LTAI5tEnvironmentKey01"
        environment["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = "env-secret-\"quoted\"\\slash"
        environment["ALIBABA_CLOUD_SECURITY_TOKEN"] = nil
        let daemon = try Daemon(["--provider", "env"], environment: environment)
        defer { daemon.stop() }

        #expect(
            daemon.read("credentials").text
                == "{\n\t\"AccessKeyId\": \"LTAI5tEnvironmentKey01\",\n\t\"AccessKeySecret\": \"env-secret-\\\"quoted\\\"\\\\slash\"\n}\n"
        )
        #expect(daemon.read("token").error == ENOENT)
        #expect(daemon.read("expiration").error == ENOENT)
        let listed = try FileManager.default.contentsOfDirectory(atPath: daemon.mountpoint).sorted()
        #expect(
            listed == [
                "access_key_id", "access_key_secret", "config.json", "credentials", "env", "status",
            ])
        #expect(try daemon.state() == "fresh")
    }

    @Test func demoProviderServesTheLayoutAndRotates() async throws {
        let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3"])
        defer { daemon.stop() }
        let first = try #require(daemon.read("credentials").text)
        let pattern =
            /\{\n\t"AccessKeyId": "STS\.DEMO\w+",\n\t"AccessKeySecret": "[^"]+",\n\t"SecurityToken": "[^"]+",\n\t"Expiration": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"\n\}\n/
        #expect(first.wholeMatch(of: pattern) != nil)
        try waitUntil("a demo rotation", timeout: 10) { try daemon.generation() >= 2 }
        #expect(daemon.read("credentials").text != first)
    }
}
