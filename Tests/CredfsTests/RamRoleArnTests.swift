import Foundation
import Testing

@testable import CredentialCore

/// The RPC signature (HMAC-SHA1, version 1.0) checked against vectors computed outside
/// this code base: Python's `hmac`, and the example in Alibaba's RPC signature docs.
@Suite(.stopsFakes) struct RPCSignatureTests {
    /// Python computes the string to sign and the signature from the same parameters, with
    /// its own sorting, `urllib.parse.quote` and `hmac`.
    static let python = """
        import base64, hashlib, hmac, json, sys
        from urllib.parse import quote
        params, secret = json.loads(sys.argv[1]), sys.argv[2]
        enc = lambda s: quote(s, safe="~")
        canonical = "&".join(enc(k) + "=" + enc(v) for k, v in sorted(params.items(), key=lambda kv: kv[0].encode()))
        to_sign = "GET&" + enc("/") + "&" + enc(canonical)
        mac = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
        print(to_sign)
        print(base64.b64encode(mac).decode())
        """

    static let vectors: [(parameters: [(String, String)], secret: String)] = [
        (
            [
                ("Action", "AssumeRole"), ("Format", "JSON"), ("Version", "2015-04-01"),
                ("SignatureMethod", "HMAC-SHA1"), ("SignatureVersion", "1.0"),
                ("SignatureNonce", "6a1e3c1f-1a2b-4c3d-9e8f-0123456789ab"), ("Timestamp", "2024-05-21T09:39:29Z"),
                ("AccessKeyId", "LTAI5tFakeTestKey0001"), ("RoleArn", "acs:ram::1234567890123456:role/credfs-test"),
                ("RoleSessionName", "credfs-test"), ("DurationSeconds", "3600"),
                ("SecurityToken", "CAIS+fake/token==with*odd~chars"), ("ExternalId", "ext id+/=é"),
                (
                    "Policy",
                    #"{"Version":"1","Statement":[{"Effect":"Allow","Action":["oss:Get*"],"Resource":["acs:oss:*:*:bucket/a b"]}]}"#
                ),
            ],
            "fake-secret/with+symbols=and~tilde"
        ),
        (
            [("b", "2"), ("a", "1"), ("A", "upper"), ("a_b", "x"), ("a-b", "y"), ("space", "a b"), ("empty", "")],
            String(repeating: "k", count: 100)  // a key longer than the SHA-1 block
        ),
        ([("Action", "AssumeRole"), ("Unicode", "中文 ü")], ""),
    ]

    static func json(_ parameters: [(String, String)]) throws -> String {
        let object = Dictionary(uniqueKeysWithValues: parameters)
        return String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    @Test(arguments: 0..<vectors.count) func signerMatchesPythonHMAC(_ index: Int) throws {
        let (parameters, secret) = Self.vectors[index]
        let answer = try runPython(Self.python, [try Self.json(parameters), secret]).split(separator: "\n")
        try #require(answer.count == 2)
        let (pythonStringToSign, pythonSignature) = (String(answer[0]), String(answer[1]))
        let swiftStringToSign = RPCSignature.stringToSign(
            canonicalizedQuery: RPCSignature.canonicalizedQuery(parameters))
        let swiftSignature = RPCSignature.sign(parameters, secret: secret)
        print("vector \(index): python \(pythonSignature), credfs \(swiftSignature)")
        #expect(swiftStringToSign == pythonStringToSign)
        #expect(swiftSignature == pythonSignature)
        #expect(
            RPCSignature.signedQuery(parameters, secret: secret).hasSuffix(
                "&Signature=" + ReferenceRPCSigner.encode(pythonSignature)))
        // The fake STS's own checker agrees with Python too.
        let dictionary = Dictionary(uniqueKeysWithValues: parameters)
        #expect(ReferenceRPCSigner.stringToSign(dictionary) == pythonStringToSign)
        #expect(ReferenceRPCSigner.signature(dictionary, secret: secret) == pythonSignature)
    }

