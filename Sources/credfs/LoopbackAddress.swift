import ArgumentParser
import Glibc

/// `--serve-uri HOST:PORT`: only loopback hosts (127.0.0.0/8, ::1, localhost).
struct LoopbackAddress: ExpressibleByArgument {
    var host: String
    var port: Int

    init?(argument: String) {
        guard let parts = ListenAddress.split(argument), Self.isLoopback(parts.host) else { return nil }
        host = parts.host == "localhost" ? "127.0.0.1" : parts.host
        port = parts.port
    }

    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" || host == "::1" { return true }
        var address = in_addr()
        guard inet_pton(AF_INET, host, &address) == 1 else { return false }
        return UInt32(bigEndian: address.s_addr) >> 24 == 127
    }

    static var defaultValueDescription: String { "127.0.0.1:PORT" }
}
