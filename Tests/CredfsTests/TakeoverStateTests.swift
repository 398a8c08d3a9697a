import CFuse3
import CPosixIPC
import Foundation
import Synchronization
import Testing

@testable import credfs

/// The state a takeover carries, through real mounts (docs/hitless.md, "What is carried,
/// and its bounds" and "The push rule"): a stalled or never-reading service manager delays
/// pushes, never refreshes or reads; a flood of open handles by an unprivileged user keeps
/// the server small and the pushes small; a successor without a readable state, or with a
/// state older than what the kernel saw, never numbers a generation (so an inode) again.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(5)))
struct TakeoverStateTests {
    static func log(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    static func status(_ mountpoint: String) -> [String: Any]? {
        guard let bytes = readFile(mountpoint + "/status").bytes else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
    }

    static func generation(_ mountpoint: String) -> Int { status(mountpoint)?["generation"] as? Int ?? -1 }

    /// Fills a datagram socket's queue (sends that would wait fail instead).
    static func fillQueue(_ name: String) {
        var sent = 0
        while sent < 10_000, credfs_send_fds(name, "x", 1, nil, 0) == 0 { sent += 1 }
    }

    /// The supervisor stopped (SIGSTOP): its queue fills, pushes cannot go, and still the
    /// refresher goes on (a new generation every ~2 s) and every read is valid. After
    /// SIGCONT the latest state reaches the store, and a kill -9 of the server is taken over
    /// with the latest generation.
    @Test func aStoppedSupervisorDelaysPushesNeverRefreshes() async throws {
        let server = FakeCredentialServer(lifetime: 10, rotateOnEachRequest: true)
        try await server.start()
        let logDir = try TempDir()
        defer { logDir.remove() }
        let logFile = logDir.path + "/credfs.log"
        let mount = try Supervised([
            "--provider", "uri", "--uri", server.url, "--refresh-before", "8", "--log-file", logFile,
        ])
        defer { try? mount.stop() }
        try waitUntil("the first credentials") { Self.generation(mount.mountpoint) >= 1 }
        try #require(mount.supervisor > 0)
        let readers = Readers(path: mount.path("credentials"), count: 2)
        kill(mount.supervisor, SIGSTOP)
        var stopped = true
        defer { if stopped { kill(mount.supervisor, SIGCONT) } }
        // New process groups reading a secret field: a pin, so a push, each; they fill the
        // stopped supervisor's queue however large it is.
        let pinning = Atomic<Bool>(true)
        let field = mount.path("access_key_id")
        let pinner = Thread {
            while pinning.load(ordering: .relaxed) { _ = readFileAsNewGroup(field) }
        }
        pinner.start()
        defer { pinning.store(false, ordering: .relaxed) }
        try waitUntil("a push the stopped supervisor cannot take", timeout: 30) {
            Self.log(logFile).contains("does not take the state now")
        }
        pinning.store(false, ordering: .relaxed)
        let blocked = Self.generation(mount.mountpoint)
        try waitUntil("three more generations while the supervisor is stopped", timeout: 30) {
            Self.generation(mount.mountpoint) >= blocked + 3
        }
        let tally = try readers.stop()
        #expect(tally.failures.isEmpty, "\(tally.failures.prefix(5))")
        kill(mount.supervisor, SIGCONT)
        stopped = false

        let target = Self.generation(mount.mountpoint)
        try SupervisorStore.waitFor("generation \(target)", supervisor: mount.supervisor) { state in
            (state["credentials"] as? [String: Any])?["generation"] as? Int ?? 0 >= target
        }
        #expect(Self.log(logFile).contains("the service manager takes the state again"))
        let old = try mount.serverPID()
        kill(old, SIGKILL)
        try waitUntil("a successor", timeout: 10) { (try? mount.serverPID()).map { $0 != old && $0 > 0 } ?? false }
        let status = try mount.status()
        #expect(status["generation"] as? Int ?? 0 >= target)
        #expect(status["restarts"] as? Int == 1)
        #expect(["restored", "behind"].contains(status["carriedState"] as? String ?? ""), "\(status)")
        Timings.report(
            "stopped supervisor: generations \(blocked) -> \(target) while stopped, \(tally.reads) reads, 0 failed; successor at \(status["generation"] ?? "?") (\(status["carriedState"] ?? "?"))"
        )
    }

    /// A service manager that never reads (its queue full): the same, with the fd store
    /// protocol alone. Then it reads again, and a kill -9 is taken over with the latest
    /// generation.
    @Test func aStoreThatNeverReadsDelaysPushesNeverRefreshes() async throws {
        let server = FakeCredentialServer(lifetime: 10, rotateOnEachRequest: true)
        try await server.start()
        let mount = try ManagedMount(["--provider", "uri", "--uri", server.url, "--refresh-before", "8"])
        defer { mount.cleanup() }
        let first = try mount.start()
        try waitUntil("the connection and generation 1 in the store") {
            mount.newestStored >= 1 && mount.manager.has("fuse") && mount.manager.has("floor")
        }
        Self.fillQueue(mount.manager.name)
        let readers = Readers(path: mount.mountpoint + "/credentials", count: 2)
        try waitUntil("a push the full queue cannot take", timeout: 30) {
            mount.logText.contains("does not take the state now")
        }
        let blocked = mount.generation
        try waitUntil("three more generations while nothing is read", timeout: 30) {
            mount.generation >= blocked + 3
        }
        let tally = try readers.stop()
        #expect(tally.failures.isEmpty, "\(tally.failures.prefix(5))")

        let target = mount.generation
        try waitUntil("the latest state in the store") { mount.newestStored >= target }
        mount.killNine(first)
        #expect(mount.storedGenerations.count <= StateSender.storedAtMost)
        let second = try mount.start()
        try waitUntil("the successor to serve") { mount.status?["pid"] as? Int == Int(second) }
        let taken = try #require(mount.status)
        #expect(taken["generation"] as? Int ?? 0 >= target)
        #expect(taken["restarts"] as? Int == 1)
        #expect(mount.terminate(second) == 0)
        Timings.report(
            "store never reading: generations \(blocked) -> \(target), \(tally.reads) reads, 0 failed; successor at \(taken["generation"] ?? "?") (\(taken["carriedState"] ?? "?"))"
        )
    }

    /// The push rule's fallback: the store cannot take the push of a new generation (its
    /// queue is full), the generation is served anyway, and the server is killed before the
    /// push went. The successor finds a state one generation behind, and the floor: it
    /// serves the carried credentials under a number above every one the kernel may have
    /// seen, refreshes at once, and never numbers a generation 2 again.
    @Test func aPushThatNeverWentIsCoveredByTheFloor() async throws {
        let server = FakeCredentialServer(rotateOnEachRequest: true)
        try await server.start()
        let mount = try ManagedMount(["--provider", "uri", "--uri", server.url])
        defer { mount.cleanup() }
        let first = try mount.start()
        try waitUntil("generation 1 in the store") {
            mount.newestStored == 1 && mount.manager.has("fuse") && mount.manager.has("floor")
        }
        let mountedAt = mount.status?["mountedAt"] as? String
        Self.fillQueue(mount.manager.name)
        kill(first, SIGHUP)
        try waitUntil("generation 2 served") { mount.generation == 2 }
        #expect(readFile(mount.mountpoint + "/access_key_id").text == FakeCredentialServer.accessKeyId(2))
        mount.killNine(first)
        #expect(mount.storedGenerations.values.max() == 1, "the push of generation 2 did not go")

        let second = try mount.start()
        try waitUntil("the successor to serve") { mount.status?["pid"] as? Int == Int(second) }
        let served = mount.generation
        #expect(served > 2, "the successor's first generation is \(served)")
        var seen = [served]
        try waitUntil("the successor's refresh") {
            guard let status = mount.status, status["pid"] as? Int == Int(second) else { return false }
            if let generation = status["generation"] as? Int, seen.last != generation { seen.append(generation) }
            return status["upstreamRequests"] as? Int ?? 0 >= 3 && status["state"] as? String == "fresh"
        }
        let taken = try #require(mount.status)
        #expect(taken["carriedState"] as? String == "behind", "\(taken)")
        #expect(!seen.contains { $0 <= 2 }, "a generation was numbered again: \(seen)")
        #expect(taken["generation"] as? Int == 4, "\(taken)")
        #expect(taken["restarts"] as? Int == 1)
        #expect(taken["mountedAt"] as? String == mountedAt)
        #expect(readFileAsNewGroup(mount.mountpoint + "/access_key_id") == FakeCredentialServer.accessKeyId(3))
        #expect(mount.logText.contains("older than the generation it announced"))
        #expect(mount.terminate(second) == 0)
        Timings.report("push that never went: successor served generations \(seen)")
    }

    /// A successor whose store holds no readable state (`unreadable`: a state that is not
    /// one; `missing`: none at all) says so in `status` and the log, and still never goes
    /// back: generations continue above the floor, `restarts`, `upstreamRequests` and
    /// `mountedAt` carry on.
    @Test(arguments: ["unreadable", "missing"])
    func aSuccessorWithoutAReadableStateNeverGoesBack(_ problem: String) async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let mount = try ManagedMount(["--provider", "uri", "--uri", server.url])
        defer { mount.cleanup() }
        let first = try mount.start()
        try waitUntil("the first credentials") { mount.generation == 1 }
        server.rotate()
        kill(first, SIGHUP)
        try waitUntil("generation 2 in the store") { mount.generation == 2 && mount.newestStored == 2 }
        let before = try #require(mount.status)
        mount.killNine(first)
        // The store loses the state (or holds one that is not a state).
        for entry in mount.manager.store where entry.name.hasPrefix("state.") { close(entry.fd) }
        mount.manager.store.removeAll { $0.name.hasPrefix("state.") }
        if problem == "unreadable" {
            let junk = MemoryFile.make(name: "credfs-state", bytes: Array("{\"format\": \"no\"".utf8))
            mount.manager.store.append(("state.99", junk))
        }

        let second = try mount.start()
        try waitUntil("the successor's credentials") {
            mount.status?["pid"] as? Int == Int(second) && mount.status?["state"] as? String == "fresh"
        }
        let after = try #require(mount.status)
        #expect(after["carriedState"] as? String == problem, "\(after)")
        #expect(after["generation"] as? Int == 3, "generations continue above the floor: \(after)")
        #expect(after["restarts"] as? Int == 1)
        #expect(after["upstreamRequests"] as? Int == (before["upstreamRequests"] as? Int ?? 0) + 1)
        #expect(after["mountedAt"] as? String == before["mountedAt"] as? String)
        #expect(readFileAsNewGroup(mount.mountpoint + "/access_key_id") == FakeCredentialServer.accessKeyId(2))
        #expect(mount.logText.contains("taking over without the previous server's state"))
        #expect(!mount.logText.contains(FakeCredentialServer.secret(2)))
        #expect(mount.terminate(second) == 0)
    }

