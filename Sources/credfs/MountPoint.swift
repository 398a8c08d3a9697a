import CFuse3
import FoundationEssentials
import FuseBridge
import Glibc
import Logging

/// Getting a mount point ready: create it, clear a stale FUSE mount, refuse a live one.
enum MountPoint {
    static func prepare(_ path: String, logger: Logger) throws {
        var st = stat()
        if stat(path, &st) != 0 {
            let error = errno
            switch error {
            case ENOENT:
                do {
                    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
                } catch {
                    throw Failure(message: "cannot create mount point \(path): \(describe(errno))")
                }
                logger.info("created mount point", metadata: ["mountpoint": "\(path)"])
            case ENOTCONN:
                // A daemon died and left its mount behind: clear it and mount again.
                guard FuseFileSystem.detach(path) else {
                    throw Failure(message: "cannot clear the stale mount at \(path): \(describe(errno))")
                }
                logger.notice("cleared a stale FUSE mount", metadata: ["mountpoint": "\(path)"])
            default:
                throw Failure(message: "cannot use mount point \(path): \(describe(error))")
            }
            return
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            throw Failure(message: "mount point \(path) is not a directory")
        }
        if mountType(at: path) == "fuse.credfs" {
            // stat may be answered from the kernel's cache; statvfs always asks the daemon.
            var fs = statvfs()
            if statvfs(path, &fs) != 0, errno == ENOTCONN {
                guard FuseFileSystem.detach(path) else {
                    throw Failure(message: "cannot clear the stale mount at \(path): \(describe(errno))")
                }
                logger.notice("cleared a stale FUSE mount", metadata: ["mountpoint": "\(path)"])
                return
            }
            throw Failure(message: "a live credfs mount is already at \(path)")
        }
    }

    /// The filesystem type mounted at `path` (the topmost mount), from /proc/self/mountinfo.
    static func mountType(at path: String) -> String? {
        guard let text = readWhole("/proc/self/mountinfo") else {
            return nil
        }
        var found: String?
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 6, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else {
                continue
            }
            if unescape(String(fields[4])) == path { found = String(fields[dash + 1]) }
        }
        return found
    }

    /// The whole of a /proc file, read(2) until end of file. `String(contentsOfFile:)` returns
    /// only the first 4 KiB of a procfs file (its st_size is 0), and a mountinfo with more
    /// mounts than that (a container, a Kubernetes node) would hide a credfs mount.
    static func readWhole(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n > 0 {
                bytes.append(contentsOf: buffer.prefix(n))
            } else if n == 0 {
                return String(decoding: bytes, as: UTF8.self)
            } else if errno != EINTR {
                return nil
            }
        }
    }

    /// mountinfo escapes space, tab, newline and backslash as `\ooo`.
    static func unescape(_ field: String) -> String {
        var out = [UInt8]()
        let bytes = Array(field.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == 0x5C, i + 3 < bytes.count,
                let value = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
            {
                out.append(value)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// True once the FUSE root at `path` answers a `stat`.
    static func isAnswering(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_ino == 1
    }

    static func describe(_ code: Int32) -> String { String(cString: strerror(code)) }
}
