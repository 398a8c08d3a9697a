import Foundation
import Testing

/// Issue 5 through real mounts: pinned field reads, the `env` and `config.json` views,
/// and the loopback credentials URI.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct ClientViewTests {
    /// Runs `script` with a shell (/bin/sh unless told), capturing its output.
    func shell(_ script: String, shell: String = "/bin/sh", environment: [String: String]? = nil)
        throws -> CommandResult
    {
        try runProcess(shell, ["-c", script], environment: environment)
    }

    @Test func shortLivedProcessGroupsNeverPairFieldsFromTwoGenerations() async throws {
        // A rotation about every second; each set stays valid 3 s after the next one came,
        // so a slow run under load does not see its pinned set expire half-way.
        let server = FakeCredentialServer(lifetime: 4, rotateOnEachRequest: true)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--refresh-before", "3"])
        defer { daemon.stop() }
        let first = try daemon.generation()

        // Each run is its own process group (setsid); the pauses make straddling a
        // rotation likely, so mixing would show if pinning did not hold.
        let runs = 300
        let m = daemon.mountpoint
        let script = """
            for i in $(seq \(runs)); do
              setsid sh -c 'cat \(m)/access_key_id; echo; sleep 0.02; cat \(m)/access_key_secret; echo; sleep 0.02; cat \(m)/token; echo'
            done
            """
        // Meanwhile, two long-lived groups: one reads again after its 10 s pin ended, one
        // after its pinned credentials (4 s lifetime) expired but within the 10 s.
        let outlived = Task.detached {
            try self.shell("setsid sh -c 'cat \(m)/access_key_id; echo; sleep 10.5; cat \(m)/access_key_id'")
        }
        let expired = Task.detached {
            try self.shell(
                "setsid sh -c 'cat \(m)/access_key_id; echo; cat \(m)/expiration; echo; sleep 5; cat \(m)/access_key_id; echo; cat \(m)/expiration'"
            )
        }
        let result = try shell(script)
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(
            String.init)
        var triples = 0
        var mixed = 0
        var generations = Set<Int>()
        var index = 0
        while index + 2 < lines.count {
            let gs = lines[index..<index + 3].map(FakeCredentialServer.generation(of:))
            if let g = gs[0], gs.allSatisfy({ $0 == g }) { generations.insert(g) } else { mixed += 1 }
            triples += 1
            index += 3
        }
        let rotations = try daemon.generation() - first
        #expect(triples == runs)
        #expect(
            mixed == 0,
            "\(mixed) of \(triples) runs paired fields from two generations; stderr: \(result.stderr.prefix(500))")
        #expect(rotations >= 3, "only \(rotations) rotations during the runs")
        #expect(generations.count >= 3)
        print("pinning: \(runs) process groups, \(rotations) rotations, \(mixed) mixed")

        let long = try await outlived.value.stdout.split(separator: "\n").map {
            FakeCredentialServer.generation(of: String($0))
        }
        #expect(long.count == 2 && long[0] != nil && long[1] != nil && long[1]! > long[0]!, "after 10 s: \(long)")
        let lines2 = try await expired.value.stdout.split(separator: "\n").map(String.init)
        #expect(lines2.count == 4)
        if lines2.count == 4 {
            let before = FakeCredentialServer.generation(of: lines2[0])
            let after = FakeCredentialServer.generation(of: lines2[2])
            let firstExpiry = ISO8601DateFormatter().date(from: lines2[1])
            let secondExpiry = ISO8601DateFormatter().date(from: lines2[3])
            // The pinned set expired within the group's 10 s: it was not served again.
            #expect(before != nil && after != nil && after! > before!, "\(lines2)")
            #expect(firstExpiry != nil && secondExpiry != nil && secondExpiry! > firstExpiry!)
        }
    }

    @Test func oneGroupKeepsItsGenerationAcrossARotationWhileOthersMoveOn() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        // This test process is one process group: its first field read pins it.
        #expect(daemon.read("access_key_id").text == FakeCredentialServer.accessKeyId(1))
        server.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("generation 2") { try daemon.generation() == 2 }
        // Same group, within 10 s: still generation 1, for every field.
        #expect(daemon.read("access_key_secret").text == FakeCredentialServer.secret(1))
        #expect(daemon.read("token").text == FakeCredentialServer.token(1))
        // The single-read views are never pinned.
        #expect(daemon.read("credentials").text?.contains(FakeCredentialServer.secret(2)) == true)
        // Another process group reads generation 2.
        let other = try shell("setsid cat \(daemon.path("token"))")
        #expect(other.stdout == FakeCredentialServer.token(2))
    }

    @Test(arguments: ["/bin/sh", "/bin/bash"])
    func sourcingEnvYieldsTheExactValues(shellPath: String) async throws {
        // Values hold only bytes 0x21-0x7E (issue 10: a space or a line break is a rejected
        // answer), but every shell metacharacter among them must survive `. env`.
        let secret = #"it's"a"secret$HOME,`ticks`,\and\n;|&*?~#!<>{}[]=$(id)"#
        let token = "tok'en'''"
        var environment = Host.hermeticEnvironment
        environment["ALIBABA_CLOUD_ACCESS_KEY_ID"] = "LTAI5t-id$PATH"
        environment["ALIBABA_CLOUD_ACCESS_KEY_SECRET"] = secret
        environment["ALIBABA_CLOUD_SECURITY_TOKEN"] = token
        let daemon = try Daemon(["--provider", "env"], environment: environment)
        defer { daemon.stop() }
        let clean = ["PATH": "/usr/bin:/bin"]
        let result = try shell(
            #". \#(daemon.path("env")); printf '%s\n%s\n%s' "$ALIBABA_CLOUD_ACCESS_KEY_ID" "$ALIBABA_CLOUD_ACCESS_KEY_SECRET" "$ALIBABA_CLOUD_SECURITY_TOKEN""#,
            shell: shellPath, environment: clean)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == "LTAI5t-id$PATH\n\(secret)\n\(token)")
    }

    @Test func configJSONIsAnAliyunCLIProfile() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--region", "cn-shanghai"])
        defer { daemon.stop() }
        let bytes = try #require(daemon.read("config.json").bytes)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(object["current"] as? String == "default")
        let profiles = try #require(object["profiles"] as? [[String: String]])
        #expect(
            profiles == [
                [
                    "name": "default", "mode": "StsToken",
                    "access_key_id": FakeCredentialServer.accessKeyId(1),
                    "access_key_secret": FakeCredentialServer.secret(1),
                    "sts_token": FakeCredentialServer.token(1),
                    "region_id": "cn-shanghai",
                ]
            ])
        var st = stat()
        stat(daemon.path("config.json"), &st)
        #expect(st.st_mode & 0o7777 == 0o400 && Int(st.st_size) == bytes.count)
    }

    @Test func serveURIAnswersFromTheSameCache() async throws {
        let server = FakeCredentialServer(lifetime: 3600)
        server.setBehaviour(.status(500))
        try await server.start()
        let port = 20000 + Int(getpid() % 10000)
        let daemon = try Daemon([
            "--provider", "uri", "--uri", server.url, "--serve-uri", "127.0.0.1:\(port)",
            "--initial-wait", "0",
        ])
        defer { daemon.stop() }
        let url = "http://127.0.0.1:\(port)/"

        let unavailable = try shell("curl -s -w '\\n%{http_code}' \(url)")
        #expect(unavailable.stdout.hasSuffix("\n503"), "\(unavailable.stdout)")
        #expect(unavailable.stdout.contains(#""Code":"CredentialsUnavailable""#))

        server.setBehaviour(.serve)
        daemon.signal(SIGHUP)
        try waitUntil("credentials") { daemon.read("expiration").bytes != nil }
        let expiration = try #require(daemon.read("expiration").text)
        let answer = try shell("curl -s \(url)")
        #expect(
            answer.stdout
                == #"{"Code":"Success","AccessKeyId":"\#(FakeCredentialServer.accessKeyId(1))","AccessKeySecret":"\#(FakeCredentialServer.secret(1))","SecurityToken":"\#(FakeCredentialServer.token(1))","Expiration":"\#(expiration)"}"#
                + "\n")
        let requestsBefore = server.requests
        for _ in 0..<20 { _ = try shell("curl -s \(url)") }
        #expect(server.requests == requestsBefore, "URI reads caused upstream requests")
        let missing = try shell("curl -s -o /dev/null -w '%{http_code}' \(url)nope")
        #expect(missing.stdout == "404")
    }

    /// The loopback URI refuses what a browser page or a flood could send (issue 10).
    @Test func serveURIRefusesForeignHostsOriginsBigHeadsAndFloods() async throws {
        let port = 21000 + Int(getpid() % 10000)
        let daemon = try Daemon(["--provider", "demo", "--serve-uri", "127.0.0.1:\(port)"])
        defer { daemon.stop() }
        let url = "http://127.0.0.1:\(port)/"
        try waitUntil("credentials") { daemon.read("expiration").bytes != nil }
        func code(_ options: String) throws -> String {
            try shell("curl -s -o /dev/null -w '%{http_code}' \(options) \(url)").stdout
        }
        #expect(try code("") == "200")
        #expect(try code("-H 'Host: localhost:\(port)'") == "200")
        #expect(try code("-H 'Host: evil.example:\(port)'") == "403")
        #expect(try code("-H 'Host: 127.0.0.1'") == "200", "the Python SDK sends no port")
        #expect(try code("-H 'Host: 127.0.0.1:1'") == "403")
        #expect(try code("-H 'Host: localhost.evil.example'") == "403")
        #expect(try code("-H 'Origin: http://evil.example'") == "403")
        let big = String(repeating: "x", count: 20_000)
        #expect(try code("-H 'X-Big: \(big)'") == "000", "a 20 KiB head is cut off")

        // 100 idle connections: at most 64 are kept (the oldest give way to newer ones at
        // once), and the kept ones are closed when no request head comes within 3 s. Then
        // the server still answers.
        let flood = try shell(
            """
            python3 - <<'PY'
            import socket, time, select
            conns = [socket.create_connection(("127.0.0.1", \(port))) for _ in range(100)]
            def closed(c, wait):
                r, _, _ = select.select([c], [], [], wait)
                return bool(r) and c.recv(1) == b""
            # Closed at once: polled for, within 5 s (the kept ones close after 10 s idle).
            deadline = time.time() + 5
            refused = sum(closed(c, 0) for c in conns)
            while refused < 36 and time.time() < deadline:
                time.sleep(0.02)
                refused = sum(closed(c, 0) for c in conns)
            print("refused", refused)
            deadline = time.time() + 20
            while time.time() < deadline and not all(closed(c, 0.05) for c in conns):
                pass
            print("idle-closed", sum(closed(c, 0) for c in conns))
            PY
            """)
        let facts = flood.stdout.split(separator: "\n").map { $0.split(separator: " ") }
        let refused = facts.first { $0.first == "refused" }.flatMap { Int($0[1]) } ?? -1
        let idleClosed = facts.first { $0.first == "idle-closed" }.flatMap { Int($0[1]) } ?? -1
        #expect(refused >= 36, "\(flood.stdout) \(flood.stderr)")
        #expect(idleClosed == 100, "\(flood.stdout) \(flood.stderr)")
        #expect(try code("") == "200")
    }
}