    static let holderSource = """
        #include <fcntl.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            if (argc < 3) return 2;
            int wanted = atoi(argv[2]), held = 0;
            while (held < wanted && open(argv[1], O_RDONLY) >= 0) held++;
            printf("%d\\n", held);
            fflush(stdout);
            pause();
            return 0;
        }
        """

    /// The resident size of `pid` in bytes (VmRSS).
    static func residentBytes(_ pid: pid_t) -> Int {
        guard let text = readProcFile("/proc/\(pid)/status"),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return -1 }
        return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? -1) * 1024
    }

    /// The supervisor's stored state memfds: inode number and size of each.
    static func storedStates(_ supervisor: pid_t) -> [(inode: UInt64, size: Int)] {
        let dir = "/proc/\(supervisor)/fd"
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return entries.compactMap { entry in
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + entry),
                target.hasPrefix("/memfd:credfs-state")
            else { return nil }
            var st = stat()
            guard stat(dir + "/" + entry, &st) == 0 else { return nil }
            return (UInt64(st.st_ino), Int(st.st_size))
        }
    }

    /// `nobody` holds 36,000 open handles of `status` (four processes): the server stays
    /// under 64 MiB, opening and releasing pushes nothing, the carried state stays small,
    /// and an upgrade keeps the generation and the counts.
    @Test func aFloodOfOpenHandlesStaysBounded() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let build = try TempDir()
        defer { build.remove() }
        let source = build.path + "/holder.c"
        try Self.holderSource.write(toFile: source, atomically: true, encoding: .utf8)
        let holder = build.path + "/holder"
        let compiled = try runProcess("/usr/bin/cc", ["-O", "-o", holder, source])
        try #require(compiled.status == 0, "\(compiled.stderr)")
        chmod(build.path, 0o755)

        let logFile = build.path + "/credfs.log"
        let mount = try Supervised([
            "--provider", "uri", "--uri", server.url, "--allow-other", "--log-file", logFile, "--log-level", "debug",
        ])
        defer { try? mount.stop() }
        chmod(mount.dir.path, 0o755)
        try waitUntil("the first credentials") { Self.generation(mount.mountpoint) == 1 }
        try SupervisorStore.waitFor("generation 1", supervisor: mount.supervisor) { state in
            (state["credentials"] as? [String: Any])?["generation"] as? Int == 1
        }
        let server1 = try mount.serverPID()
        func pushes() -> Int { Self.log(logFile).components(separatedBy: "state pushed").count - 1 }
        let pushedBefore = pushes()
        let rssBefore = Self.residentBytes(server1)

        let perProcess = 9000
        var holders: [Process] = []
        defer { holders.forEach { kill($0.processIdentifier, SIGKILL) } }
        var pipes: [Pipe] = []
        for _ in 0..<4 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
            process.arguments = [
                "--nofile=\(perProcess + 100):\(perProcess + 100)", "/usr/bin/setpriv", "--reuid=65534",
                "--regid=65534", "--clear-groups", "--", holder, mount.path("status"), String(perProcess),
            ]
            let pipe = Pipe()
            process.standardOutput = pipe
            process.standardError = FileHandle.nullDevice
            try process.run()
            holders.append(process)
            pipes.append(pipe)
        }
        var held = 0
        for pipe in pipes {
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = pipe.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line += chunk
            }
            held += Int(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        #expect(held == 4 * perProcess, "nobody holds \(held) handles")
        let rss = Self.residentBytes(server1)
        #expect(rss > 0 && rss <= 64 << 20, "server RSS \(rss >> 20) MiB with \(held) handles")
        // A held descriptor of nobody still reads a whole status.
        let afterFlood = try mount.status()
        #expect(afterFlood["generation"] as? Int == 1)
        let states = Self.storedStates(mount.supervisor)
        // At most the push that follows the first publication, which may come after the wait.
        #expect(pushes() - pushedBefore <= 1, "opening status pushed \(pushes() - pushedBefore) states")
        let largest = states.map(\.size).max() ?? 0
        #expect(largest > 0 && largest <= CarriedState.pushLimit, "a stored state of \(largest) bytes")

        // An upgrade with the handles held: the same generation and counts.
        let mine = open(mount.path("status"), O_RDONLY)
        #expect(mine >= 0)
        defer { close(mine) }
        let result = try runCredfs(["upgrade", mount.mountpoint, "--binary", Binary.credfs])
        #expect(result.status == 0, "\(result.stderr)")
        let upgraded = try mount.status()
        #expect(upgraded["pid"] as? Int != Int(server1))
        #expect(upgraded["generation"] as? Int == 1)
        #expect(upgraded["upstreamRequests"] as? Int == afterFlood["upstreamRequests"] as? Int)
        #expect(upgraded["restarts"] as? Int == 1)
        #expect(upgraded["carriedState"] as? String == "restored")
        #expect(server.requests == 1)
        let reread = readAll(mine)
        let object = reread.bytes.flatMap { try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any] }
        #expect(object?["generation"] as? Int == 1, "a status handle held across the upgrade")
        let pushed = Self.storedStates(mount.supervisor).map(\.size).max() ?? 0
        #expect(pushed > 0 && pushed <= CarriedState.pushLimit)
        let rss2 = Self.residentBytes(pid_t(upgraded["pid"] as? Int ?? 0))
        #expect(rss2 > 0 && rss2 <= 64 << 20, "successor RSS \(rss2 >> 20) MiB")
        holders.forEach { kill($0.processIdentifier, SIGKILL) }
        holders.forEach { $0.waitUntilExit() }
        holders = []
        Timings.report(
            "open-handle flood: \(held) handles by nobody; server RSS \(rssBefore >> 10) KiB -> \(rss >> 10) KiB; stored state \(largest) bytes (after the upgrade \(pushed)); successor RSS \(rss2 >> 10) KiB"
        )
    }
}

