import Foundation
import Testing

@testable import credfs

/// A kill -9 at the worst moment, with no supervisor and no fd store: a reader's lookup in
/// progress (its request held unanswered: `Tests/hostile/hold_fuse_workers.c` stops the
/// server's request workers) and a rotation's invalidation right behind it. An entry
/// invalidation waits for the directory's lock that lookup holds, uninterruptibly: the
/// killed process cannot end, and nothing reaps it until the reader is signalled
/// (docs/hitless.md). With `FUSE_NOTIFY_INC_EPOCH` (Linux 6.16+) nothing waits, and the
/// process is reaped at once.
@Suite(
    .serialized, .enabled(if: Host.canMount, Host.canMountReason),
    .enabled(if: KernelRelease.hasEpoch, "FUSE_NOTIFY_INC_EPOCH needs Linux 6.16 or later"))
struct InvalidationKillTests {
    static let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("hostile/hold_fuse_workers.c").path

    /// Threads of `pid` with their name and kernel stack.
    static func threads(_ pid: pid_t) -> [(tid: String, name: String, stack: String)] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.map { tid in
            let base = "/proc/\(pid)/task/\(tid)/"
            let name = (readProcFile(base + "comm") ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            return (tid, name, readProcFile(base + "stack") ?? "")
        }
    }

    /// A thread of `pid` waits in the kernel in an entry invalidation.
    static func invalidationBlocked(_ pid: pid_t) -> Bool {
        threads(pid).contains { $0.stack.contains("inval_entry") }
    }

    /// The invalidation thread's voluntary context switches, when it sleeps in `poll`.
    static func invalidatorSleeps(_ pid: pid_t) -> Int? {
        guard let thread = threads(pid).first(where: { $0.name == "fuse-inval" }),
            thread.stack.contains("poll"),
            let status = readProcFile("/proc/\(pid)/task/\(thread.tid)/status"),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("voluntary_ctxt_switches:") })
        else { return nil }
        return Int(line.split(separator: ":").last?.trimmingCharacters(in: .whitespaces) ?? "")
    }

    @Test func aKillWhileAnInvalidationMeetsAHeldLookupLeavesNothingUnreaped() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let hold = dir.path + "/hold_fuse_workers"
        let compiled = try runProcess("/usr/bin/cc", ["-O2", "-o", hold, Self.source])
        try #require(compiled.status == 0, "\(compiled.stderr)")

        let server = FakeCredentialServer()
        try await server.start()
        defer { Task { await server.stop() } }
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        let pid = daemon.pid
        var reader: Process?
        var holder: Process?
        defer {
            // Whatever happened: the reader's signal frees a held invalidation, then the
            // workers go, then the daemon.
            if let reader, reader.isRunning { kill(reader.processIdentifier, SIGKILL) }
            if let holder, holder.isRunning { kill(holder.processIdentifier, SIGTERM) }
            reader?.waitUntilExit()
            holder?.waitUntilExit()
            daemon.stop()
        }
        try waitUntil("generation 1") { (try? daemon.generation()) == 1 }
        // Until the first generation's invalidation is done and the thread sleeps again.
        // (Code without that thread has none: then `before` stays nil.)
        var before: Int?
        try? waitUntil("the invalidation thread to sleep", timeout: 5) {
            before = Self.invalidatorSleeps(pid)
            return before != nil
        }

        // The request workers stop: nothing on the connection is answered from now on.
        let held = dir.path + "/held"
        FileManager.default.createFile(atPath: held, contents: nil)
        let holding = Process()
        holding.executableURL = URL(fileURLWithPath: hold)
        holding.arguments = ["\(pid)"]
        holding.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: held))
        try holding.run()
        holder = holding
        try waitUntil("the workers held") {
            (try? String(contentsOfFile: held, encoding: .utf8))?.hasPrefix("held ") == true
        }
        // The loop's thread and at least one worker.
        let count = Int(
            ((try? String(contentsOfFile: held, encoding: .utf8)) ?? "").dropFirst(5).prefix { $0.isNumber })
        try #require((count ?? 0) >= 2, "held \(count ?? 0) threads")

        // A first lookup of a name takes the directory's lock and waits for an answer.
        let reading = Process()
        reading.executableURL = URL(fileURLWithPath: "/bin/cat")
        reading.arguments = [daemon.path("access_key_id")]
        reading.standardOutput = FileHandle.nullDevice
        reading.standardError = FileHandle.nullDevice
        try reading.run()
        reader = reading
        try waitUntil("the reader's lookup to wait for the server") {
            (readProcFile("/proc/\(reading.processIdentifier)/stack") ?? "").contains("request_wait_answer")
        }

        // A rotation: the refresher publishes generation 2 and invalidates the names.
        server.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("the upstream's second answer") { server.requests >= 2 }
        try waitUntil("the rotation's invalidation (held, or delivered)") {
            if Self.invalidationBlocked(pid) { return true }
            guard let before, let now = Self.invalidatorSleeps(pid) else { return false }
            return now > before
        }
        let blocked = Self.invalidationBlocked(pid)

        kill(pid, SIGKILL)
        let killed = Date()
        var reaped = true
        do {
            try waitUntil("the killed server to be reaped", timeout: 10) { !daemon.process.isRunning }
        } catch {
            reaped = false
        }
        #expect(
            reaped,
            "kill -9 left the server unreaped for 10 s (an invalidation thread held: \(blocked); threads: \(Self.threads(pid).map { "\($0.name): \($0.stack.split(separator: "\n").prefix(3).joined(separator: " < "))" }))"
        )
        #expect(!blocked, "an entry invalidation waited behind the held lookup")
        if reaped {
            print("reaped \(Int(Date().timeIntervalSince(killed) * 1000)) ms after the kill")
        }
    }
}

enum KernelRelease {
    /// Linux 6.16 or later (FUSE protocol 7.44, `FUSE_NOTIFY_INC_EPOCH`).
    static let hasEpoch: Bool = {
        var names = utsname()
        uname(&names)
        let release = withUnsafeBytes(of: names.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return (parts[0], parts[1]) >= (6, 16)
    }()
}
