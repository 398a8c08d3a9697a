import Foundation
import Testing

@testable import CredentialCore

/// Which requests go through a proxy (``HTTPProxy``), and real requests through a fake
/// proxy on 127.0.0.1. Non-loopback names end in `.invalid`; the fake proxy carries them
/// to fakes on 127.0.0.1, so nothing leaves the machine.
@Suite(.stopsFakes, .serialized, .timeLimit(.minutes(2)))
struct ProxyTests {
    static let remoteURI = "http://credentials.proxy-test.invalid:8080/credentials?token=secret-in-query"
    static let sts = "https://sts.proxy-test.invalid"

    // MARK: the decision

    @Test func environmentInEitherCase() {
        let upper = HTTPProxy.fromEnvironment(["HTTPS_PROXY": "http://up:1", "HTTP_PROXY": "http://up:2"])
        #expect(upper.proxy(for: Self.sts) == "http://up:1")
        #expect(upper.proxy(for: "http://example.invalid/x") == "http://up:2")
        let lower = HTTPProxy.fromEnvironment(["https_proxy": "http://low:1", "http_proxy": "http://low:2"])
        #expect(lower.proxy(for: Self.sts) == "http://low:1")
        #expect(lower.proxy(for: "http://example.invalid/x") == "http://low:2")
        // Both spellings: the lower-case one wins, as in curl and most tools.
        let both = HTTPProxy.fromEnvironment(["https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:1"])
        #expect(both.proxy(for: Self.sts) == "http://low:1")
        // The scheme picks the variable: no HTTP_PROXY for https, none for http from HTTPS_PROXY.
        let httpsOnly = HTTPProxy.fromEnvironment(["HTTPS_PROXY": "http://up:1"])
        #expect(httpsOnly.proxy(for: "http://example.invalid/") == nil)
        #expect(HTTPProxy.fromEnvironment(["HTTP_PROXY": "http://up:2"]).proxy(for: Self.sts) == nil)
        #expect(HTTPProxy.fromEnvironment(["HTTPS_PROXY": "  "]).proxy(for: Self.sts) == nil)
        #expect(HTTPProxy.fromEnvironment([:]).proxy(for: Self.sts) == nil)
    }