    /// The worked example of Alibaba Cloud's RPC signature documentation (ECS
    /// DescribeRegions, AccessKeySecret `testsecret`).
    @Test func publishedExample() {
        let parameters = [
            ("Timestamp", "2016-02-23T12:46:24Z"), ("Format", "XML"), ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"), ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"), ("Version", "2014-05-26"),
            ("SignatureVersion", "1.0"),
        ]
        #expect(
            RPCSignature.stringToSign(canonicalizedQuery: RPCSignature.canonicalizedQuery(parameters))
                == "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod"
                + "%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion"
                + "%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26")
        #expect(RPCSignature.sign(parameters, secret: "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY=")
        #expect(
            ReferenceRPCSigner.signature(Dictionary(uniqueKeysWithValues: parameters), secret: "testsecret")
                == "OLeaidS1JvxuMvnyHOwuJ+uX5qY=")
    }

    /// The fake STS's SHA-1 and HMAC, against FIPS 180 and RFC 2202.
    @Test func referenceHMACKnownAnswers() {
        #expect(
            ReferenceRPCSigner.hex(ReferenceRPCSigner.sha1(Array("abc".utf8)))
                == "a9993e364706816aba3e25717850c26c9cd0d89d")
        #expect(
            ReferenceRPCSigner.hex(
                ReferenceRPCSigner.sha1(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)))
                == "84983e441c3bd26ebaae4aa1f95129e5e54670f1")
        #expect(
            ReferenceRPCSigner.hex(
                ReferenceRPCSigner.hmacSHA1(
                    key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)))
                == "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79")
        #expect(
            ReferenceRPCSigner.hex(
                ReferenceRPCSigner.hmacSHA1(
                    key: [UInt8](repeating: 0xAA, count: 80),
                    message: Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8)))
                == "aa4ae5e15272d00e95705637ce8a3b55ed402112")
    }

    @Test func stringToSignIsCutFromSTSMessages() {
        let message =
            "Specified signature is not matched with our calculation. server string to sign is:GET&%2F&AccessKeyId%3Dx%26SecurityToken%3Dsecret"
        let cut = STSAnswer.withoutStringToSign(message)
        #expect(cut == "Specified signature is not matched with our calculation (string to sign left out)")
        #expect(STSAnswer.withoutStringToSign("You are not authorized.") == "You are not authorized.")
    }
}

/// A source that counts its fetches and always gives the same set.
final class CountingSource: CredentialProvider {
    let name = "counting"
    let credentials: Credentials
    let fetches = Locked(0)
    init(_ credentials: Credentials) { self.credentials = credentials }
    func fetch() async throws -> Credentials {
        fetches.withLock { $0 += 1 }
        return credentials
    }
    var count: Int { fetches.withLock { $0 } }
}

/// `ram-role-arn` against a fake STS on 127.0.0.1 that verifies every signature.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(4)))
struct RamRoleArnTests {
    // MARK: in process

    @Test func everyRequestIsSignedAndTheSourceIsCached() async throws {
        let sourceSet = Credentials(
            accessKeyId: "STS.SOURCExxxxxxxxxxx", accessKeySecret: "source-secret-xyz",
            securityToken: "source-token+/=~*", expiration: Date().addingTimeInterval(3600))
        let sts = Fixtures.fakeAssumeRole([
            "STS.SOURCExxxxxxxxxxx": .init(secret: "source-secret-xyz", token: "source-token+/=~*")
        ]
        )
        try await sts.start()
        let source = CountingSource(sourceSet)
        let provider = RamRoleArnProvider(
            source: source, roleArn: Fixtures.assumedRoleArn, sessionName: "credfs-unit", durationSeconds: 1800,
            externalId: "ext id+/=", policy: Fixtures.policy, endpoint: sts.endpoint, clock: SystemRefreshClock())
        for n in 1...3 {
            let credentials = try await provider.fetch()
            #expect(credentials.accessKeyId == FakeCredentialServer.accessKeyId(n))
            #expect(credentials.securityToken == FakeCredentialServer.token(n))
            sts.rotate()
        }
        #expect(sts.requests == 3)
        #expect(sts.verified == 3, "\(sts.read { $0.seen.map(\.rejected) })")
        #expect(source.count == 1, "the source was fetched \(source.count) times for 3 AssumeRoles")
        #expect(provider.sourceRequests == 1)
        let query = try #require(sts.read { $0.seen.last?.query })
        #expect(query["RoleArn"] == Fixtures.assumedRoleArn)
        #expect(query["RoleSessionName"] == "credfs-unit")
        #expect(query["DurationSeconds"] == "1800")
        #expect(query["ExternalId"] == "ext id+/=")
        #expect(query["Policy"] == Fixtures.policy)
        #expect(query["SecurityToken"] == "source-token+/=~*")
        #expect(query["AccessKeyId"] == "STS.SOURCExxxxxxxxxxx")
        #expect(Set(sts.read { $0.seen.compactMap { $0.query["SignatureNonce"] } }).count == 3)
        print("ram-role-arn (in process): 3 refreshes, \(sts.requests) AssumeRole, \(source.count) source fetch")
    }

