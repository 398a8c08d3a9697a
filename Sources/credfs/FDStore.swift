import CFuse3
import FoundationEssentials
import Glibc

/// Descriptors a service manager keeps while server processes come and go: systemd's file
/// descriptor store, or the supervisor's, which speaks the same protocol (sd_notify
/// `FDSTORE=1` / `FDNAME=` / `FDSTOREREMOVE=1` to `$NOTIFY_SOCKET`; the next start gets them
/// from fd 3 on with `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID`).
enum FDStore {
    /// Whether this process should store descriptors: under the supervisor, or under a
    /// systemd unit with a store (`$FDSTORE`, which systemd 254+ sets from
    /// `FileDescriptorStoreMax=` and scripts/credfs.service sets for older ones).
    static var isAvailable: Bool {
        guard let socket = getenv("NOTIFY_SOCKET"), socket.pointee != 0 else { return false }
        guard let max = getenv("FDSTORE").map({ String(cString: $0) }), let count = Int(max) else { return false }
        return count > 0
    }

    /// The descriptors this process was started with, by name (in order). The variables
    /// are removed, and the descriptors made close-on-exec, so no child inherits them.
    static func inherited() -> [(name: String, fd: Int32)] {
        defer {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        guard let pidText = getenv("LISTEN_PID").map({ String(cString: $0) }), Int32(pidText) == getpid(),
            let countText = getenv("LISTEN_FDS").map({ String(cString: $0) }), let count = Int(countText),
            count > 0, count <= 64
        else { return [] }
        let names =
            getenv("LISTEN_FDNAMES").map { String(cString: $0) }?.split(
                separator: ":", omittingEmptySubsequences: false
            ).map(String.init) ?? []
        var result: [(name: String, fd: Int32)] = []
        for i in 0..<count {
            let fd = Int32(3 + i)
            guard fcntl(fd, F_GETFD) >= 0 else { continue }
            _ = credfs_set_cloexec(fd, 1)
            result.append((i < names.count ? names[i] : "unknown", fd))
        }
        return result
    }

    /// Hands `fd` to the store under `name` (the store keeps its own copy).
    @discardableResult
    static func store(_ fd: Int32, name: String) -> Bool {
        send("FDSTORE=1\nFDNAME=\(name)", fds: [fd])
    }

    /// Drops every stored descriptor named `name`.
    @discardableResult
    static func remove(name: String) -> Bool {
        send("FDSTOREREMOVE=1\nFDNAME=\(name)", fds: [])
    }

    @discardableResult
    static func send(_ message: String, fds: [Int32]) -> Bool {
        guard let socket = getenv("NOTIFY_SOCKET").map({ String(cString: $0) }), !socket.isEmpty else { return false }
        let bytes = Array(message.utf8)
        return bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { fdBuffer in
                credfs_send_fds(socket, raw.baseAddress, raw.count, fdBuffer.baseAddress, Int32(fdBuffer.count)) == 0
            }
        }
    }
}

/// Anonymous memory files (memfd): state and the INIT recording move in these, never
/// through a file on disk.
enum MemoryFile {
    /// A sealed memfd holding `bytes`, or -1.
    static func make(name: String, bytes: [UInt8]) -> Int32 {
        let fd = credfs_memfd(name)
        guard fd >= 0 else { return -1 }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                Glibc.write(fd, raw.baseAddress.map { $0 + written }, raw.count - written)
            }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                close(fd)
                return -1
            }
            written += n
        }
        _ = credfs_seal(fd)
        return fd
    }

    /// The whole content of a memfd (at most `limit` bytes), read from offset 0.
    static func read(_ fd: Int32, limit: Int = 64 << 20) -> [UInt8]? {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        var offset: off_t = 0
        while out.count <= limit {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
            if n < 0, errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { return out }
            out += buffer[0..<n]
            offset += off_t(n)
        }
        return nil
    }
}
