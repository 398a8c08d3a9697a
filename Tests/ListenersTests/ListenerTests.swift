import CredentialCore
import Foundation
import Listeners
import Testing

/// The listeners' server type and handlers, in process, without a mount: who gives way at
/// the connection cap, the deadline for a request head, the carried socket's checks, and
/// the two handlers' answers. Abuse against a real mount: CredfsTests/ListenerAbuseTests.
@Suite(.serialized) struct ListenerTests {
    /// A listener on 127.0.0.1 (a free port) answering 200 "ok" to everything.
    func listener(maxConnections: Int, headTimeout: Duration = .seconds(3)) async throws -> (HTTPListener, Int) {
        let fd = try ListeningSocket.bind(host: "127.0.0.1", port: 0).get()
        var limits = HTTPListener.Limits(maxConnections: maxConnections)
        limits.headTimeout = headTimeout
        let listener = try await HTTPListener.serve(fd: fd, limits: limits) { _ in
            HTTPListener.Response(status: 200, contentType: "text/plain", body: Array("ok\n".utf8))
        }
        return (listener, listener.port)
    }

    @Test func atTheCapTheOldestWaitingConnectionGivesWay() async throws {
        let (listener, port) = try await listener(maxConnections: 4, headTimeout: .seconds(30))
        defer { Task { await listener.close() } }
        var idle: [Int32] = []
        defer { idle.forEach { close($0) } }
        for _ in 0..<4 {
            idle.append(try #require(Client.connect(port: port)))
            // Admitted in this order: each connection is older than the next.
            try await Task.sleep(for: .milliseconds(50))
        }
        let proper = try #require(Client.connect(port: port))
        defer { close(proper) }
        #expect(Client.waitForEOF(idle[0], seconds: 5), "the oldest idle connection was not closed")
        for fd in idle.dropFirst() { #expect(!Client.waitForEOF(fd, seconds: 0), "a newer idle connection was closed") }
        let answer = Client.get(proper, path: "/", seconds: 2)
        #expect(answer?.hasPrefix("HTTP/1.1 200") == true, "\(answer ?? "no answer")")
        #expect(answer?.lowercased().contains("connection: close") == true)
    }

    @Test func aHeadThatTricklesIsCutAtTheDeadline() async throws {
        let (listener, port) = try await listener(maxConnections: 8, headTimeout: .seconds(1))
        defer { Task { await listener.close() } }
        let fd = try #require(Client.connect(port: port))
        defer { close(fd) }
        let started = Date()
        // A byte every 200 ms: never a complete head, never idle for long.
        var closed = false
        for byte in Array("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".utf8)
            + Array(repeating: UInt8(ascii: "a"), count: 100)
        {
            var b = byte
            if send(fd, &b, 1, Int32(MSG_NOSIGNAL)) != 1 || Client.waitForEOF(fd, seconds: 0.2) {
                closed = true
                break
            }
        }
        #expect(closed, "a trickling head was never cut")
        print(
            "listener: a trickling head was cut after \(Int(Date().timeIntervalSince(started) * 1000)) ms (deadline 1 s)"
        )
    }

    @Test func aCarriedSocketIsCheckedAndThePortStaysTaken() throws {
        let fd = try ListeningSocket.bind(host: "127.0.0.1", port: 0).get()
        defer { close(fd) }
        let port = ListeningSocket.port(of: fd)
        #expect(port > 0)
        #expect(ListeningSocket.isListening(fd, host: "127.0.0.1", port: port))
        #expect(ListeningSocket.isListening(fd, host: "127.0.0.1", port: 0))
        #expect(!ListeningSocket.isListening(fd, host: "127.0.0.1", port: port == 65535 ? 1 : port + 1))
        #expect(!ListeningSocket.isListening(fd, host: "127.0.0.2", port: port))
        #expect(!ListeningSocket.isListening(fd, host: "::1", port: port))
        // A second bind of the same port, as another process would try: refused.
        guard case .failure(let error) = ListeningSocket.bind(host: "127.0.0.1", port: port) else {
            Issue.record("the port was bound twice")
            return
        }
        #expect(error.description == String(cString: strerror(EADDRINUSE)))
        // Not a listening socket: a pipe, a bound but not listening socket.
        var pipeFds: [Int32] = [-1, -1]
        #expect(pipe(&pipeFds) == 0)
        defer { pipeFds.forEach { close($0) } }
        #expect(!ListeningSocket.isListening(pipeFds[0], host: "127.0.0.1", port: 0))
    }

    @Test func theURIHandlerAnswers() async throws {
        let provider = FixedProvider()
        let refresher = Refresher(provider: provider, clock: SystemRefreshClock())
        let handler = CredentialsURIHandler(refresher: refresher, host: "127.0.0.1", port: 8080)
        func status(_ headers: [(String, String)], method: String = "GET", uri: String = "/") -> Int {
            handler.respond(
                HTTPListener.Request(method: method, uri: uri, headers: headers.map { (name: $0.0, value: $0.1) })
            ).status
        }
        let host = [("Host", "127.0.0.1:8080")]
        #expect(status(host) == 503)
        await refresher.refresh()
        let answer = handler.respond(HTTPListener.Request(method: "GET", uri: "/", headers: [("Host", "localhost")]))
        #expect(answer.status == 200)
        #expect(answer.body == Render.uriAnswer(FixedProvider.credentials))
        #expect(status(host + [("Origin", "http://evil.example")]) == 403)
        #expect(status([("Host", "evil.example:8080")]) == 403)
        #expect(status([("Host", "127.0.0.1:1")]) == 403)
        #expect(status([]) == 403)
        #expect(status(host + host) == 403)
        #expect(status(host, uri: "/nope") == 404)
        #expect(status(host, method: "POST") == 405)
        #expect(status(host, uri: "/?x=1") == 200)
    }

    @Test func theMetricsHandlerAnswers() {
        let handler = MetricsHandler { Array("credfs_generation 1\n".utf8) }
        let ok = handler.respond(HTTPListener.Request(method: "GET", uri: "/metrics?x"))
        #expect(ok.status == 200 && ok.body == Array("credfs_generation 1\n".utf8))
        #expect(ok.contentType.hasPrefix("text/plain; version=0.0.4"))
        #expect(handler.respond(HTTPListener.Request(method: "HEAD", uri: "/metrics")).status == 200)
        #expect(handler.respond(HTTPListener.Request(method: "POST", uri: "/metrics")).status == 405)
        #expect(handler.respond(HTTPListener.Request(method: "GET", uri: "/")).status == 404)
    }
}

/// A provider that always answers the same hour-long credentials.
final class FixedProvider: CredentialProvider, Sendable {
    static let credentials = Credentials(
        accessKeyId: "STS.NUgYrLnoC37mZZCNnAbez2HDd7", accessKeySecret: "SECRET-listener",
        securityToken: "TOKEN-listener", expiration: Date().addingTimeInterval(3600))
    let name = "fixed"
    func fetch() async throws -> Credentials { Self.credentials }
}

/// Plain blocking sockets with deadlines, for the tests.
enum Client {
    static func connect(port: Int) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(truncatingIfNeeded: port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// Whether the peer closed `fd` within `seconds` (0: already).
    static func waitForEOF(_ fd: Int32, seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        repeat {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = max(0, deadline.timeIntervalSinceNow)
            if poll(&poller, 1, Int32(left * 1000)) > 0 {
                var byte: UInt8 = 0
                let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
                if n == 0 || (n < 0 && errno != EAGAIN) { return true }
                if n > 0 { return false }
            }
        } while Date() < deadline
        return false
    }

    /// Sends a GET and reads the answer until the peer closes, within `seconds` in all.
    static func get(_ fd: Int32, path: String, seconds: Double) -> String? {
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count
        else { return nil }
        let deadline = Date().addingTimeInterval(seconds)
        var answer: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { continue }
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { return answer.isEmpty ? nil : String(decoding: answer, as: UTF8.self) }
            answer += buffer[0..<n]
        }
        return nil
    }
}
