import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1

/// A small GET/PUT helper over AsyncHTTPClient with per-source timeouts and a body limit.
/// Its errors are one line and name the URL without its query string (which may carry
/// a secret).
public final class HTTPFetcher: Sendable {
    public struct Timeouts: Sendable {
        public var connect: TimeAmount
        public var read: TimeAmount
        /// Credentials URI and STS: 5 s connect, 10 s read.
        public static let standard = Timeouts(connect: .seconds(5), read: .seconds(10))
        /// ECS metadata service: 1 s connect, 1 s read.
        public static let metadata = Timeouts(connect: .seconds(1), read: .seconds(1))
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        /// The answer's `Date` header (IMF-fixdate), if it had a valid one: the server's clock.
        public var date: Date? = nil
    }

    let client: HTTPClient
    let timeouts: Timeouts

    public init(timeouts: Timeouts) {
        self.timeouts = timeouts
        var configuration = HTTPClient.Configuration(
            redirectConfiguration: .disallow,
            timeout: .init(connect: timeouts.connect, read: timeouts.read))
        configuration.decompression = .disabled
        self.client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    deinit {
        try? client.syncShutdown()
    }

    /// Sends one request. Bodies over ``AnswerParser/maxBodyBytes`` are cut off and
    /// reported as one byte too long, so the parser rejects them.
    public func send(
        _ method: HTTPMethod = .GET, url: String, headers: [(String, String)] = [], body: [UInt8]? = nil
    ) async throws(CredentialError) -> Response {
        var request = HTTPClientRequest(url: url)
        request.method = method
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
        let where_ = Self.redacted(url)
        do {
            let deadline = NIODeadline.now() + timeouts.connect + timeouts.read
            let response = try await client.execute(request, deadline: deadline)
            var body: [UInt8] = []
            for try await chunk in response.body {
                body.append(contentsOf: chunk.readableBytesView)
                if body.count > AnswerParser.maxBodyBytes { break }
            }
            let date = response.headers.first(name: "Date").flatMap(HTTPDate.parse)
            ServerClockProbe.report(date)
            return Response(status: Int(response.status.code), body: body, date: date)
        } catch let error as HTTPClientError {
            throw CredentialError("\(method) \(where_): \(Self.describe(error))")
        } catch {
            throw CredentialError("\(method) \(where_): \(Self.describe(error))")
        }
    }

    static func redacted(_ url: String) -> String {
        guard var parts = URLComponents(string: url) else { return "(unparseable URL)" }
        parts.query = nil
        parts.user = nil
        parts.password = nil
        parts.fragment = nil
        return parts.string ?? "(unparseable URL)"
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            switch error {
            case .connectTimeout: return "connect timed out"
            case .readTimeout: return "read timed out"
            case .deadlineExceeded: return "no answer in time"
            case .remoteConnectionClosed: return "connection closed before the answer was complete"
            default: return "\(error)"
            }
        }
        if let error = error as? IOError { return error.description }
        if let error = error as? HTTPParserError, error == .invalidEOFState {
            return "connection closed before the answer was complete"
        }
        let text = "\(error)"
        if text.contains("connectTimeout") { return "connect timed out" }
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        return text
    }
}
