import ArgumentParser
import Glibc

/// `--serve-uri HOST:PORT`: only loopback hosts (127.0.0.0/8, ::1, localhost).
struct LoopbackAddress {
    var host: String
    var port: Int

    /// Parses `HOST:PORT` (an IPv6 host in brackets); what is refused says why.
    static func parse(_ argument: String) throws -> LoopbackAddress {
        guard let parts = ListenAddress.split(argument) else {
            throw ValidationError(
                "expected HOST:PORT with a port from 0 to 65535, such as 127.0.0.1:8900 or [::1]:8900")
        }
        guard isLoopback(parts.host) else {
            throw ValidationError(
                "the credentials URI is served on a loopback address only: 127.0.0.0/8, [::1] or localhost")
        }
        return LoopbackAddress(host: parts.host == "localhost" ? "127.0.0.1" : parts.host, port: parts.port)
    }

    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        var address = in_addr()
        guard inet_pton(AF_INET, host, &address) == 1 else { return false }
        return UInt32(bigEndian: address.s_addr) >> 24 == 127
    }
}
