import CredentialCore
import Foundation
import Testing

@testable import credfs

/// Errors a test harness raises when a condition never came true.
struct HarnessError: Error, CustomStringConvertible {
    let description: String
}

/// Where the built `credfs` lives: next to this test bundle.
enum Binary {
    static let credfs: String = {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return exe.deletingLastPathComponent().appendingPathComponent("credfs").path
    }()
}

/// Polls `condition` until it holds or `timeout` passes. A wait for a condition, not a
/// sleep standing in for one.
func waitUntil(
    _ what: String, timeout: TimeInterval = 10, interval: TimeInterval = 0.02,
    _ condition: () throws -> Bool
) throws {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while Date() < deadline {
        if try condition() { return }
        usleep(useconds_t(interval * 1_000_000))
    }
    if try condition() { return }
    throw HarnessError(description: "timed out after \(timeout) s waiting for \(what)")
}

/// A read through plain POSIX calls, so the errno of a failed open or read is kept.
struct PosixRead: Equatable {
    var bytes: [UInt8]?
    var error: Int32 = 0
    var text: String? { bytes.map { String(decoding: $0, as: UTF8.self) } }
}

func readFile(_ path: String) -> PosixRead {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { return PosixRead(bytes: nil, error: errno) }
    defer { close(fd) }
    return readAll(fd)
}

func readAll(_ fd: Int32, chunk: Int = 4096) -> PosixRead {
    var out = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: chunk)
    while true {
        let n = read(fd, &buffer, chunk)
        if n < 0 { return PosixRead(bytes: nil, error: errno) }
        if n == 0 { return PosixRead(bytes: out) }
        out += buffer[0..<n]
    }
}

/// True when `path` is the mount point of a live mount in /proc/mounts.
func isMounted(_ path: String) -> Bool {
    guard let mounts = readProcFile("/proc/mounts") else {
        return false
    }
    return mounts.split(separator: "\n").contains {
        $0.split(separator: " ").dropFirst().first.map(String.init) == path
    }
}

/// The whole of a /proc file (the daemon's own reader: `String(contentsOfFile:)` stops after
/// the first 4 KiB of a procfs file).
func readProcFile(_ path: String) -> String? { SmallFile.text(path) }

/// Runs `credfs` to completion, capturing its output.
struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

func runCredfs(_ arguments: [String], environment: [String: String]? = nil) throws -> CommandResult {
    try runProcess(Binary.credfs, arguments, environment: environment)
}

/// Runs a program to completion with stdin on /dev/null, capturing stdout and stderr in
/// files, not pipes: a daemon started by `mount` inherits stderr and would hold a pipe open.
func runProcess(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws
    -> CommandResult
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = environment ?? Host.hermeticEnvironment
    let dir = try TempDir()
    defer { dir.remove() }
    let out = dir.path + "/stdout"
    let err = dir.path + "/stderr"
    FileManager.default.createFile(atPath: out, contents: nil)
    FileManager.default.createFile(atPath: err, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
    process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
    process.standardInput = FileHandle.nullDevice
    try process.run()
    process.waitUntilExit()
    return CommandResult(
        status: process.terminationStatus,
        stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
        stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "")
}

/// Fake servers in this process write to sockets a client may have closed (a body cut at
/// 64 KiB): that must be EPIPE, not a SIGPIPE that ends the whole test run. The daemon
/// ignores SIGPIPE the same way (Entry.swift).
let ignoringSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN) }()

