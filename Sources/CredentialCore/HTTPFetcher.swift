import CCurl
import FoundationEssentials
import Glibc
import Posix

/// A small GET/PUT/POST helper over libcurl with per-source timeouts and a body limit.
///
/// - TLS with the system trust store (Debian's libcurl with OpenSSL), peer and host verified.
/// - No redirects, no decompression, `http` and `https` only.
/// - Bodies over ``AnswerParser/maxBodyBytes`` are cut off in the write callback and
///   reported as one byte too long, so the parser rejects them.
/// - Proxies only as ``HTTPProxy`` decides; libcurl never reads the environment itself.
/// - Each transfer runs `curl_easy_perform` on a thread of its own, never on the Swift
///   cooperative pool (fetches are rare: at most one in flight per source).
/// - libcurl is loaded (dlopen) by the first request, not at exec (`CCurl`).
///
/// Its errors are one line and name the URL without its query string, user or password
/// (a query may carry a secret).
public final class HTTPFetcher: Sendable {
    public enum Method: String, Sendable {
        case GET, PUT, POST
    }

    public struct Timeouts: Sendable, Equatable {
        public var connect: Duration
        public var read: Duration
        public init(connect: Duration, read: Duration) {
            self.connect = connect
            self.read = read
        }
        /// Credentials URI and STS: 5 s connect, 10 s read.
        public static let standard = Timeouts(connect: .seconds(5), read: .seconds(10))
        /// ECS metadata service: 1 s connect, 1 s read.
        public static let metadata = Timeouts(connect: .seconds(1), read: .seconds(1))
    }

    /// Whether requests may go through a proxy.
    public enum ProxyPolicy: Sendable, Equatable {
        /// Never (the ECS metadata service: a proxy must never see its traffic).
        case never
        /// As ``HTTPProxy`` resolves these settings (loopback hosts still go direct).
        case settings(HTTPProxy)

        /// `HTTPS_PROXY` / `HTTP_PROXY` / `NO_PROXY` of this process.
        public static var environment: ProxyPolicy {
            .settings(HTTPProxy.fromEnvironment(ProcessInfo.processInfo.environment))
        }
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
        /// The upstream's HTTP `Date` header, when it sent one that parses.
        public var date: Date?

        public init(status: Int, body: [UInt8], date: Date? = nil) {
            self.status = status
            self.body = body
            self.date = date
        }
    }

    public let timeouts: Timeouts
    public let proxyPolicy: ProxyPolicy

    public init(timeouts: Timeouts, proxy: ProxyPolicy = .environment) {
        self.timeouts = timeouts
        self.proxyPolicy = proxy
    }

    /// The same fetcher, never through a proxy.
    public func direct() -> HTTPFetcher {
        proxyPolicy == .never ? self : HTTPFetcher(timeouts: timeouts, proxy: .never)
    }

    /// The proxy a request to `url` would go through, or nil.
    public func proxy(for url: String) -> String? {
        switch proxyPolicy {
        case .never: return nil
        case .settings(let settings): return settings.proxy(for: url)
        }
    }

    /// Sends one request.
    public func send(
        _ method: Method = .GET, url: String, headers: [(String, String)] = [], body: [UInt8]? = nil
    ) async throws(CredentialError) -> Response {
        let where_ = Self.redacted(url)
        for (name, value) in headers {
            guard Self.isHeaderSafe(name), !name.isEmpty, Self.isHeaderSafe(value) else {
                throw CredentialError("\(method) \(where_): a header holds a line break or NUL")
            }
        }
        let transfer = Transfer(
            method: method, url: url, headers: headers, body: body, timeouts: timeouts, proxy: proxy(for: url))
        let outcome = await transfer.runOnOwnThread()
        switch outcome {
        case .success(let response):
            ServerClockProbe.report(response.date)
            return response
        case .failure(let reason): throw CredentialError("\(method) \(where_): \(reason)")
        }
    }

    static func isHeaderSafe(_ text: String) -> Bool {
        !text.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }
    }

    static func redacted(_ url: String) -> String {
        guard var parts = URLComponents(string: url) else { return "(unparseable URL)" }
        parts.query = nil
        parts.user = nil
        parts.password = nil
        parts.fragment = nil
        return parts.string ?? "(unparseable URL)"
    }
}

/// One request: its inputs, and what the callbacks collect. Touched by one thread at a time.
final class Transfer: @unchecked Sendable {
    enum Outcome: Sendable {
        case success(HTTPFetcher.Response)
        case failure(String)
    }

    let method: HTTPFetcher.Method
    let url: String
    let headers: [(String, String)]
    let requestBody: [UInt8]?
    let timeouts: HTTPFetcher.Timeouts
    let proxy: String?

    var body: [UInt8] = []
    var tooLong = false
    var date: Date?
    // The read timeout's state (the transfer's thread only).
    var handle: UnsafeMutableRawPointer?
    var readLimit: Duration = .zero
    var lastActivity = ContinuousClock.now
    var lastBytes: (curl_off_t, curl_off_t) = (-1, -1)
    var readTimedOut = false