    @Test func anExpiringSourceIsRefreshedOnItsOwnSchedule() async throws {
        // A source set that lives 3 s: its refresher wants it replaced after 2 s.
        let sts = Fixtures.fakeAssumeRole([
            "STS.SOURCExxxxxxxxxxx": .init(secret: "source-secret-xyz", token: "tok-tok-tok")
        ])
        try await sts.start()
        final class Expiring: CredentialProvider {
            let name = "expiring"
            let fetches = Locked(0)
            func fetch() async throws -> Credentials {
                fetches.withLock { $0 += 1 }
                return Credentials(
                    accessKeyId: "STS.SOURCExxxxxxxxxxx", accessKeySecret: "source-secret-xyz",
                    securityToken: "tok-tok-tok", expiration: Date().addingTimeInterval(3))
            }
        }
        let source = Expiring()
        let provider = RamRoleArnProvider(
            source: source, roleArn: Fixtures.assumedRoleArn, endpoint: sts.endpoint, clock: SystemRefreshClock())
        _ = try await provider.fetch()
        _ = try await provider.fetch()
        #expect(source.fetches.withLock { $0 } == 1)
        try await Task.sleep(for: .seconds(2.5))
        _ = try await provider.fetch()
        #expect(source.fetches.withLock { $0 } == 2)
        #expect(sts.verified == 3)
    }

    @Test func signatureRefusedNamesTheCodeButNeitherSecretNorToken() async throws {
        // STS knows another secret for the key: SignatureDoesNotMatch, with STS's string to sign.
        let token = "CAISsourceTokenThatMustNotLeak0123456789"
        let sts = Fixtures.fakeAssumeRole([Fixtures.envKey: .init(secret: "the-real-secret", token: token)])
        try await sts.start()
        let source = CountingSource(
            Credentials(
                accessKeyId: Fixtures.envKey, accessKeySecret: Fixtures.envSecret, securityToken: token, expiration: nil
            ))
        let provider = RamRoleArnProvider(
            source: source, roleArn: Fixtures.assumedRoleArn, endpoint: sts.endpoint, clock: SystemRefreshClock())
        do {
            _ = try await provider.fetch()
            Issue.record("AssumeRole succeeded with a wrong signature")
        } catch let error as CredentialError {
            print("ram-role-arn wrong signature: \(error.message)")
            #expect(error.message.contains("SignatureDoesNotMatch"), "\(error.message)")
            #expect(error.message.contains("HTTP 400"), "\(error.message)")
            #expect(!error.message.contains("CAISsource"), "\(error.message)")
            #expect(!error.message.contains(Fixtures.envSecret))
            #expect(!error.message.contains("string to sign is"))
        }
        // The signer was refused: the source is asked again before the next AssumeRole.
        _ = try? await provider.fetch()
        #expect(source.count == 2)
    }