/// A temporary directory, removed by ``remove()``.
struct TempDir {
    let path: String
    init() throws {
        _ = ignoringSIGPIPE
        var template = Array("/tmp/credfs-test-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw HarnessError(description: "mkdtemp failed") }
        path = String(cString: made)
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// A `credfs mount -f` daemon on a temporary mount point. ``stop()`` always leaves the
/// mount point unmounted and removed, also when a test fails half-way.
final class Daemon {
    let dir: TempDir
    let mountpoint: String
    let logPath: String
    let process: Process
    /// False when another daemon will reuse the directory after this one.
    var removesDirectory = true

    /// Starts the daemon and waits until the mount answers. `launcher` runs it (`unshare …`,
    /// `setpriv …`): its argv, then credfs's.
    init(
        _ arguments: [String], environment: [String: String]? = nil, waitForMount: Bool = true,
        in existing: TempDir? = nil, launcher: [String] = []
    ) throws {
        dir = try existing ?? TempDir()
        mountpoint = dir.path + "/mnt"
        logPath = dir.path + "/credfs.log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process = Process()
        let argv = launcher + [Binary.credfs, "mount", mountpoint, "-f"] + arguments
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.environment = environment ?? Host.hermeticEnvironment
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        process.standardOutput = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
        if waitForMount {
            do {
                try waitUntil("the mount at \(mountpoint)") {
                    guard process.isRunning else {
                        throw HarnessError(description: "credfs exited: \(log)")
                    }
                    return isMounted(mountpoint)
                }
            } catch {
                stop()
                throw error
            }
        }
    }

    private var finalLog: String?
    /// What the daemon wrote to stderr (kept after ``stop()``).
    var log: String { finalLog ?? (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
    var pid: pid_t { process.processIdentifier }

    func path(_ name: String) -> String { mountpoint + "/" + name }
    func read(_ name: String) -> PosixRead { readFile(path(name)) }

    /// Reads a file from a new process group (`setsid cat`), so no generation pin that this
    /// test process holds applies.
    func readAsNewGroup(_ name: String) -> String? { readFileAsNewGroup(path(name)) }

    /// The `status` view, parsed.
    func status() throws -> [String: Any] {
        let read = read("status")
        guard let bytes = read.bytes else {
            throw HarnessError(description: "status unreadable: errno \(read.error)")
        }
        guard let object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw HarnessError(description: "status is not a JSON object")
        }
        return object
    }

    func generation() throws -> Int { try status()["generation"] as? Int ?? -1 }

    /// Waits for generation 1 and checks it: `credentials` is the fakes' generation 1 byte
    /// for byte, and `status` names `provider`. Returns the `expiration` file.
    @discardableResult
    func expectFirstGeneration(provider: String) throws -> String {
        try waitUntil("generation 1") { try generation() == 1 }
        let expiration = try #require(read("expiration").text)
        #expect(read("credentials").text == expectedCredentialsFile(generation: 1, expiration: expiration))
        #expect(try status()["provider"] as? String == provider)
        return expiration
    }
    func state() throws -> String { try status()["state"] as? String ?? "?" }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// SIGTERM, wait for exit (killing it after 5 s), and make sure nothing stays mounted.
    @discardableResult
    func stop() -> (exited: Bool, seconds: TimeInterval) {
        let start = Date()
        if process.isRunning {
            kill(process.processIdentifier, SIGTERM)
        }
        var exited = true
        do {
            try waitUntil("credfs to exit", timeout: 5) { !process.isRunning }
        } catch {
            exited = false
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        let seconds = Date().timeIntervalSince(start)
        finalLog = log
        if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        if removesDirectory { dir.remove() }
        return (exited, seconds)
    }
}

/// Runs `argv` as another user (setpriv, no supplementary groups).
func runAs(uid: uid_t, gid: gid_t, _ argv: [String]) throws -> CommandResult {
    try runProcess("/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--"] + argv)
}

/// What this machine allows, for tests that need more than a process: a skipped test says
/// why instead of failing (or passing without running).
enum Host {
    /// Root and `/dev/fuse`: real mounts.
    static let canMount: Bool = geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0
    static let canMountReason: Comment = "needs root and /dev/fuse to mount"

    /// The FUSE control filesystem (`/sys/fs/fuse/connections`): a connection's `waiting`
    /// count and its `abort` switch. `scripts/test` mounts it; systemd machines have it.
    static let hasFuseControl: Bool =
        canMount
        && (readProcFile("/proc/self/mountinfo")?.split(separator: "\n").contains {
            $0.split(separator: " ").dropFirst(4).first == "/sys/fs/fuse/connections"
        } ?? false)
    static let hasFuseControlReason: Comment =
        "needs the FUSE control filesystem at /sys/fs/fuse/connections (scripts/test mounts it)"

    /// overlayfs, for a private view of a system directory in a mount namespace. A kernel
    /// that has it as a module not loaded yet gets it loaded (`modprobe overlay`).
    static let hasOverlay: Bool = {
        func listed() -> Bool {
            readProcFile("/proc/filesystems")?.contains("\toverlay") ?? false
        }
        guard canMount else { return false }
        if listed() { return true }
        let candidates: [String] = ["/usr/sbin/modprobe", "/sbin/modprobe"]
        let modprobe = candidates.first { access($0, X_OK) == 0 }
        guard let modprobe, (try? runProcess(modprobe, ["overlay"]))?.status == 0 else { return false }
        return listed()
    }()
    static let hasOverlayReason: Comment =
        "needs root and overlayfs: not in /proc/filesystems, and `modprobe overlay` did not load it"

    /// Names, sizes, modes and mtimes of what `paths` hold (one level down): equal before and
    /// after a test run means the run changed none of them.
    static func fingerprint(_ paths: [String]) -> [String] {
        var lines: [String] = []
        for dir in paths {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
            for name in names.sorted() {
                var st = stat()
                guard lstat(dir + "/" + name, &st) == 0 else { continue }
                lines.append("\(dir)/\(name) \(st.st_mode) \(st.st_size) \(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)")
            }
        }
        return lines
    }

    /// The environment tests hand to credfs: this process's, less anything that would make
    /// the daemon depend on the machine (credentials, a service manager, a proxy).
    static var hermeticEnvironment: [String: String] {
        ProcessInfo.processInfo.environment.filter { key, _ in
            !key.hasPrefix("ALIBABA_CLOUD_")
                && !["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"].contains(key)
                && !key.lowercased().hasSuffix("_proxy")
        }
    }
}

/// Reads `path` from a new process group (`setsid cat`), as a new script would, so no
/// generation pin that this test process holds applies.
func readFileAsNewGroup(_ path: String) -> String? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
    process.arguments = ["--wait", "cat", path]
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return nil }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return process.terminationStatus == 0 ? String(decoding: data, as: UTF8.self) : nil
}

/// A port on 127.0.0.1 that nothing listened on a moment ago (bound, read, closed).
func unusedLoopbackPort() -> Int {
    let (fd, port) = boundLoopbackSocket()
    close(fd)
    return port
}

/// A TCP socket bound to a free port on 127.0.0.1, and that port.
func boundLoopbackSocket() -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
    }
    _ = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
