import Glibc

/// Writing to stdout and stderr without FileHandle (full Foundation): write(2) until done.
enum Output {
    static func write(_ bytes: [UInt8], to fd: Int32) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return 0 }
                return Glibc.write(fd, base + offset, raw.count - offset)
            }
            if written > 0 {
                offset += written
            } else if written < 0, errno == EINTR {
                continue
            } else {
                return
            }
        }
    }

    static func standardOutput(_ bytes: [UInt8]) { write(bytes, to: STDOUT_FILENO) }

    /// One line on stderr.
    static func error(_ line: String) { write(Array((line + "\n").utf8), to: STDERR_FILENO) }
}