    @Test func loopbackAndMetadataNeverGoThroughAProxy() {
        let proxy = HTTPProxy(http: "http://p:3128", https: "http://p:3128")
        for url in [
            "http://127.0.0.1:8080/credentials", "http://127.1.2.3/", "http://localhost:9/x",
            "http://LOCALHOST./x", "http://api.localhost/x", "http://[::1]:8080/", "http://[::ffff:127.0.0.1]/",
            "http://100.100.100.200/latest/api/token", "http://169.254.169.254/", "https://127.0.0.1/",
            "http://[fe80::1]/",
        ] {
            #expect(proxy.proxy(for: url) == nil, "\(url)")
        }
        #expect(proxy.proxy(for: "http://100.100.100.201/") == "http://p:3128")
        #expect(proxy.proxy(for: "http://128.0.0.1/") == "http://p:3128")
        // A metadata fetcher never asks, whatever the environment says.
        let metadata = HTTPFetcher(timeouts: .metadata, proxy: .never)
        #expect(metadata.proxy(for: "http://metadata.proxy-test.invalid/") == nil)
        let leaky = HTTPFetcher(timeouts: .metadata, proxy: .settings(proxy))
        #expect(leaky.proxy(for: "http://metadata.proxy-test.invalid/") == "http://p:3128")
        #expect(
            EcsMetadataProvider(
                endpoint: "http://metadata.proxy-test.invalid", http: leaky, clock: SystemRefreshClock()
            ).http.proxyPolicy == .never)
        #expect(
            AutoProvider(environment: [:], metadataHTTP: leaky, clock: SystemRefreshClock()).ecs?.http.proxyPolicy
                == .never)
    }

    @Test func noProxyForms() {
        func proxied(_ url: String, noProxy: String) -> Bool {
            HTTPProxy.fromEnvironment(["https_proxy": "http://p:1", "http_proxy": "http://p:1", "no_proxy": noProxy])
                .proxy(for: url) != nil
        }
        #expect(!proxied(Self.sts, noProxy: "*"))
        #expect(!proxied(Self.sts, noProxy: "proxy-test.invalid"))
        #expect(!proxied(Self.sts, noProxy: ".proxy-test.invalid"))
        #expect(!proxied(Self.sts, noProxy: "*.proxy-test.invalid"))
        #expect(!proxied(Self.sts, noProxy: "example.com, sts.proxy-test.invalid"))
        #expect(!proxied(Self.sts, noProxy: "STS.PROXY-TEST.INVALID"))
        #expect(!proxied(Self.sts, noProxy: "sts.proxy-test.invalid:443"))
        #expect(proxied(Self.sts, noProxy: "sts.proxy-test.invalid:8443"))
        #expect(proxied(Self.sts, noProxy: "test.invalid.example"))
        #expect(proxied(Self.sts, noProxy: "xproxy-test.invalid"))  // a suffix, not a domain
        #expect(proxied(Self.sts, noProxy: ""))
        #expect(!proxied("http://10.1.2.3/", noProxy: "10.0.0.0/8"))
        #expect(proxied("http://11.1.2.3/", noProxy: "10.0.0.0/8"))
        #expect(!proxied("http://10.1.2.3/", noProxy: "10.1.2.3"))
        // Upper case NO_PROXY too.
        let upper = HTTPProxy.fromEnvironment(["HTTPS_PROXY": "http://p:1", "NO_PROXY": "proxy-test.invalid"])
        #expect(upper.proxy(for: Self.sts) == nil)
        // The fetcher asks the same resolver.
        let fetcher = HTTPFetcher(
            timeouts: .standard,
            proxy: .settings(HTTPProxy.fromEnvironment(["HTTPS_PROXY": "http://p:1", "no_proxy": ".invalid"])))
        #expect(fetcher.proxy(for: Self.sts) == nil)
    }

    // MARK: through the fake proxy

    @Test func credentialsURIOnARemoteNameGoesThroughTheProxy() async throws {
        let upstream = FakeCredentialServer()
        try await upstream.start()
        let proxy = try FakeProxy(forwardPort: upstream.port)
        defer { proxy.stop() }
        let http = HTTPFetcher(
            timeouts: .standard,
            proxy: .settings(.fromEnvironment(["HTTP_PROXY": proxy.url, "NO_PROXY": "example.com,.other.invalid"])))
        let credentials = try await URIProvider(url: Self.remoteURI, http: http, clock: SystemRefreshClock()).fetch()
        #expect(credentials.accessKeyId == FakeCredentialServer.accessKeyId(1))
        #expect(proxy.seen == [.init(method: "GET", target: Self.remoteURI)])
        #expect(upstream.requests == 1)
    }

    @Test func loopbackCredentialsURINeverGoesThroughTheProxy() async throws {
        let upstream = FakeCredentialServer()
        try await upstream.start()
        let proxy = try FakeProxy(forwardPort: upstream.port)
        defer { proxy.stop() }
        let http = HTTPFetcher(
            timeouts: .standard, proxy: .settings(.fromEnvironment(["HTTP_PROXY": proxy.url, "http_proxy": proxy.url])))
        for url in [upstream.url, "http://localhost:\(upstream.port)/credentials"] {
            _ = try await URIProvider(url: url, http: http, clock: SystemRefreshClock()).fetch()
        }
        #expect(proxy.seen.isEmpty)
        #expect(upstream.requests == 2)
    }

    @Test func metadataNeverGoesThroughTheProxy() async throws {
        let metadata = FakeMetadataServer()
        try await metadata.start()
        let proxy = try FakeProxy(forwardPort: nil)
        defer { proxy.stop() }
        // Even handed a fetcher that would use the proxy, the provider goes direct.
        let leaky = HTTPFetcher(timeouts: .metadata, proxy: .settings(.fromEnvironment(["HTTP_PROXY": proxy.url])))
        _ = try await EcsMetadataProvider(endpoint: metadata.endpoint, http: leaky, clock: SystemRefreshClock()).fetch()
        #expect(metadata.requests >= 2)
        #expect(proxy.seen.isEmpty)
    }

    @Test func assumeRoleOverHTTPGoesThroughTheProxyWithItsSignature() async throws {
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let proxy = try FakeProxy(forwardPort: sts.http.port)
        defer { proxy.stop() }
        let http = HTTPFetcher(timeouts: .standard, proxy: .settings(.fromEnvironment(["http_proxy": proxy.url])))
        let provider = RamRoleArnProvider(
            source: EnvironmentProvider(environment: Fixtures.ramRoleArnEnvironment(), clock: SystemRefreshClock()),
            roleArn: Fixtures.assumedRoleArn,
            endpoint: "http://sts.proxy-test.invalid", http: http, clock: SystemRefreshClock())
        let credentials = try await provider.fetch()
        #expect(credentials.accessKeyId == FakeCredentialServer.accessKeyId(1))
        #expect(sts.verified == 1)
        let seen = proxy.seen
        #expect(seen.count == 1)
        #expect(seen.first?.method == "GET")
        #expect(seen.first?.target.hasPrefix("http://sts.proxy-test.invalid/?") == true)
    }

    @Test func assumeRoleOverHTTPSTunnelsThroughTheProxy() async throws {
        let proxy = try FakeProxy(forwardPort: nil)
        defer { proxy.stop() }
        let http = HTTPFetcher(timeouts: .standard, proxy: .settings(.fromEnvironment(["HTTPS_PROXY": proxy.url])))
        let provider = RamRoleArnProvider(
            source: EnvironmentProvider(environment: Fixtures.ramRoleArnEnvironment(), clock: SystemRefreshClock()),
            roleArn: Fixtures.assumedRoleArn,
            endpoint: Self.sts, http: http, clock: SystemRefreshClock())
        do {
            _ = try await provider.fetch()
            Issue.record("the fake proxy refuses every CONNECT")
        } catch let error as CredentialError {
            // One line, naming the endpoint without the signed query.
            #expect(!error.message.contains("\n"))
            #expect(error.message.contains("https://sts.proxy-test.invalid"))
            #expect(!error.message.contains("Signature"))
            #expect(!error.message.contains(Fixtures.envKey))
        }
        #expect(proxy.seen == [.init(method: "CONNECT", target: "sts.proxy-test.invalid:443")])
    }

    // MARK: the client's other promises

    @Test func dateHeaderIsParsed() async throws {
        let server = try FakeProxy(forwardPort: nil)
        defer { server.stop() }
        let response = try await HTTPFetcher(timeouts: .standard, proxy: .never).send(url: server.url + "/date")
        #expect(response.status == 200)
        #expect(response.body == Array("ok".utf8))
        #expect(response.date == Date(timeIntervalSince1970: FakeProxy.dateSeconds))
        // No Date header (NIO's server sends none): nil, not a guess.
        let upstream = FakeCredentialServer()
        try await upstream.start()
        #expect(try await HTTPFetcher(timeouts: .standard, proxy: .never).send(url: upstream.url).date == nil)
    }

    @Test func errorsAreOneLineWithoutQueryOrUserinfo() async throws {
        let fetcher = HTTPFetcher(timeouts: .metadata, proxy: .never)
        let port = unusedLoopbackPort()
        do {
            _ = try await fetcher.send(url: "http://user:pa55word@127.0.0.1:\(port)/x?secret=abc#frag")
            Issue.record("port \(port) answered")
        } catch {
            #expect(!error.message.contains("\n"))
            #expect(!error.message.contains("abc"))
            #expect(!error.message.contains("pa55word"))
            #expect(error.message.contains("http://127.0.0.1:\(port)/x"))
        }
        do {
            _ = try await fetcher.send(url: "http://127.0.0.1:\(port)/", headers: [("X-Bad", "a\r\nInjected: 1")])
            Issue.record("a header with a line break was sent")
        } catch {
            #expect(error.message.contains("line break"))
        }
    }
}

