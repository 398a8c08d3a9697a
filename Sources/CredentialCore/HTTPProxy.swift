import FoundationEssentials
import Glibc

/// Which proxy, if any, a request goes through: the one place credfs decides it.
///
/// `HTTPS_PROXY` (for `https` URLs) and `HTTP_PROXY` (for `http` URLs) are honoured in
/// either case (the lower-case spelling wins when both are set), and `NO_PROXY` /
/// `no_proxy` lists what goes direct. Whatever the environment says, these never go
/// through a proxy:
/// - a fetcher made with ``HTTPFetcher/ProxyPolicy/never`` (the ECS metadata service);
/// - loopback hosts (`localhost`, `*.localhost`, `127.0.0.0/8`, `::1`);
/// - the ECS metadata address `100.100.100.200` and link-local `169.254.0.0/16`.
///
/// libcurl's own reading of these variables differs by case (it ignores `HTTP_PROXY` in
/// upper case), so ``HTTPFetcher`` never lets libcurl read them: it sets the proxy this
/// resolver picks, or none, explicitly on every request.
public struct HTTPProxy: Sendable, Equatable {
    /// The proxy for `http` URLs, as written in the environment.
    public var http: String?
    /// The proxy for `https` URLs, as written in the environment.
    public var https: String?
    /// `NO_PROXY` entries, lower-cased and trimmed.
    public var noProxy: [String]

    public init(http: String? = nil, https: String? = nil, noProxy: [String] = []) {
        self.http = http
        self.https = https
        self.noProxy = noProxy
    }

    /// The proxy settings in `environment`.
    public static func fromEnvironment(_ environment: [String: String]) -> HTTPProxy {
        func value(_ name: String) -> String? {
            for key in [name.lowercased(), name.uppercased()] {
                if let value = environment[key], !Self.trimmed(value).isEmpty { return Self.trimmed(value) }
            }
            return nil
        }
        let noProxy = (value("no_proxy") ?? "").split(separator: ",").map { Self.trimmed(String($0)).lowercased() }
            .filter { !$0.isEmpty }
        return HTTPProxy(http: value("http_proxy"), https: value("https_proxy"), noProxy: noProxy)
    }

    /// The proxy a request to `url` goes through, or nil for a direct connection.
    public func proxy(for url: String) -> String? {
        guard let parts = URLComponents(string: url), let scheme = parts.scheme?.lowercased(),
            let rawHost = parts.host, !rawHost.isEmpty
        else { return nil }
        let host = Self.bareHost(rawHost)
        if Self.isNeverProxied(host) { return nil }
        let candidate: String?
        switch scheme {
        case "https": candidate = https
        case "http": candidate = http
        default: candidate = nil
        }
        guard let candidate else { return nil }
        let port = parts.port ?? (scheme == "https" ? 443 : 80)
        if bypasses(host: host, port: port) { return nil }
        return candidate
    }

    /// True when `NO_PROXY` names this host (or `*`).
    func bypasses(host: String, port: Int) -> Bool {
        for var entry in noProxy {
            if entry == "*" { return true }
            // "host:port" (not an IPv6 address): the port must match too.
            if let colon = entry.lastIndex(of: ":"), entry.firstIndex(of: ":") == colon {
                guard Int(entry[entry.index(after: colon)...]) == port else { continue }
                entry = String(entry[..<colon])
            }
            entry = Self.bareHost(entry)
            if let slash = entry.firstIndex(of: "/") {
                if Self.inCIDR(
                    host, network: String(entry[..<slash]), bits: String(entry[entry.index(after: slash)...]))
                {
                    return true
                }
                continue
            }
            while entry.hasPrefix("*") || entry.hasPrefix(".") { entry.removeFirst() }
            if entry.isEmpty { continue }
            if host == entry || host.hasSuffix("." + entry) { return true }
        }
        return false
    }

    /// Loopback, the ECS metadata service and link-local addresses: never through a proxy.
    public static func isNeverProxied(_ rawHost: String) -> Bool {
        let host = bareHost(rawHost)
        if host == "localhost" || host.hasSuffix(".localhost") { return true }
        if let v4 = ipv4(host) {
            let first = v4 >> 24
            if first == 127 { return true }
            if v4 == 0x6464_64C8 { return true }  // 100.100.100.200
            if v4 >> 16 == 0xA9FE { return true }  // 169.254.0.0/16
            return false
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            if bytes == [UInt8](repeating: 0, count: 15) + [1] { return true }  // ::1
            if bytes.prefix(12) == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF] {
                // ::ffff:a.b.c.d
                let v4 = bytes.suffix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
                return isNeverProxied("\(v4 >> 24).\(v4 >> 16 & 0xFF).\(v4 >> 8 & 0xFF).\(v4 & 0xFF)")
            }
            if bytes[0] == 0xFE, bytes[1] & 0xC0 == 0x80 { return true }  // fe80::/10
        }
        return false
    }

    static func bareHost(_ host: String) -> String {
        var host = host.lowercased()
        if host.hasPrefix("["), host.hasSuffix("]") {
            host.removeFirst()
            host.removeLast()
        }
        while host.hasSuffix(".") { host.removeLast() }
        return host
    }

    static func ipv4(_ text: String) -> UInt32? {
        var address = in_addr()
        guard inet_pton(AF_INET, text, &address) == 1 else { return nil }
        return UInt32(bigEndian: address.s_addr)
    }

    static func inCIDR(_ host: String, network: String, bits: String) -> Bool {
        guard let address = ipv4(host), let base = ipv4(network), let bits = Int(bits), bits >= 0, bits <= 32
        else { return false }
        let mask: UInt32 = bits == 0 ? 0 : UInt32.max << UInt32(32 - bits)
        return address & mask == base & mask
    }

    static func trimmed(_ text: String) -> String {
        var slice = Substring(text)
        while let first = slice.first, first == " " || first == "\t" { slice.removeFirst() }
        while let last = slice.last, last == " " || last == "\t" { slice.removeLast() }
        return String(slice)
    }
}