/// A `credfs mount -f` under a ``FakeServiceManager`` (the fd store protocol alone): its
/// directory, log, the servers started, and a cleanup that leaves nothing mounted.
final class ManagedMount {
    let manager: FakeServiceManager
    let dir: TempDir
    let mountpoint: String
    let log: String
    let arguments: [String]
    private(set) var pids: [pid_t] = []

    init(_ options: [String]) throws {
        manager = try FakeServiceManager()
        dir = try TempDir()
        mountpoint = dir.path + "/mnt"
        log = dir.path + "/credfs.log"
        arguments = ["mount", mountpoint, "-f"] + options + ["--log-file", log]
    }

    /// Starts a server with what the store holds now (none: the first server).
    func start() throws -> pid_t {
        let pid = try manager.start(arguments, log: dir.path + "/stderr")
        pids.append(pid)
        return pid
    }

    /// SIGKILL, reaped; then the store takes what the server sent.
    func killNine(_ pid: pid_t) {
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        pids.removeAll { $0 == pid }
        manager.pump()
    }

    /// SIGTERM; the exit status.
    func terminate(_ pid: pid_t) -> Int32 {
        kill(pid, SIGTERM)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        pids.removeAll { $0 == pid }
        return status
    }

    func cleanup() {
        pids.forEach { kill($0, SIGKILL) }
        if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        dir.remove()
    }

    var status: [String: Any]? { TakeoverStateTests.status(mountpoint) }
    var generation: Int { TakeoverStateTests.generation(mountpoint) }
    var logText: String { TakeoverStateTests.log(log) }

    /// The generation each `state.N` in the store carries, by N.
    var storedGenerations: [Int: Int] {
        var result: [Int: Int] = [:]
        for (name, fd) in manager.store where name.hasPrefix("state.") {
            guard let sequence = Int(name.dropFirst(6)), let bytes = MemoryFile.read(fd),
                let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
            else { continue }
            result[sequence] = (object["credentials"] as? [String: Any])?["generation"] as? Int ?? 0
        }
        return result
    }

    /// The newest generation any state in the store carries (after taking what was sent).
    var newestStored: Int {
        manager.pump()
        return storedGenerations.values.max() ?? -1
    }
}