/// TLS: peer verification is on, against the system trust store only.
@Suite(.stopsFakes, .timeLimit(.minutes(1)))
struct HTTPFetcherTLSTests {
    static let server = """
        import http.server, ssl, sys
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
            def log_message(self, *a): pass
        s = http.server.HTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
        s.socket = ctx.wrap_socket(s.socket, server_side=True)
        print(s.server_address[1], flush=True)
        s.timeout = 20
        s.handle_request()
        """

    @Test func aSelfSignedCertificateIsRefused() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let made = try runProcess(
            "/usr/bin/openssl",
            [
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", dir.path + "/key.pem", "-out",
                dir.path + "/cert.pem",
            ])
        try #require(made.status == 0, "openssl: \(made.stderr)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", Self.server, dir.path + "/cert.pem", dir.path + "/key.pem"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }
        var line = ""
        while !line.hasSuffix("\n") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line += String(decoding: chunk, as: UTF8.self)
        }
        let port = try #require(Int(line.trimmingCharacters(in: .whitespacesAndNewlines)))
        do {
            _ = try await HTTPFetcher(timeouts: .standard, proxy: .never).send(url: "https://127.0.0.1:\(port)/")
            Issue.record("a self-signed certificate was accepted")
        } catch {
            print("self-signed: \(error.message)")
            #expect(error.message.contains("TLS") || error.message.contains("SSL"))
        }
    }
}