    init(
        method: HTTPFetcher.Method, url: String, headers: [(String, String)], body: [UInt8]?,
        timeouts: HTTPFetcher.Timeouts, proxy: String?
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.requestBody = body
        self.timeouts = timeouts
        self.proxy = proxy
    }

    /// Runs ``perform()`` on a thread of its own (libcurl blocks) and resumes when it is done.
    func runOnOwnThread() async -> Outcome {
        await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
            let started = startThread(name: "credfs-http") { [self] in
                continuation.resume(returning: perform())
            }
            if !started { continuation.resume(returning: .failure("cannot start a thread")) }
        }
    }

    /// The blocking transfer (on its own thread).
    func perform() -> Outcome {
        guard credfs_curl_load() == 1 else { return .failure(String(cString: credfs_curl_load_error())) }
        guard let handle = credfs_curl_easy_init() else { return .failure("libcurl: no handle") }
        defer { credfs_curl_easy_cleanup(handle) }
        var list: UnsafeMutablePointer<curl_slist>? = nil
        defer { credfs_curl_slist_free_all(list) }

        var ok = true
        func set(_ option: CURLoption, _ value: Int) {
            ok = ok && credfs_curl_setopt_long(handle, option, value) == CURLE_OK
        }
        func set(_ option: CURLoption, _ value: String) {
            ok = ok && value.withCString { credfs_curl_setopt_string(handle, option, $0) } == CURLE_OK
        }

        set(CURLOPT_URL, url)
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_PROTOCOLS_STR, "http,https")
        set(CURLOPT_FOLLOWLOCATION, 0)
        set(CURLOPT_HTTP_CONTENT_DECODING, 0)
        set(CURLOPT_USERAGENT, "credfs")
        // The proxy is decided by HTTPProxy alone: "" turns libcurl's own environment lookup off.
        set(CURLOPT_PROXY, proxy ?? "")
        set(CURLOPT_NOPROXY, proxy == nil ? "*" : "")
        let connectMS = Self.milliseconds(timeouts.connect)
        let readMS = Self.milliseconds(timeouts.read)
        set(CURLOPT_CONNECTTIMEOUT_MS, connectMS)
        // The read timeout: no byte sent or received for `read` once connected (the
        // progress callback; libcurl's low-speed check averages and fires late after an upload).
        readLimit = .milliseconds(readMS)
        set(CURLOPT_NOPROGRESS, 0)
        ok = ok && credfs_curl_setopt_progress(handle, CURLOPT_XFERINFOFUNCTION, Self.watchProgress) == CURLE_OK
        // And a deadline for the whole request, as before.
        set(CURLOPT_TIMEOUT_MS, connectMS + readMS)

        switch method {
        case .GET:
            set(CURLOPT_HTTPGET, 1)
        case .PUT, .POST:
            set(CURLOPT_CUSTOMREQUEST, method.rawValue)
            let bytes = requestBody ?? []
            ok =
                ok
                && credfs_curl_setopt_offset(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(bytes.count)) == CURLE_OK
            ok =
                ok
                && bytes.withUnsafeBufferPointer { buffer -> CURLcode in
                    // COPYPOSTFIELDS copies the bytes; an empty body still needs a valid pointer.
                    var empty: CChar = 0
                    if let base = buffer.baseAddress, !buffer.isEmpty {
                        return base.withMemoryRebound(to: CChar.self, capacity: buffer.count) {
                            credfs_curl_setopt_string(handle, CURLOPT_COPYPOSTFIELDS, $0)
                        }
                    }
                    return credfs_curl_setopt_string(handle, CURLOPT_COPYPOSTFIELDS, &empty)
                } == CURLE_OK
        }

        func append(_ line: String) {
            if let longer = credfs_curl_slist_append(list, line) { list = longer } else { ok = false }
        }
        var names = Set<String>()
        for (name, value) in headers {
            names.insert(name.lowercased())
            append(value.isEmpty ? "\(name);" : "\(name): \(value)")
        }
        // No `Expect: 100-continue` wait; no form content type nobody asked for.
        if !names.contains("expect") { append("Expect:") }
        if method != .GET, !names.contains("content-type") { append("Content-Type:") }
        ok = ok && credfs_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, list) == CURLE_OK

        let context = Unmanaged.passUnretained(self).toOpaque()
        ok = ok && credfs_curl_setopt_callback(handle, CURLOPT_WRITEFUNCTION, Self.writeBody) == CURLE_OK
        ok = ok && credfs_curl_setopt_pointer(handle, CURLOPT_WRITEDATA, context) == CURLE_OK
        ok = ok && credfs_curl_setopt_callback(handle, CURLOPT_HEADERFUNCTION, Self.readHeader) == CURLE_OK
        ok = ok && credfs_curl_setopt_pointer(handle, CURLOPT_HEADERDATA, context) == CURLE_OK
        ok = ok && credfs_curl_setopt_pointer(handle, CURLOPT_XFERINFODATA, context) == CURLE_OK
        self.handle = handle
        defer { self.handle = nil }
        guard ok else { return .failure("libcurl refused an option") }

        let code = credfs_curl_easy_perform(handle)
        var status = 0
        credfs_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        if code == CURLE_ABORTED_BY_CALLBACK, readTimedOut { return .failure("read timed out") }
        if code == CURLE_OK || (code == CURLE_WRITE_ERROR && tooLong) {
            return .success(HTTPFetcher.Response(status: status, body: body, date: date))
        }
        var connectTime: curl_off_t = 0
        credfs_curl_getinfo_offset(handle, CURLINFO_CONNECT_TIME_T, &connectTime)
        var osError = 0
        credfs_curl_getinfo_long(handle, CURLINFO_OS_ERRNO, &osError)
        return .failure(Self.describe(code, connected: connectTime > 0, status: status, osError: osError))
    }

    static func milliseconds(_ duration: Duration) -> Int {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, seconds < 86_400 else { return seconds < 0 ? 1 : 86_400_000 }
        return max(1, Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000))
    }

    /// One line for a failed transfer. Never libcurl's error buffer: it may quote the URL.
    static func describe(_ code: CURLcode, connected: Bool, status: Int, osError: Int) -> String {
        switch code {
        case CURLE_OPERATION_TIMEDOUT:
            return connected || status != 0 ? "read timed out" : "connect timed out"
        case CURLE_COULDNT_CONNECT:
            if osError > 0, osError < Int(Int32.max) {
                return "cannot connect: \(Errno.describe(Int32(clamping: osError)))"
            }
            return "cannot connect"
        case CURLE_COULDNT_RESOLVE_HOST: return "cannot resolve the host name"
        case CURLE_COULDNT_RESOLVE_PROXY: return "cannot resolve the proxy's host name"
        case CURLE_PARTIAL_FILE, CURLE_GOT_NOTHING, CURLE_RECV_ERROR, CURLE_SEND_ERROR:
            return "connection closed before the answer was complete"
        case CURLE_PEER_FAILED_VERIFICATION: return "TLS: the server's certificate is not trusted"
        default:
            return String(cString: credfs_curl_easy_strerror(code))
        }
    }

    /// Aborts when nothing moved for the read timeout since the connection was made.
    static let watchProgress: credfs_curl_progress_cb = { context, _, downloaded, _, uploaded in
        guard let context else { return 0 }
        let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
        let now = ContinuousClock.now
        var connectTime: curl_off_t = 0
        if let handle = transfer.handle { credfs_curl_getinfo_offset(handle, CURLINFO_CONNECT_TIME_T, &connectTime) }
        if connectTime == 0 || (downloaded, uploaded) != transfer.lastBytes {
            // Still connecting (the connect timeout's business), or bytes moved.
            transfer.lastBytes = (downloaded, uploaded)
            transfer.lastActivity = now
            return 0
        }
        if now - transfer.lastActivity > transfer.readLimit {
            transfer.readTimedOut = true
            return 1
        }
        return 0
    }

    static let writeBody: credfs_curl_data_cb = { data, size, count, context in
        guard let context else { return 0 }
        let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
        let (length, overflow) = size.multipliedReportingOverflow(by: count)
        guard !overflow, let data else { return overflow ? 0 : length }
        let room = AnswerParser.maxBodyBytes + 1 - transfer.body.count
        if length >= room {
            // Keep one byte more than the limit, so the parser says "larger than 64 KiB".
            transfer.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: max(0, room)))
            transfer.tooLong = true
            return 0
        }
        transfer.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
        return length
    }

    static let readHeader: credfs_curl_data_cb = { data, size, count, context in
        guard let context else { return 0 }
        let transfer = Unmanaged<Transfer>.fromOpaque(context).takeUnretainedValue()
        let (length, overflow) = size.multipliedReportingOverflow(by: count)
        guard !overflow, let data else { return overflow ? 0 : length }
        let line = UnsafeRawBufferPointer(start: data, count: length)
        if line.starts(with: Array("HTTP/".utf8)) {
            // A new response (a proxy's CONNECT answer, a 100 Continue): forget the last one's Date.
            transfer.date = nil
        } else if line.count > 5, line.count < 256,
            line.prefix(5).map({ $0 | 0x20 }) == Array("date:".utf8)
        {
            var value = Array(line.dropFirst(5))
            value.append(0)
            let seconds = value.withUnsafeBufferPointer { buffer in
                buffer.baseAddress.map {
                    $0.withMemoryRebound(to: CChar.self, capacity: buffer.count) { credfs_curl_getdate($0) }
                }
            }
            if let seconds, seconds > 0 { transfer.date = Date(timeIntervalSince1970: TimeInterval(seconds)) }
        }
        return length
    }
}
