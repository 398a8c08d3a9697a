import CPosix
import Glibc

/// Drops this process's page-table entries for clean, read-only pages of its executable and
/// shared libraries: the code and constants that starting (argument parsing, the Swift
/// runtime's first lookups, mounting) or a refresh (HTTP, JSON) used once. The pages stay in
/// the page cache; what is used again faults back in (a minor fault, no disk read), so a
/// daemon's resident set is what it serves with, not everything it ever ran. Unmapped page
/// cache is also what the kernel reclaims first under memory pressure, while mapped code is
/// kept. Nothing a process can observe changes: only pages whose content is the file's own
/// are dropped.
///
/// A mapping is dropped only when all of these hold (from `/proc/self/smaps`):
/// - private, file-backed, not writable: its pages can only ever hold the file's bytes;
/// - no anonymous page and nothing swapped: nothing was ever written into it (a RELRO
///   segment after relocation, a debugger's breakpoint), and, being read-only, nothing can
///   be from now on;
/// - it belongs to the executable (never unmapped) or to a shared object that is pinned
///   first (`RTLD_NOLOAD | RTLD_NODELETE`: never unmapped either), and it lies inside that
///   loaded image (`dladdr`), so no other mapping can appear at those addresses between
///   the check and `madvise`. Files mapped otherwise (not loaded objects) are left alone.
public enum ResidentPages {
    /// Returns the bytes of address space advised (0 if `/proc/self/smaps` is unreadable).
    /// Then hands freed heap memory back too (`malloc_trim`).
    @discardableResult
    public static func releaseCleanFilePages() -> Int {
        defer { _ = credfs_malloc_trim() }
        var parser = Parser()
        guard forEachLine(of: "/proc/self/smaps", { parser.feed($0) }) else { return 0 }
        var exe = stat()
        let exeKnown = stat("/proc/self/exe", &exe) == 0
        var pinned: [String: Bool] = [:]
        var released = 0
        for mapping in parser.finish() where mapping.isCandidate {
            let ours: Bool
            if exeKnown, mapping.inode == UInt64(exe.st_ino), mapping.device == deviceNumbers(exe.st_dev) {
                ours = true
            } else if let known = pinned[mapping.path] {
                ours = known
            } else {
                ours = credfs_pin_if_loaded(mapping.path) != 0
                pinned[mapping.path] = ours
            }
            // And the loader places it inside a loaded object's image: not a file some code
            // mapped itself (which it could unmap, and the addresses be reused, meanwhile).
            guard ours, let start = UnsafeMutableRawPointer(bitPattern: mapping.start),
                credfs_in_loaded_object(start) != 0
            else { continue }
            if madvise(start, mapping.end - mapping.start, MADV_DONTNEED) == 0 {
                released += mapping.end - mapping.start
            }
        }
        return released
    }

    /// Caps glibc's malloc arenas (call before any thread starts). The default, 8 per core,
    /// leaves each of the FUSE loop's threads an arena of its own holding freed memory;
    /// small allocations mostly come from the per-thread cache anyway.
    public static func limitHeapArenas(to count: Int32) {
        _ = credfs_set_malloc_arenas(count)
    }

    struct Mapping {
        var start = 0
        var end = 0
        var perms = ""
        var device = ""
        var inode: UInt64 = 0
        var path = ""
        var anonymousKB = -1
        var swapKB = -1

        /// Private, read-only, file-backed, never written, nothing swapped.
        var isCandidate: Bool {
            perms.count == 4 && !perms.contains("w") && perms.hasSuffix("p") && inode != 0
                && path.hasPrefix("/") && anonymousKB == 0 && swapKB == 0 && end > start
        }
    }

    /// The mappings of an smaps text, fed a line at a time: a header line per mapping,
    /// then `Key: value kB` lines.
    struct Parser {
        private var mappings: [Mapping] = []
        private var current: Mapping?

        mutating func feed(_ line: ArraySlice<UInt8>) {
            let fields = line.split(separator: UInt8(ascii: " "), maxSplits: 5, omittingEmptySubsequences: true)
            guard let first = fields.first else { return }
            if first.last == UInt8(ascii: ":") {
                guard fields.count >= 2, let value = Int(String(decoding: fields[1], as: UTF8.self)) else {
                    return
                }
                switch String(decoding: first, as: UTF8.self) {
                case "Anonymous:": current?.anonymousKB = value
                case "Swap:": current?.swapKB = value
                default: break
                }
                return
            }
            guard fields.count >= 5 else { return }
            if let done = current { mappings.append(done) }
            current = nil
            let range = first.split(separator: UInt8(ascii: "-"))
            guard range.count == 2,
                let start = Int(String(decoding: range[0], as: UTF8.self), radix: 16),
                let end = Int(String(decoding: range[1], as: UTF8.self), radix: 16),
                let inode = UInt64(String(decoding: fields[4], as: UTF8.self))
            else { return }
            var mapping = Mapping(start: start, end: end)
            mapping.perms = String(decoding: fields[1], as: UTF8.self)
            mapping.device = String(decoding: fields[3], as: UTF8.self)
            mapping.inode = inode
            if fields.count == 6 {
                var path = fields[5]
                while path.first == UInt8(ascii: " ") { path = path.dropFirst() }
                mapping.path = String(decoding: path, as: UTF8.self)
            }
            current = mapping
        }

        mutating func finish() -> [Mapping] {
            if let done = current { mappings.append(done) }
            current = nil
            return mappings
        }
    }

    /// `st_dev` as smaps writes it: `major:minor` in hex, two digits at least.
    static func deviceNumbers(_ device: dev_t) -> String {
        let value = UInt64(device)
        let major = ((value >> 8) & 0xfff) | ((value >> 32) & ~UInt64(0xfff))
        let minor = (value & 0xff) | ((value >> 12) & ~UInt64(0xff))
        func hex(_ n: UInt64) -> String {
            let digits = String(n, radix: 16)
            return digits.count < 2 ? "0" + digits : digits
        }
        return hex(major) + ":" + hex(minor)
    }

    /// Calls `body` with each line of the file (without its newline), reading 16 KiB at a
    /// time. Returns false if the file cannot be read to its end.
    static func forEachLine(of path: String, _ body: (ArraySlice<UInt8>) -> Void) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            if n < 0 { return false }
            if n == 0 {
                if !pending.isEmpty { body(pending[...]) }
                return true
            }
            pending += buffer[0..<n]
            var lineStart = pending.startIndex
            while let newline = pending[lineStart...].firstIndex(of: UInt8(ascii: "\n")) {
                body(pending[lineStart..<newline])
                lineStart = newline + 1
            }
            pending.removeSubrange(..<lineStart)
        }
    }
}
