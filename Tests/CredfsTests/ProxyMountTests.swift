import Foundation
import Testing

/// Proxies end to end through a daemon (the other daemon tests strip them): `HTTP_PROXY`,
/// `HTTPS_PROXY` and `NO_PROXY` in the daemon's environment, a fake proxy on 127.0.0.1 that
/// carries what it is asked to fakes on 127.0.0.1. Remote names end in `.invalid` and are
/// only ever named to the proxy: nothing resolves them or leaves the machine.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct ProxyMountTests {
    static let remoteURI = "http://credentials.proxy-test.invalid:8080/credentials"

    /// This machine's host name when /etc/hosts maps it to a loopback address: a name that
    /// is not loopback by its spelling (so the proxy rules apply to it) and that resolves
    /// without DNS to the fakes.
    static let localName: String? = {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, 255) == 0 else { return nil }
        let name = String(cString: buffer)
        guard !name.isEmpty, !name.lowercased().hasSuffix("localhost"), let hosts = readProcFile("/etc/hosts")
        else { return nil }
        for line in hosts.split(separator: "\n") {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.count >= 2, fields[0].hasPrefix("127."), fields.dropFirst().contains(Substring(name)) {
                return name
            }
        }
        return nil
    }()
    static let localNameReason: Comment = "needs a host name that /etc/hosts maps to 127.x"

    func environment(_ proxy: [String: String], base: [String: String] = Host.hermeticEnvironment)
        -> [String: String]
    {
        base.merging(proxy) { $1 }
    }

    @Test func aRemoteCredentialsURIGoesThroughHTTPProxy() async throws {
        let upstream = FakeCredentialServer()
        try await upstream.start()
        let proxy = try FakeProxy(forwardPort: upstream.port)
        defer { proxy.stop() }
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", Self.remoteURI],
            environment: environment(["HTTP_PROXY": proxy.url, "NO_PROXY": "example.com,.other.invalid"]))
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        upstream.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("generation 2") { try daemon.generation() == 2 }
        #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(2))
        #expect(proxy.seen == Array(repeating: .init(method: "GET", target: Self.remoteURI), count: 2))
        #expect(upstream.requests == 2)
    }

    @Test func assumeRoleGoesThroughTheProxySigned() async throws {
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let proxy = try FakeProxy(forwardPort: sts.http.port)
        defer { proxy.stop() }
        let daemon = try Daemon(
            [
                "--provider", "ram-role-arn", "--source-provider", "env", "--role-arn", Fixtures.assumedRoleArn,
                "--sts-endpoint", "http://sts.proxy-test.invalid",
            ],
            environment: environment(["http_proxy": proxy.url], base: Fixtures.ramRoleArnEnvironment()))
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        #expect(sts.verified == 1, "\(sts.read { $0.seen.map(\.rejected) })")
        #expect(proxy.seen.count == 1)
        #expect(proxy.seen.first?.target.hasPrefix("http://sts.proxy-test.invalid/?") == true)
    }

    @Test func httpsSTSTunnelsThroughHTTPSProxy() async throws {
        // The fake proxy refuses every CONNECT (no TLS peer behind it): what counts is that
        // the daemon asked it, and for the right host.
        let proxy = try FakeProxy(forwardPort: nil)
        defer { proxy.stop() }
        let daemon = try Daemon(
            [
                "--provider", "ram-role-arn", "--source-provider", "env", "--role-arn", Fixtures.assumedRoleArn,
                "--sts-endpoint", "https://sts.proxy-test.invalid", "--initial-wait", "1",
            ],
            environment: environment(["HTTPS_PROXY": proxy.url], base: Fixtures.ramRoleArnEnvironment()))
        defer { daemon.stop() }
        try waitUntil("a failure in status") { try daemon.status()["lastError"] is String }
        let lastError = try daemon.status()["lastError"] as? String ?? ""
        #expect(lastError.contains("https://sts.proxy-test.invalid"), "\(lastError)")
        #expect(!lastError.contains(Fixtures.envKey) && !lastError.contains("Signature"))
        #expect(proxy.seen.first == .init(method: "CONNECT", target: "sts.proxy-test.invalid:443"))
    }

    @Test func aLoopbackCredentialsURINeverGoesThroughTheProxy() async throws {
        let upstream = FakeCredentialServer()
        try await upstream.start()
        let proxy = try FakeProxy(forwardPort: upstream.port)
        defer { proxy.stop() }
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", upstream.url],
            environment: environment(["HTTP_PROXY": proxy.url, "http_proxy": proxy.url, "HTTPS_PROXY": proxy.url]))
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        #expect(proxy.seen.isEmpty)
        #expect(upstream.requests == 1)
    }

    @Test(.enabled(if: localName != nil, localNameReason))
    func noProxyNamesGoDirectAndOthersThroughTheProxy() async throws {
        let name = try #require(Self.localName)
        let upstream = FakeCredentialServer()
        try await upstream.start()
        let proxy = try FakeProxy(forwardPort: upstream.port)
        defer { proxy.stop() }
        let uri = "http://\(name):\(upstream.port)/credentials"
        // The same URI: through the proxy, then, named in NO_PROXY, direct.
        for (noProxy, proxied) in [("example.com", true), ("example.com,\(name)", false)] {
            let before = proxy.seen.count
            let daemon = try Daemon(
                ["--provider", "uri", "--uri", uri],
                environment: environment(["HTTP_PROXY": proxy.url, "NO_PROXY": noProxy]))
            defer { daemon.stop() }
            try waitUntil("generation 1") { try daemon.generation() >= 1 }
            #expect(
                proxy.seen.count - before == (proxied ? 1 : 0), "NO_PROXY=\(noProxy): the proxy saw \(proxy.seen)")
        }
    }

    @Test(.enabled(if: localName != nil, localNameReason))
    func theMetadataServiceNeverGoesThroughTheProxy() async throws {
        let name = try #require(Self.localName)
        let metadata = FakeMetadataServer()
        try await metadata.start()
        // Were it used, this proxy would carry the requests to the same fake.
        let proxy = try FakeProxy(forwardPort: metadata.http.port)
        defer { proxy.stop() }
        let daemon = try Daemon(
            ["--provider", "ecs-ram-role", "--imds-endpoint", "http://\(name):\(metadata.http.port)"],
            environment: environment(
                ["HTTP_PROXY": proxy.url, "http_proxy": proxy.url], base: Fixtures.environment()))
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        #expect(metadata.requests >= 2)
        #expect(proxy.seen.isEmpty, "\(proxy.seen)")
    }
}
