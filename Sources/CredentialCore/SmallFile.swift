#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import Posix

/// `read(2)`, named apart from ``SmallFile/read(_:what:limit:)``.
private func posixRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int {
    read(fd, buffer, count)
}

/// The one whole-file reader: the small files credfs is pointed at (the OIDC token file, a
/// policy file), the status file of a mount, and every `/proc` file (mountinfo, cgroup):
/// regular files only, at most a limit, read to their end, and never a wait.
///
/// The file is opened `O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY`, so a FIFO with no
/// writer does not block the open; `fstat` on the open descriptor (no race with a swapped
/// path) must say it is a regular file, so a FIFO, a socket, `/dev/zero`, a tty or a
/// directory is refused before anything is read; and `read(2)` runs until end of file,
/// stopping one byte past the limit, so a procfs file (`st_size` 0, served in pages:
/// `String(contentsOfFile:)` returns only its first 4 KiB) is read whole, and a file that
/// grows cannot exhaust memory. Symlinks are followed: Kubernetes projects its token files
/// through them.
public enum SmallFile {
    /// The most credfs reads of any file it is pointed at, as of any upstream answer.
    public static let maxBytes = 64 * 1024
    /// The most credfs reads of a `/proc` file (a node's mountinfo runs to a few hundred KiB).
    public static let maxProcBytes = 16 << 20

    /// The whole file, or a one-line error that names `what` and `path` (never a byte of
    /// the file).
    public static func read(_ path: String, what: String, limit: Int = maxBytes) throws(CredentialError)
        -> [UInt8]
    {
        let shown = "\(what) \(path)"
        guard !path.isEmpty else { throw CredentialError("\(what): no path given") }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            throw CredentialError("cannot open the \(shown): \(Errno.last)")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw CredentialError("cannot stat the \(shown): \(Errno.last)")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            let kind: String
            switch st.st_mode & S_IFMT {
            case S_IFDIR: kind = "a directory"
            case S_IFIFO: kind = "a FIFO"
            case S_IFCHR: kind = "a character device"
            case S_IFBLK: kind = "a block device"
            case S_IFSOCK: kind = "a socket"
            default: kind = "not a regular file"
            }
            throw CredentialError("the \(shown) is \(kind), not a regular file")
        }
        let tooLarge = CredentialError("the \(shown) is larger than \(limit / 1024) KiB")
        guard st.st_size <= limit else { throw tooLarge }
        // Grows a chunk at a time: a 16 MiB limit costs nothing for a 2 KiB file.
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: max(1, min(limit + 1, 64 * 1024)))
        while bytes.count <= limit {
            let want = min(chunk.count, limit + 1 - bytes.count)
            let n = chunk.withUnsafeMutableBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return posixRead(fd, base, want)
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw CredentialError("cannot read the \(shown): \(Errno.last)")
            }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        guard bytes.count <= limit else { throw tooLarge }
        return bytes
    }

    /// The whole of a `/proc` file (or another small file) as text, or nil when it cannot be
    /// read whole.
    public static func text(_ path: String, limit: Int = maxProcBytes) -> String? {
        guard let bytes = try? read(path, what: "file", limit: limit) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `bytes` as text without the ASCII white space (space, tab, CR, LF) around it.
    public static func trimmed(_ bytes: [UInt8]) -> String {
        func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0A || b == 0x0D }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }),
            let last = bytes.lastIndex(where: { !isSpace($0) })
        else { return "" }
        return String(decoding: bytes[first...last], as: UTF8.self)
    }
}
