import Foundation
import Synchronization

/// A minimal HTTP proxy on 127.0.0.1 that records every request it is asked to carry.
///
/// - `GET http://host:port/path` (absolute form): recorded, then carried to the fake
///   upstream on 127.0.0.1 `forwardPort`, whatever host the request named, so no traffic
///   ever leaves the machine; the upstream's answer (Content-Length framed) goes back.
/// - `CONNECT host:port`: recorded and refused (403): no TLS peer exists here.
/// - `GET /path` (origin form, asked of it as a server): `200 ok` with RFC 9110's example
///   `Date: Sun, 06 Nov 1994 08:49:37 GMT`.
final class FakeProxy: Sendable {
    struct Seen: Sendable, Equatable {
        var method: String
        var target: String
    }

    static let date = "Sun, 06 Nov 1994 08:49:37 GMT"
    static let dateSeconds: TimeInterval = 784_111_777

    private let listener: Int32
    let port: Int
    let forwardPort: Int?
    private let log = Mutex<[Seen]>([])
    private let stopped = Atomic<Bool>(false)

    var url: String { "http://127.0.0.1:\(port)" }
    var seen: [Seen] { log.withLock { $0 } }

    init(forwardPort: Int?) throws {
        self.forwardPort = forwardPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw HarnessError(description: "socket: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            close(fd)
            throw HarnessError(description: "bind/listen: \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.start()
    }

    func stop() {
        guard !stopped.exchange(true, ordering: .sequentiallyConsistent) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    private func acceptLoop() {
        while !stopped.load(ordering: .sequentiallyConsistent) {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let thread = Thread { [self] in
                handle(client)
                close(client)
            }
            thread.start()
        }
    }

    /// Reads one HTTP message head and its Content-Length body.
    static func readMessage(_ fd: Int32) -> (head: String, body: [UInt8])? {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var headEnd: Int?
        while headEnd == nil {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return nil }
            data += buffer[0..<n]
            if let range = data.firstRange(of: Array("\r\n\r\n".utf8)) { headEnd = range.upperBound }
            if data.count > 1 << 20 { return nil }
        }
        guard let headEnd else { return nil }
        let head = String(decoding: data[..<headEnd], as: UTF8.self)
        var length = 0
        for line in head.split(separator: "\r\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" {
                length = Int(parts[1].trimmingCharacters(in: .whitespaces)) ?? 0
            }
        }
        var body = Array(data[headEnd...])
        while body.count < length {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { return nil }
            body += buffer[0..<n]
        }
        return (head, body)
    }

    static func sendAll(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            offset += n
        }
    }

    private func handle(_ client: Int32) {
        guard let (head, body) = Self.readMessage(client) else { return }
        var lines = head.components(separatedBy: "\r\n")
        let requestLine = lines.removeFirst().split(separator: " ").map(String.init)
        guard requestLine.count == 3 else { return }
        let (method, target) = (requestLine[0], requestLine[1])
        log.withLock { $0.append(Seen(method: method, target: target)) }
        if method == "CONNECT" {
            Self.sendAll(client, Array("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n".utf8))
            return
        }
        if target.hasPrefix("/") {
            Self.sendAll(
                client, Array("HTTP/1.1 200 OK\r\nDate: \(Self.date)\r\nContent-Length: 2\r\n\r\nok".utf8))
            return
        }
        guard let forwardPort, let url = URLComponents(string: target), url.scheme == "http" else {
            Self.sendAll(client, Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".utf8))
            return
        }
        // Carry it to the fake upstream in origin form.
        let path = url.percentEncodedPath.isEmpty ? "/" : url.percentEncodedPath
        let query = url.percentEncodedQuery.map { "?" + $0 } ?? ""
        var forwarded = "\(method) \(path)\(query) HTTP/1.1\r\n"
        for line in lines where !line.isEmpty && !line.lowercased().hasPrefix("proxy-") {
            forwarded += line + "\r\n"
        }
        forwarded += "\r\n"
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard upstream >= 0 else { return }
        defer { close(upstream) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(forwardPort).bigEndian
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else {
            Self.sendAll(client, Array("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n".utf8))
            return
        }
        Self.sendAll(upstream, Array(forwarded.utf8) + body)
        guard let (answerHead, answerBody) = Self.readMessage(upstream) else { return }
        Self.sendAll(client, Array(answerHead.utf8) + answerBody)
    }
}
