import Glibc

/// The TCP socket a listener serves on, bound by credfs itself so that it can go into the
/// fd store before the first connection: a successor gets this very socket and serves on
/// it (``HTTPListener/serve(fd:limits:respond:)``), so the port is never free across a
/// takeover for someone else to bind (docs/hitless.md, "Listeners").
public enum ListeningSocket {
    /// A new socket listening on `host:port` (a numeric IPv4 or IPv6 address), or the
    /// reason it cannot be had (`Address already in use`).
    public static func bind(host: String, port: Int) -> Result<Int32, ListenError> {
        guard let address = SocketAddress(host: host, port: port) else {
            return .failure(ListenError(reason: "not a numeric address"))
        }
        let fd = socket(address.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(ListenError(errno: errno)) }
        var one: Int32 = 1
        // A restart may find the port in TIME_WAIT; never SO_REUSEPORT, which would let
        // another socket of the same user share the port.
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockaddr { Glibc.bind(fd, $0, $1) }
        guard bound == 0, listen(fd, 128) == 0 else {
            let error = ListenError(errno: errno)
            close(fd)
            return .failure(error)
        }
        return .success(fd)
    }

    /// Whether `fd` is a TCP socket listening on `host:port` (any port when `port` is 0):
    /// what the fd store hands a successor is checked before it is served on.
    public static func isListening(_ fd: Int32, host: String, port: Int) -> Bool {
        guard let wanted = SocketAddress(host: host, port: port) else { return false }
        var type: Int32 = 0
        var accepting: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0, type == Int32(SOCK_STREAM.rawValue) else {
            return false
        }
        size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &size) == 0, accepting == 1 else { return false }
        guard let actual = SocketAddress(boundTo: fd) else { return false }
        return actual.family == wanted.family && actual.address == wanted.address
            && (port == 0 || actual.port == wanted.port)
    }

    /// The port `fd` is bound to (0 if it is not a bound IP socket).
    public static func port(of fd: Int32) -> Int {
        SocketAddress(boundTo: fd)?.port ?? 0
    }

    /// Why a socket could not be bound.
    public struct ListenError: Error, CustomStringConvertible, Sendable {
        public let description: String
        init(reason: String) { description = reason }
        init(errno code: Int32) { description = String(cString: strerror(code)) }
    }

    /// An IPv4 or IPv6 address and port, comparable byte for byte.
    struct SocketAddress {
        var family: Int32
        var address: [UInt8]
        var port: Int

        init?(host: String, port: Int) {
            guard (0...65535).contains(port) else { return nil }
            var v4 = in_addr()
            var v6 = in6_addr()
            if inet_pton(AF_INET, host, &v4) == 1 {
                family = AF_INET
                address = withUnsafeBytes(of: &v4) { Array($0) }
            } else if inet_pton(AF_INET6, host, &v6) == 1 {
                family = AF_INET6
                address = withUnsafeBytes(of: &v6) { Array($0) }
            } else {
                return nil
            }
            self.port = port
        }

        /// The local address of the socket `fd` (`getsockname`).
        init?(boundTo fd: Int32) {
            var storage = sockaddr_storage()
            var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let named = withUnsafeMutablePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
            }
            guard named == 0 else { return nil }
            // sockaddr_in and sockaddr_in6 alike: family, then the port in network order;
            // the address at byte 4 (IPv4) or 8 (IPv6, after the flow label).
            let bytes = withUnsafeBytes(of: &storage) { Array($0) }
            switch Int32(storage.ss_family) {
            case AF_INET: address = Array(bytes[4..<8])
            case AF_INET6: address = Array(bytes[8..<24])
            default: return nil
            }
            family = Int32(storage.ss_family)
            port = Int(bytes[2]) << 8 | Int(bytes[3])
        }

        func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
            func pass<Address>(_ value: Address) -> T {
                withUnsafePointer(to: value) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        body($0, socklen_t(MemoryLayout<Address>.size))
                    }
                }
            }
            let netPort = UInt16(truncatingIfNeeded: port).bigEndian
            if family == AF_INET {
                var v4 = sockaddr_in()
                v4.sin_family = sa_family_t(AF_INET)
                v4.sin_port = netPort
                withUnsafeMutableBytes(of: &v4.sin_addr) { $0.copyBytes(from: address) }
                return pass(v4)
            }
            var v6 = sockaddr_in6()
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = netPort
            withUnsafeMutableBytes(of: &v6.sin6_addr) { $0.copyBytes(from: address) }
            return pass(v6)
        }
    }
}
