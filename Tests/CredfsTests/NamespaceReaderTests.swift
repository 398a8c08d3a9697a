import Foundation
import Testing

/// A shell reader started in the background: `cat`s a field, waits for a flag file, `cat`s
/// it again. Its output goes to a file, read while it runs.
final class TwoReadsScript {
    let dir: TempDir
    let process = Process()
    var flag: String { dir.path + "/go" }
    var outputPath: String { dir.path + "/out" }

    static let script = """
        m=$1 flag=$2 name=$3
        cat "$m/$name"; echo
        while [ ! -e "$flag" ]; do sleep 0.02; done
        cat "$m/$name"; echo
        """

    /// `prefix` runs the shell (`setsid --wait`, `unshare …`).
    init(prefix: [String], mountpoint: String, name: String) throws {
        dir = try TempDir()
        FileManager.default.createFile(atPath: outputPath, contents: nil)
        let argv = prefix + ["/bin/sh", "-c", Self.script, "reader", mountpoint, flag, name]
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process.standardError = FileHandle.nullDevice
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    var lines: [String] {
        ((try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
    }

    /// Lets it read the second time and waits for it to end.
    func finish() throws -> [String] {
        FileManager.default.createFile(atPath: flag, contents: nil)
        try waitUntil("the reader to end") { !process.isRunning }
        return lines
    }

    func remove() {
        // SIGKILL: a child of a test thread starts with SIGTERM blocked. A bounded wait: a
        // failing test must end, not hang on its reader.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? waitUntil("the reader to end", timeout: 5) { !process.isRunning }
        dir.remove()
    }
}

/// The pid of `pid`'s first child (`unshare --fork` runs the program as its child).
func firstChild(of pid: pid_t) -> pid_t? {
    readProcFile("/proc/\(pid)/task/\(pid)/children")?.split(separator: " ").first.flatMap { pid_t($0) }
}

/// Readers and daemons in PID namespaces of their own (docs/contract.md, the pins): reads
/// work; a reader the daemon can see (its namespace is a child of the daemon's) is pinned
/// like any process group; a reader it cannot see (the daemon in a namespace of its own) is
/// not pinned.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct NamespaceReaderTests {
    /// Reads `token`, rotates the upstream, reads again; returns the two reads.
    func readAcrossARotation(
        _ daemon: Daemon, server: FakeCredentialServer, prefix: [String], hangup: () -> Void
    ) throws -> [String] {
        let reader = try TwoReadsScript(prefix: prefix, mountpoint: daemon.mountpoint, name: "token")
        defer { reader.remove() }
        // The pin's window is 10 s from the first read: everything below stays well inside it.
        try waitUntil("the first read", timeout: 5) { !reader.lines.isEmpty }
        server.rotate()
        hangup()
        try waitUntil("generation 2 for a new group", timeout: 5) {
            daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(2)
        }
        return try reader.finish()
    }

    @Test func aReaderInAChildPIDNamespaceReadsAndIsPinned() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        // Its own session (so no group of this test process) and its own PID namespace,
        // whose pids the daemon still sees (a child of the daemon's namespace).
        let reads = try readAcrossARotation(
            daemon, server: server, prefix: ["/usr/bin/setsid", "--wait", "/usr/bin/unshare", "--pid", "--fork"],
            hangup: { daemon.signal(SIGHUP) })
        #expect(
            reads == [FakeCredentialServer.token(1), FakeCredentialServer.token(1)],
            "the second read of a pinned group: \(reads.map { $0.prefix(8) })")
    }

    @Test func aReaderTheDaemonCannotSeeReadsAndIsNotPinned() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        // The daemon in a PID namespace of its own: every reader outside it has pid 0 in the
        // requests it gets.
        let daemon = try Daemon(
            ["--provider", "uri", "--uri", server.url],
            launcher: ["/usr/bin/unshare", "--pid", "--fork", "--kill-child=SIGTERM"])
        var inner: pid_t = 0
        defer {
            // SIGTERM to credfs itself (pid 1 of its namespace), then the usual stop.
            if inner > 0 { kill(inner, SIGTERM) }
            try? waitUntil("unshare to end", timeout: 10) { !daemon.process.isRunning }
            daemon.stop()
        }
        try waitUntil("credfs under unshare") {
            inner = firstChild(of: daemon.pid) ?? 0
            return inner > 0
        }
        try waitUntil("credentials") { try daemon.generation() == 1 }
        #expect(try daemon.status()["pid"] as? Int == 1, "credfs is pid 1 of its namespace")
        let reads = try readAcrossARotation(
            daemon, server: server, prefix: ["/usr/bin/setsid", "--wait"], hangup: { kill(inner, SIGHUP) })
        #expect(
            reads == [FakeCredentialServer.token(1), FakeCredentialServer.token(2)],
            "a reader the daemon cannot see is not pinned: \(reads.map { $0.prefix(8) })")
    }
}
