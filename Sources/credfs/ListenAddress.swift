import ArgumentParser
import Glibc

/// `--metrics HOST:PORT`: any IPv4 or IPv6 literal (`[::]:9464`), or `localhost`.
/// Unlike `--serve-uri`, non-loopback addresses are allowed: the metrics hold no secret.
struct ListenAddress: ExpressibleByArgument {
    var host: String
    var port: Int

    init?(argument: String) {
        guard let parts = Self.split(argument) else { return nil }
        let host = parts.host == "localhost" ? "127.0.0.1" : parts.host
        let bracketed = parts.bracketed
        var v4 = in_addr()
        var v6 = in6_addr()
        let isV4 = !bracketed && inet_pton(AF_INET, host, &v4) == 1
        let isV6 = bracketed && inet_pton(AF_INET6, host, &v6) == 1
        guard isV4 || isV6 else { return nil }
        self.host = host
        self.port = parts.port
    }

    /// `HOST:PORT` split at its last colon, brackets taken off the host (`[::1]:80`); the
    /// port in 0…65535. The one parser of both listening flags.
    static func split(_ argument: String) -> (host: String, port: Int, bracketed: Bool)? {
        guard let colon = argument.lastIndex(of: ":") else { return nil }
        var host = String(argument[..<colon])
        let bracketed = host.hasPrefix("[") && host.hasSuffix("]")
        if bracketed { host = String(host.dropFirst().dropLast()) }
        guard let port = Int(argument[argument.index(after: colon)...]), (0...65535).contains(port)
        else { return nil }
        return (host, port, bracketed)
    }

    /// `host:port`, with brackets around an IPv6 host.
    var description: String { Self.shown(host: host, port: port) }

    /// `host:port` as a URL or a message names it: an IPv6 host in brackets.
    static func shown(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    static var defaultValueDescription: String { "HOST:PORT" }
}
