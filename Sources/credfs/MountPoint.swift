import CFuse3
import CredentialCore
import FoundationEssentials
import FuseBridge
import Glibc
import Logging
import Posix

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
                    throw Failure(message: "cannot create mount point \(path): \(Errno.last)")
                }
                logger.info("created mount point", metadata: ["mountpoint": "\(path)"])
            case ENOTCONN:
                // A daemon died and left its mount behind: clear it and mount again.
                guard FuseFileSystem.detach(path) else {
                    throw Failure(message: "cannot clear the stale mount at \(path): \(Errno.last)")
                }
                logger.notice("cleared a stale FUSE mount", metadata: ["mountpoint": "\(path)"])
            default:
                throw Failure(message: "cannot use mount point \(path): \(Errno.describe(error))")
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
                    throw Failure(message: "cannot clear the stale mount at \(path): \(Errno.last)")
                }
                logger.notice("cleared a stale FUSE mount", metadata: ["mountpoint": "\(path)"])
                return
            }
            throw Failure(message: "a live credfs mount is already at \(path)")
        }
    }

    /// The filesystem type mounted at `path` (the topmost mount), from /proc/self/mountinfo.
    static func mountType(at path: String) -> String? {
        mounts()?.last { $0.path == path }?.type
    }

    /// One line of a mountinfo file: where, what type, and the per-mount and superblock
    /// options together.
    struct Entry {
        var path: String
        var type: String
        var options: [String]
    }

    /// The mounts listed in `file` (a mountinfo), in its order; nil when it cannot be read.
    /// Read whole with ``SmallFile``: a node's mountinfo runs far past 4 KiB.
    static func mounts(in file: String = "/proc/self/mountinfo") -> [Entry]? {
        guard let text = SmallFile.text(file) else { return nil }
        var entries: [Entry] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count > 6, let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else {
                continue
            }
            let superOptions = dash + 3 < fields.count ? fields[dash + 3].split(separator: ",") : []
            entries.append(
                Entry(
                    path: unescape(String(fields[4])), type: String(fields[dash + 1]),
                    options: (fields[5].split(separator: ",") + superOptions).map(String.init)))
        }
        return entries
    }

    /// The one way every command names a mount point (`mount`, its supervisor and servers,
    /// `unmount`, `status`, `upgrade`, `doctor`; docs/security.md, "Mount points"): made
    /// absolute, `.` and `..` taken by text, then every symlink in it replaced by its target,
    /// as `realpath` would, except that a missing tail stays as written (`mount` creates it).
    /// Only `readlink` touches the path: a mount point whose server is gone or is this very
    /// process is never stat'ed.
    static func resolve(_ path: String) -> String {
        var parts = Hitless.lexicalPath(path).split(separator: "/").map(String.init)
        var done: [String] = []
        var hops = 0
        while !parts.isEmpty {
            let next = parts.removeFirst()
            let candidate = "/" + (done + [next]).joined(separator: "/")
            var buffer = [CChar](repeating: 0, count: 4097)
            let n = readlink(candidate, &buffer, buffer.count - 1)
            guard n > 0, hops < 40 else {
                done.append(next)
                continue
            }
            hops += 1
            let target = String(decoding: buffer.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let base = target.hasPrefix("/") ? target : "/" + done.joined(separator: "/") + "/" + target
            parts = Hitless.lexicalPath(base).split(separator: "/").map(String.init) + parts
            done = []
        }
        return "/" + done.joined(separator: "/")
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
}