    @Test func aFailingSourceIsNamed() async throws {
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let provider = RamRoleArnProvider(
            source: EnvironmentProvider(environment: [:], clock: SystemRefreshClock()),
            roleArn: Fixtures.assumedRoleArn,
            endpoint: sts.endpoint, clock: SystemRefreshClock())
        do {
            _ = try await provider.fetch()
            Issue.record("fetched without source credentials")
        } catch let error as CredentialError {
            #expect(error.message.hasPrefix("source env: "), "\(error.message)")
            #expect(error.message.contains("ALIBABA_CLOUD_ACCESS_KEY_ID"))
        }
        #expect(sts.requests == 0)
    }

    // MARK: through a real mount

    @Test func mountWithEnvSourceServesRotatingCredentials() async throws {
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let daemon = try Daemon(
            [
                "--provider", "ram-role-arn", "--source-provider", "env", "--role-arn", Fixtures.assumedRoleArn,
                "--sts-endpoint", sts.endpoint, "--role-session-name", "credfs-mount", "--external-id",
                "ext-1", "--policy", Fixtures.policy, "--duration", "900",
            ],
            environment: Fixtures.ramRoleArnEnvironment())
        defer { daemon.stop() }

        try daemon.expectFirstGeneration(provider: "ram-role-arn")
        for n in 2...4 {
            sts.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(n))
            #expect(daemon.readAsNewGroup("token") == FakeCredentialServer.token(n))
        }
        let refreshes = try daemon.generation()
        #expect(sts.requests == refreshes, "\(sts.requests) AssumeRole for \(refreshes) refreshes")
        #expect(sts.verified == refreshes, "\(sts.read { $0.seen.map(\.rejected) })")
        let query = try #require(sts.read { $0.seen.last?.query })
        #expect(query["AccessKeyId"] == Fixtures.envKey)
        #expect(query["SecurityToken"] == nil)
        #expect(query["RoleSessionName"] == "credfs-mount")
        #expect(query["ExternalId"] == "ext-1")
        #expect(query["DurationSeconds"] == "900")
        #expect(query["Policy"] == Fixtures.policy)
        // Every fetch of the source leaves one line tagged source=env in the log.
        let log = daemon.log
        let sourceFetches = log.split(separator: "\n").filter { $0.contains("source=env") }.count
        #expect(sourceFetches == 1, "\(log)")
        #expect(!log.contains(Fixtures.envSecret))
        print(
            "ram-role-arn (env source, mount): \(refreshes) refreshes, \(sts.requests) AssumeRole, "
                + "\(sourceFetches) source read (0 per refresh after the first)")
    }

    @Test func mountWithURISourceFetchesTheSourceOnce() async throws {
        let uri = FakeURIServer()
        let sourceExpiration = ISO8601DateFormatter().string(from: Date().addingTimeInterval(3600))
        uri.set {
            $0.fixed = ("STS.SOURCExxxxxxxxxxx", "source-secret-uri", "source-token-uri-0123456789", sourceExpiration)
        }
        try await uri.start()
        let sts = Fixtures.fakeAssumeRole(
            ["STS.SOURCExxxxxxxxxxx": .init(secret: "source-secret-uri", token: "source-token-uri-0123456789")])
        try await sts.start()
        let daemon = try Daemon(
            [
                "--provider", "ram-role-arn", "--source-provider", "uri", "--uri", uri.url, "--role-arn",
                Fixtures.assumedRoleArn, "--sts-endpoint", sts.endpoint,
            ],
            environment: Fixtures.ramRoleArnEnvironment())
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        for n in 2...4 {
            sts.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
        }
        #expect(sts.requests == 4)
        #expect(sts.verified == 4)
        #expect(uri.requests == 1, "the source URI was asked \(uri.requests) times for 4 refreshes")
        #expect(!daemon.log.contains("source-secret-uri") && !daemon.log.contains("source-token-uri"))
        print("ram-role-arn (uri source, mount): 4 refreshes, \(sts.requests) AssumeRole, \(uri.requests) source GET")
    }

    @Test func stsRefusalSurfacesCodeAndMessageButNoSecret() async throws {
        let sts = Fixtures.fakeAssumeRole()
        sts.set {
            $0.refuse = (
                403, "NoPermission", "You are not authorized to do this action. You should be authorized by RAM."
            )
        }
        try await sts.start()
        let daemon = try Daemon(
            [
                "--provider", "ram-role-arn", "--role-arn", Fixtures.assumedRoleArn, "--sts-endpoint", sts.endpoint,
                "--initial-wait", "1",
            ],
            environment: Fixtures.ramRoleArnEnvironment())
        defer { daemon.stop() }
        try waitUntil("a failure in status") { try daemon.status()["lastError"] is String }
        let lastError = try daemon.status()["lastError"] as? String ?? ""
        print("ram-role-arn refused: \(lastError)")
        #expect(lastError.contains("AssumeRole"), "\(lastError)")
        #expect(lastError.contains("HTTP 403"), "\(lastError)")
        #expect(lastError.contains("NoPermission"), "\(lastError)")
        #expect(lastError.contains("You are not authorized to do this action."), "\(lastError)")
        #expect(!lastError.contains(Fixtures.envSecret))
        #expect(!daemon.log.contains(Fixtures.envSecret))
        #expect(try daemon.state() == "pending")
        #expect(daemon.read("credentials").error == EIO)
    }

    @Test func chaosMatrixKeepsLastGoodAndRecovers() async throws {
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let daemon = try Daemon(
            ["--provider", "ram-role-arn", "--role-arn", Fixtures.assumedRoleArn, "--sts-endpoint", sts.endpoint],
            environment: Fixtures.ramRoleArnEnvironment())
        defer { daemon.stop() }
        // STS: 5 s connect / 10 s read, so a hung STS is given up after about 10 s.
        try runChaosMatrix(daemon: daemon, fake: sts, hangBound: 11.5)
        // Every request that reached STS was correctly signed, faults included.
        #expect(sts.verified == sts.requests, "\(sts.read { $0.seen.map(\.rejected) })")
        #expect(!daemon.log.contains(Fixtures.envSecret))
    }

    @Test func flagsAreValidated() throws {
        let environment = Fixtures.ramRoleArnEnvironment()
        let base = ["mount", "/tmp/credfs-never", "--provider", "ram-role-arn"]
        func refused(_ extra: [String], _ text: String, env: [String: String]? = nil) throws {
            let result = try runCredfs(base + extra, environment: env ?? environment)
            #expect(result.status == 64, "\(extra): \(result.stderr)")
            #expect(result.stderr.contains(text), "\(extra): \(result.stderr)")
        }
        try refused([], "--role-arn")
        // Refused as they are parsed, with the sources it takes listed (CLIMessageTests).
        try refused(
            ["--role-arn", Fixtures.assumedRoleArn, "--source-provider", "auto"], "is invalid for '--source-provider")
        try refused(
            ["--role-arn", Fixtures.assumedRoleArn, "--source-provider", "ram-role-arn"],
            "is invalid for '--source-provider")
        try refused(["--role-arn", Fixtures.assumedRoleArn, "--source-provider", "process"], "--command")
        try refused(["--role-arn", Fixtures.assumedRoleArn, "--source-provider", "uri"], "--uri")
        try refused(["--role-arn", Fixtures.assumedRoleArn, "--duration", "899"], "--duration")
        // With an OIDC source, ALIBABA_CLOUD_ROLE_ARN is the OIDC role: --role-arn is needed.
        try refused(
            ["--source-provider", "oidc-role-arn"], "--role-arn",
            env: Fixtures.ramRoleArnEnvironment([
                "ALIBABA_CLOUD_ROLE_ARN": Fixtures.assumedRoleArn, "ALIBABA_CLOUD_OIDC_PROVIDER_ARN": "p",
                "ALIBABA_CLOUD_OIDC_TOKEN_FILE": "/tmp/x",
            ]))
        let other = try runCredfs(
            ["mount", "/tmp/credfs-never", "--provider", "env", "--source-provider", "env"], environment: environment)
        #expect(other.status == 64)
        #expect(other.stderr.contains("only for --provider ram-role-arn"))
        #expect(!FileManager.default.fileExists(atPath: "/tmp/credfs-never"))
    }
}
