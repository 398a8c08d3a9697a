import Glibc

/// Where a takeover's time goes, for `scripts/bench-takeover`: with the hidden variable
/// `CREDFS_TAKEOVER_TRACE=PATH` (passed on from `credfs mount` to the supervisor and its
/// servers), each step appends `CLOCK_MONOTONIC-ns pid step` to PATH. Nothing else is
/// written there, never a secret; without the variable it does nothing.
enum TakeoverTrace {
    static let variable = "CREDFS_TAKEOVER_TRACE"

    /// Opened once, close-on-exec (each process opens its own).
    private static let file: Int32 = {
        guard let path = getenv(variable), path.pointee != 0 else { return -1 }
        return open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
    }()

    static func mark(_ step: StaticString) {
        guard file >= 0 else { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let stamp = Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec)
        let line = Array("\(stamp) \(getpid()) \(step)\n".utf8)
        _ = line.withUnsafeBytes { write(file, $0.baseAddress, $0.count) }
    }
}
