import Foundation
import Testing

@testable import CredentialCore

@Suite struct RendererTests {
    func text(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self) }

    func jsonObject(_ bytes: [UInt8]) throws -> [String: Any] {
        let object = try JSONSerialization.jsonObject(with: Data(bytes))
        return try #require(object as? [String: Any])
    }

    @Test func credentialsFileMatchesThePAILayoutByteForByte() {
        let c = Credentials(
            accessKeyId: "STS.NUgYrLnoC37mZZCNnAbez2HDd7", accessKeySecret: "3ZxVqYwP9d",
            securityToken: "DFE32GkQxyz==", expiration: Fixture.expiration)
        let expected =
            "{\n\t\"AccessKeyId\": \"STS.NUgYrLnoC37mZZCNnAbez2HDd7\",\n\t\"AccessKeySecret\": \"3ZxVqYwP9d\",\n\t\"SecurityToken\": \"DFE32GkQxyz==\",\n\t\"Expiration\": \"2024-05-21T10:39:29Z\"\n}\n"
        #expect(Render.credentialsFile(c) == Array(expected.utf8))
    }

    @Test func accessKeyPairLeavesOutTokenAndExpiration() throws {
        let c = Fixture.accessKeyPair(id: "LTAI5tAbCdEfGhIjKlMn", secret: "s3cr3t")
        let expected =
            "{\n\t\"AccessKeyId\": \"LTAI5tAbCdEfGhIjKlMn\",\n\t\"AccessKeySecret\": \"s3cr3t\"\n}\n"
        let bytes = Render.credentialsFile(c)
        #expect(bytes == Array(expected.utf8))
        let parsed = try jsonObject(bytes)
        #expect(parsed.count == 2)
    }

    @Test func tokenWithoutExpirationKeepsLayout() {
        let c = Credentials(
            accessKeyId: "LTAI5tAbCdEfGhIjKlMn", accessKeySecret: "s", securityToken: "t", expiration: nil
        )
        let expected =
            "{\n\t\"AccessKeyId\": \"LTAI5tAbCdEfGhIjKlMn\",\n\t\"AccessKeySecret\": \"s\",\n\t\"SecurityToken\": \"t\"\n}\n"
        #expect(Render.credentialsFile(c) == Array(expected.utf8))
    }

    @Test func jsonStringEscapesWhatJSONRequires() {
        #expect(Render.jsonString("a\"b") == #""a\"b""#)
        #expect(Render.jsonString("a\\b") == #""a\\b""#)
        #expect(Render.jsonString("a\nb") == #""a\nb""#)
        #expect(Render.jsonString("a\tb") == #""a\tb""#)
        #expect(Render.jsonString("a\rb") == #""a\rb""#)
        #expect(Render.jsonString("a\u{01}b") == #""a\u0001b""#)
        #expect(Render.jsonString("a\u{1F}b") == #""a\u001fb""#)
        #expect(Render.jsonString("a\u{08}\u{0C}b") == #""a\b\fb""#)
        #expect(Render.jsonString("/") == #""/""#)
        // Non-ASCII passes through untouched as UTF-8.
        #expect(Render.jsonString("密钥é🚀") == "\"密钥é🚀\"")
        #expect(Render.jsonString("") == "\"\"")
    }

    @Test func escapedCredentialsFileParsesBackToTheSameValues() throws {
        let id = "STS.id\"with\\quote"
        let secret = "se\"cr\\et\nline\ttab\u{01}ctl 密钥é🚀"
        let token = "tok'en/\u{1F}\u{7F}"
        let c = Credentials(
            accessKeyId: id, accessKeySecret: secret, securityToken: token, expiration: Fixture.expiration
        )
        let bytes = Render.credentialsFile(c)
        let rendered = text(bytes)
        #expect(rendered.contains(#""AccessKeySecret": "se\"cr\\et\nline\ttab\u0001ctl 密钥é🚀","#))
        // Every value stays on its own line: escaping kept the layout intact.
        #expect(rendered.split(separator: "\n", omittingEmptySubsequences: false).count == 7)
        let parsed = try jsonObject(bytes)
        #expect(parsed["AccessKeyId"] as? String == id)
        #expect(parsed["AccessKeySecret"] as? String == secret)
        #expect(parsed["SecurityToken"] as? String == token)
        #expect(parsed["Expiration"] as? String == "2024-05-21T10:39:29Z")
    }

    @Test func fieldViewsAreExactWithoutTrailingNewline() {
        let views = CredentialViews(Fixture.sts())
        #expect(views.accessKeyId == Array(Fixture.accessKeyId.utf8))
        #expect(views.accessKeySecret == Array(Fixture.secret.utf8))
        #expect(views.token == Array(Fixture.token.utf8))
        #expect(views.expiration == Array("2024-05-21T10:39:29Z".utf8))
        for bytes in [views.accessKeyId, views.accessKeySecret, views.token!, views.expiration!] {
            #expect(bytes.last != UInt8(ascii: "\n"))
        }
        #expect(views.credentials == Render.credentialsFile(Fixture.sts()))
        #expect(views.credentials.last == UInt8(ascii: "\n"))
    }

    @Test func fieldViewsOfAnAccessKeyPairHaveNoTokenNorExpiration() {
        let views = CredentialViews(Fixture.accessKeyPair())
        #expect(views.token == nil)
        #expect(views.expiration == nil)
        #expect(Render.expirationFile(Fixture.accessKeyPair()) == nil)
    }

    @Test(arguments: [
        "2024-05-21T10:39:29Z",
        "2024-05-21T10:39:29.750Z",
        "2024-05-21T10:39:29.999999Z",
        "2024-05-21T18:39:29+08:00",
        "2024-05-21T18:39:29.5+08:00",
        "2024-05-21T05:09:29-05:30",
    ])
    func expirationIsWholeSecondsUTC(source: String) throws {
        let parsed = try #require(Timestamp.parse(source))
        let c = Credentials(
            accessKeyId: "id", accessKeySecret: "s", securityToken: "t", expiration: parsed)
        #expect(Render.expirationFile(c) == Array("2024-05-21T10:39:29Z".utf8))
        #expect(c.expiration == Fixture.expiration)
        #expect(
            text(Render.credentialsFile(c)).contains("\t\"Expiration\": \"2024-05-21T10:39:29Z\"\n}"))
    }

    @Test func expirationFromAParsedAnswerDropsTheFraction() throws {
        let body =
            #"{"Code":"Success","AccessKeyId":"id","AccessKeySecret":"s","SecurityToken":"t","Expiration":"2024-05-21T10:39:29.750Z"}"#
        let c = try AnswerParser.parseFlat(status: 200, body: Array(body.utf8), now: Fixture.t0)
        #expect(Render.expirationFile(c) == Array("2024-05-21T10:39:29Z".utf8))
    }

    @Test func envFileIsSafeToSource() throws {
        let id = "STS.id with spaces"
        let secret = "it's a 'secret' with $HOME `id` \"dq\" \\ and ; rm -rf /; 密钥"
        let token = "tok'en\nsecond line"
        let c = Credentials(
            accessKeyId: id, accessKeySecret: secret, securityToken: token, expiration: Fixture.expiration
        )
        let bytes = Render.envFile(c)
        #expect(text(bytes).hasPrefix("export ALIBABA_CLOUD_ACCESS_KEY_ID='STS.id with spaces'\n"))
        #expect(
            text(bytes).contains(
                "export ALIBABA_CLOUD_ACCESS_KEY_SECRET='it'\\''s a '\\''secret'\\'' with"))

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "credfs-env-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("env")
        try Data(bytes).write(to: file)

        func sourced(_ variable: String) throws -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/sh")
            process.arguments = ["-c", ". \"$1\"; printf %s \"$\(variable)\"", "sh", file.path]
            process.environment = ["PATH": "/usr/bin:/bin", "HOME": "/nonexistent"]
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            return String(decoding: data, as: UTF8.self)
        }
        #expect(try sourced("ALIBABA_CLOUD_ACCESS_KEY_ID") == id)
        #expect(try sourced("ALIBABA_CLOUD_ACCESS_KEY_SECRET") == secret)
        #expect(try sourced("ALIBABA_CLOUD_SECURITY_TOKEN") == token)
    }

    @Test func envFileOfAnAccessKeyPairHasTwoLines() {
        let bytes = Render.envFile(Fixture.accessKeyPair(id: "LTAI5tAbCdEfGhIjKlMn", secret: "abc"))
        #expect(
            text(bytes)
                == "export ALIBABA_CLOUD_ACCESS_KEY_ID='LTAI5tAbCdEfGhIjKlMn'\nexport ALIBABA_CLOUD_ACCESS_KEY_SECRET='abc'\n"
        )
    }

    @Test func processOutputIsTheCLIExternalFormat() throws {
        let sts = try jsonObject(Render.processOutput(Fixture.sts()))
        #expect(sts["mode"] as? String == "StsToken")
        #expect(sts["access_key_id"] as? String == Fixture.accessKeyId)
        #expect(sts["access_key_secret"] as? String == Fixture.secret)
        #expect(sts["sts_token"] as? String == Fixture.token)
        #expect(sts["expiration"] as? String == "2024-05-21T10:39:29Z")
        let ak = try jsonObject(Render.processOutput(Fixture.accessKeyPair()))
        #expect(ak["mode"] as? String == "AK")
        #expect(ak["sts_token"] == nil)
        #expect(ak["expiration"] == nil)
    }

    /// The keys of a status without serving facts (the refresher's own).
    static let statusKeys = [
        "state", "provider", "generation", "accessKeyId", "expiration", "secondsRemaining",
        "lastRefresh", "nextRefresh", "consecutiveFailures", "lastError", "upstreamRequests", "mountedAt",
        "version", "clockSkewSeconds",
    ]

    /// The keys of a daemon's status: the serving facts the executable supplies in their places.
    static let servedStatusKeys = [
        "state", "provider", "generation", "accessKeyId", "expiration", "secondsRemaining",
        "lastRefresh", "nextRefresh", "consecutiveFailures", "lastError", "upstreamRequests", "mountedAt",
        "pid", "restarts", "carriedState", "version", "clockSkewSeconds", "mode", "parkedRequests", "openRequests",
        "versionedInodes", "openHandles",
    ]

    /// The keys of a rendered status file, in the order they appear.
    func keysInOrder(_ bytes: [UInt8]) -> [String] {
        text(bytes).split(separator: "\n").compactMap { line -> String? in
            guard line.hasPrefix("  \""), let end = line.dropFirst(3).firstIndex(of: "\"") else {
                return nil
            }
            return String(line[line.index(line.startIndex, offsetBy: 3)..<end])
        }
    }

    @Test func statusFileHasSpecKeysInOrderAndNoSecret() throws {
        let mountedAt = Fixture.t0.addingTimeInterval(-60)
        var machine = RefreshMachine(policy: RefreshPolicy(), now: Fixture.t0)
        _ = machine.begin(at: Fixture.t0)
        machine.succeeded(Fixture.sts(), at: Fixture.t0, jitter: 0)
        let later = Fixture.t0.addingTimeInterval(2700)
        _ = machine.begin(at: later)
        machine.failed("uri: HTTP 503", at: later, jitter: 0)

        let snapshot = StatusSnapshot(
            machine: machine, provider: "uri", mountedAt: mountedAt, version: "1.2.3", now: later)
        let bytes = Render.statusFile(snapshot)
        let rendered = text(bytes)

        #expect(keysInOrder(bytes) == Self.statusKeys)
        #expect(!rendered.contains(Fixture.secret))
        #expect(!rendered.contains(Fixture.token))
        #expect(!rendered.contains(Fixture.accessKeyId))
        #expect(!rendered.contains("must-never-leak"))

        let json = try jsonObject(bytes)
        #expect(Set(json.keys) == Set(Self.statusKeys))
        #expect(json["state"] as? String == "stale")
        #expect(json["provider"] as? String == "uri")
        #expect(json["generation"] as? Int == 1)
        #expect(json["accessKeyId"] as? String == "STS.N*********7")
        #expect(json["expiration"] as? String == "2024-05-21T10:39:29Z")
        #expect(json["secondsRemaining"] as? Int == 900)
        #expect(json["lastRefresh"] as? String == Timestamp.format(Fixture.t0))
        #expect(json["nextRefresh"] as? String == Timestamp.format(later))  // 0.1 s later, whole seconds
        #expect(json["consecutiveFailures"] as? Int == 1)
        #expect(json["lastError"] as? String == "uri: HTTP 503")
        #expect(json["upstreamRequests"] as? Int == 2)
        #expect(json["mountedAt"] as? String == Timestamp.format(mountedAt))
        #expect(json["version"] as? String == "1.2.3")
    }

    @Test func servingFactsAreRenderedAsSupplied() throws {
        var machine = RefreshMachine(policy: RefreshPolicy(), now: Fixture.t0)
        _ = machine.begin(at: Fixture.t0)
        machine.succeeded(Fixture.sts(), at: Fixture.t0, jitter: 0)
        var snapshot = StatusSnapshot(
            machine: machine, provider: "uri", mountedAt: Fixture.t0, version: "1.2.3", now: Fixture.t0)
        snapshot.serving = ServingFacts(
            pid: 4242, restarts: 3, carriedState: "behind", mode: "kernel-cache", parkedRequests: 2, openRequests: 17)
        let bytes = Render.statusFile(snapshot)
        #expect(keysInOrder(bytes) == Self.servedStatusKeys)
        let json = try jsonObject(bytes)
        #expect(json["pid"] as? Int == 4242)
        #expect(json["restarts"] as? Int == 3)
        #expect(json["carriedState"] as? String == "behind")
        #expect(json["mode"] as? String == "kernel-cache")
        #expect(json["parkedRequests"] as? Int == 2)
        #expect(json["openRequests"] as? Int == 17)
        #expect(text(Render.metrics(snapshot, pinnedGroups: 0)).contains("\ncredfs_restarts_total 3\n"))
    }

    @Test func statusFileWhilePendingUsesNulls() throws {
        let machine = RefreshMachine(policy: RefreshPolicy(), now: Fixture.t0)
        let snapshot = StatusSnapshot(
            machine: machine, provider: "auto", mountedAt: Fixture.t0, version: "dev", now: Fixture.t0)
        let bytes = Render.statusFile(snapshot)
        #expect(keysInOrder(bytes) == Self.statusKeys)
        let json = try jsonObject(bytes)
        #expect(json["state"] as? String == "pending")
        #expect(json["generation"] as? Int == 0)
        #expect(json["accessKeyId"] is NSNull)
        #expect(json["expiration"] is NSNull)
        #expect(json["secondsRemaining"] is NSNull)
        #expect(json["lastRefresh"] is NSNull)
        #expect(json["lastError"] is NSNull)
        #expect(json["nextRefresh"] as? String == Timestamp.format(Fixture.t0))
    }

    @Test func maskKeepsFiveAndLastCharacters() {
        #expect(Credentials.mask("STS.NUgYrLnoC37mZZCNnAbez2HDd7") == "STS.N*********7")
        #expect(Credentials.mask("LTAI5tAbCdEfGhIjKlMn") == "LTAI5*********n")
        #expect(Credentials.mask("short") == "***")
        #expect(Credentials.mask("") == "***")
        // The masked form does not reveal the length.
        #expect(
            Credentials.mask("STS.N1234567").count
                == Credentials.mask(String(repeating: "x", count: 60)).count)
    }
}
