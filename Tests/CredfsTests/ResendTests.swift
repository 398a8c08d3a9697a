import CFuse3
import Foundation
import Posix
import Synchronization
import Testing

/// A request the dead server had read but not answered (docs/hitless.md, "Without RESEND").
/// Made to exist on purpose, not by a kill at a random moment: the upstream does not answer
/// yet, so the server parks three opens of `credentials` (status `parkedRequests` = 3: read
/// from /dev/fuse, not answered); the server is stopped (SIGSTOP, so it cannot answer them
/// any more), the upstream is told to answer, the server is killed (SIGKILL) and the
/// supervisor's successor takes over. With `FUSE_NOTIFY_RESEND` the kernel queues the three
/// again and the successor answers them; with `CREDFS_NO_RESEND=1` (what a kernel before
/// 6.9 does) they stay unanswered while the successor answers everything else, until the
/// connection's last descriptor closes (or it is aborted). Every "still blocked" below is
/// checked after a condition that came later (the successor answered more requests), never
/// after a sleep.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason))
struct ResendTests {
    /// A child process that reads `credentials` once, spawned with every signal at its
    /// default action and none blocked (a test thread may block some, and a child would
    /// inherit that).
    struct Reader {
        let name: String
        let pid: pid_t
        let output: String

        init(_ name: String, _ argv: [String], output: String) throws {
            self.name = name
            self.output = output
            // Spawn starts every child with each signal at its default action, none blocked.
            let fd = open(output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw HarnessError(description: "open \(output): \(errno)") }
            defer { close(fd) }
            var spawn = Spawn(executable: argv[0], arguments: argv)
            spawn.stdout = .descriptor(fd)
            spawn.stderr = .descriptor(fd)
            switch spawn.start() {
            case .success(let child): pid = child
            case .failure(let error): throw HarnessError(description: "spawn \(argv[0]): \(error)")
            }
        }

        /// The state letter of /proc/PID/stat (S, D, Z…), nil once reaped.
        var state: String? {
            guard let text = readProcFile("/proc/\(pid)/stat"), let close = text.range(of: ")", options: .backwards)
            else { return nil }
            return text[close.upperBound...].split(separator: " ").first.map(String.init)
        }

        var wchan: String { readProcFile("/proc/\(pid)/wchan") ?? "?" }

        /// Waiting for the FUSE answer: alive, in `request_wait_answer`.
        var blocked: Bool { isAlive(pid) && wchan == "request_wait_answer" }

        var text: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }

        /// Reaps the child once it is gone (a zombie): its wait status.
        func reap() -> Int32? {
            var status: Int32 = 0
            return waitpid(pid, &status, WNOHANG) == pid ? status : nil
        }
    }

    /// The setup both tests share: a supervised mount with three opens parked in its server,
    /// then the server stopped and killed and a successor serving.
    final class ParkedTakeover {
        let upstream = FakeCredentialServer()
        var mount: Supervised?
        var readers: [Reader] = []
        var connection = 0
        var killed = Date()
        var successor: pid_t = 0

        var mountpoint: String { mount?.mountpoint ?? "/nonexistent" }

        func start(resend: Bool) async throws {
            upstream.setBehaviour(.hang)
            try await upstream.start()
            var environment = Host.hermeticEnvironment
            if resend {
                environment["CREDFS_NO_RESEND"] = nil
            } else {
                environment["CREDFS_NO_RESEND"] = "1"
            }
            let mount = try Supervised(
                ["--provider", "uri", "--uri", upstream.url, "--initial-wait", "1h"], environment: environment)
            self.mount = mount
            // The minor number of st_dev is the connection's number in /sys/fs/fuse/connections.
            let device = mount.device()
            connection = Int((device & 0xff) | ((device >> 12) & 0xfff00))
            let file = mount.path("credentials")
            let dir = mount.dir.path
            readers = [
                // A shell that handles SIGINT, reading with a redirection (its own open).
                try Reader(
                    "A",
                    [
                        "/bin/sh", "-c", "trap 'echo SIGINT handled' INT; read -r line <\"$0\" && echo \"read $line\"",
                        file,
                    ],
                    output: dir + "/A"),
                try Reader("B", ["/bin/cat", file], output: dir + "/B"),
                try Reader("C", ["/bin/cat", file], output: dir + "/C"),
            ]
            try waitUntil("three opens parked in the server", timeout: 10) {
                (try? mount.status()["parkedRequests"] as? Int) == 3
            }
            #expect(
                readers.allSatisfy { $0.blocked }, "\(readers.map { "\($0.name): \($0.state ?? "-") \($0.wchan)" })")
            #expect(waiting() >= 3)

            let server = try mount.serverPID()
            kill(server, SIGSTOP)  // it can no longer answer what it parked
            upstream.setBehaviour(.serve)
            killed = Date()
            kill(server, SIGKILL)
            try waitUntil("a successor", timeout: 10) {
                (try? mount.serverPID()).map { $0 != server && $0 > 0 } ?? false
            }
            successor = try mount.serverPID()
            // The successor serves new opens: a fourth reader gets the credentials.
            try waitUntil("a new reader to get the credentials", timeout: 10) {
                Readers.accessKeyId(in: readFile(mount.path("credentials")).text ?? "")
                    == FakeCredentialServer.accessKeyId(1)
            }
        }

        /// Requests the kernel has not finished (/sys/fs/fuse/connections/N/waiting).
        func waiting() -> Int {
            Int((readProcFile("/sys/fs/fuse/connections/\(connection)/waiting") ?? "").filter(\.isNumber)) ?? -1
        }

        /// `count` opens of `status` and `credentials`, each answered by the successor.
        func answerMore(_ count: Int) {
            for i in 0..<count {
                let read = readFile(mountpoint + "/" + (i % 2 == 0 ? "status" : "credentials"))
                #expect(read.bytes != nil, "errno \(read.error)")
            }
        }

        /// Ends everything it started, whatever state the test left.
        func tearDown() async {
            if let mount {
                mount.stopped = true
                if isMounted(mount.mountpoint) { _ = try? runCredfs(["unmount", mount.mountpoint]) }
                if mount.supervisor > 0 { kill(mount.supervisor, SIGTERM) }
                try? waitUntil("the supervisor to exit", timeout: 10) {
                    mount.supervisor <= 0 || !isAlive(mount.supervisor)
                }
                if let left = daemonPID(mountpoint: mount.mountpoint) { kill(left, SIGKILL) }
                // Readers still waiting for an answer: only the connection's end frees them.
                if readers.contains(where: \.blocked), connection > 0 {
                    try? "1".write(
                        toFile: "/sys/fs/fuse/connections/\(connection)/abort", atomically: false, encoding: .utf8)
                }
                for reader in readers {
                    kill(reader.pid, SIGKILL)
                    // Bounded: a reader nothing could free must not hang the test run.
                    try? waitUntil("reader \(reader.name) to exit", timeout: 10) { !isAlive(reader.pid) }
                    _ = reader.reap()
                }
                if isMounted(mount.mountpoint) { umount2(mount.mountpoint, Int32(MNT_DETACH)) }
                mount.dir.remove()
            }
            await upstream.stop()
        }
    }

    /// Linux 6.9 or later: the kernel knows `FUSE_NOTIFY_RESEND`.
    static let kernelHasResend: Bool = {
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return parts.count == 2 && (parts[0], parts[1]) >= (6, 9)
    }()

    /// With RESEND (Linux 6.9+): the three parked opens come again and the successor
    /// answers them with the credentials.
    @Test(
        .enabled(if: kernelHasResend, "FUSE_NOTIFY_RESEND needs Linux 6.9+"),
        .enabled(if: Host.hasFuseControl, Host.hasFuseControlReason))
    func withResendParkedOpensAreAnsweredByTheSuccessor() async throws {
        let t = ParkedTakeover()
        do {
            try await t.start(resend: true)
            try waitUntil("the parked readers to finish", timeout: 10) { t.readers.allSatisfy { !isAlive($0.pid) } }
            let took = Date().timeIntervalSince(t.killed)
            for reader in t.readers {
                let status = reader.reap()
                #expect(status == 0, "\(reader.name): wait status \(status.map(String.init) ?? "?"): \(reader.text)")
                #expect(reader.text.contains(FakeCredentialServer.accessKeyId(1)) || reader.text.hasPrefix("read {"))
            }
            // Releases are not waited for by their callers: the count drains to 0.
            try waitUntil("no request left unanswered", timeout: 5) { t.waiting() == 0 }
            Timings.report(
                "resend: 3 parked opens answered by the successor \(Int(took * 1000)) ms after the kill")
        } catch {
            await t.tearDown()
            throw error
        }
        await t.tearDown()
    }

    /// An upgrade while opens wait for the first credentials: the old server hands over
    /// without answering them (no EIO), the successor's RESEND brings them back, and they get
    /// the credentials once the upstream answers.
    @Test(.enabled(if: kernelHasResend, "FUSE_NOTIFY_RESEND needs Linux 6.9+"))
    func anUpgradeLeavesParkedOpensToTheSuccessor() async throws {
        let upstream = FakeCredentialServer()
        upstream.setBehaviour(.hang)
        try await upstream.start()
        let mount = try Supervised(
            ["--provider", "uri", "--uri", upstream.url, "--initial-wait", "1h"],
            environment: Host.hermeticEnvironment)
        var readers: [Reader] = []
        defer {
            for reader in readers {
                kill(reader.pid, SIGKILL)
                _ = reader.reap()
            }
            try? mount.stop()
        }
        for name in ["A", "B", "C"] {
            readers.append(
                try Reader(name, ["/bin/cat", mount.path("credentials")], output: mount.dir.path + "/" + name))
        }
        try waitUntil("three opens parked in the server", timeout: 10) {
            (try? mount.status()["parkedRequests"] as? Int) == 3
        }
        let old = try mount.serverPID()
        upstream.setBehaviour(.serve)
        let result = try runCredfs(["upgrade", mount.mountpoint, "--binary", Binary.credfs])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try mount.serverPID() != old)
        try waitUntil("the parked readers to finish", timeout: 15) { readers.allSatisfy { !isAlive($0.pid) } }
        for reader in readers {
            let status = reader.reap()
            #expect(status == 0, "\(reader.name): wait status \(status.map(String.init) ?? "?"): \(reader.text)")
            #expect(reader.text.contains(FakeCredentialServer.accessKeyId(1)), "\(reader.name): \(reader.text)")
        }
        await upstream.stop()
    }

    /// Without RESEND: the parked readers stay blocked while the successor answers new
    /// requests; no signal frees them (a handled SIGINT or a fatal SIGTERM moves them from
    /// S to D, SIGKILL too); a lazy unmount does not; the end of the connection (the
    /// supervisor and the server gone) answers them ECONNABORTED.
    @Test(.enabled(if: Host.hasFuseControl, Host.hasFuseControlReason))
    func withoutResendParkedReadersHangUntilTheConnectionEnds() async throws {
        let t = ParkedTakeover()
        do {
            try await t.start(resend: false)
            guard let mount = t.mount else { return }
            let (a, b, c) = (t.readers[0], t.readers[1], t.readers[2])
            func describe() -> String {
                t.readers.map { "\($0.name): \($0.state ?? "-") \($0.wchan)" }.joined(separator: ", ")
            }

            t.answerMore(40)
            #expect(t.readers.allSatisfy { $0.blocked && $0.state == "S" }, "\(describe())")
            #expect(t.waiting() >= 3)

            // A handled SIGINT: the wait becomes killable-only (D); the handler never runs.
            kill(a.pid, SIGINT)
            try waitUntil("A in D after SIGINT", timeout: 5) { a.state == "D" }
            // A fatal SIGTERM (default action): D as well, and it does not die.
            kill(b.pid, SIGTERM)
            try waitUntil("B in D after SIGTERM", timeout: 5) { b.state == "D" }
            t.answerMore(40)
            #expect(a.blocked && b.blocked && c.blocked, "\(describe())")
            #expect(!a.text.contains("handled"))

            // SIGKILL: still there, in D.
            kill(a.pid, SIGKILL)
            kill(b.pid, SIGKILL)
            t.answerMore(40)
            #expect(a.blocked && b.blocked && a.state == "D" && b.state == "D", "\(describe())")
            #expect(c.blocked && c.state == "S", "\(describe())")

            // A lazy unmount: the path is gone, the connection is not (the successor still
            // answers through a descriptor of the mount's root), and the readers still wait.
            let root = open(mount.mountpoint, O_RDONLY | O_DIRECTORY)
            #expect(root >= 0)
            let unmount = try runCredfs(["unmount", mount.mountpoint])
            #expect(unmount.status == 0, "\(unmount.stderr)")
            try waitUntil("the mount point to be detached", timeout: 5) { !isMounted(mount.mountpoint) }
            for _ in 0..<20 {
                let fd = openat(root, "status", O_RDONLY)
                #expect(fd >= 0, "errno \(errno)")
                if fd >= 0 {
                    #expect(readAll(fd).bytes != nil)
                    close(fd)
                }
            }
            close(root)
            #expect(isAlive(t.successor))
            #expect(a.blocked && b.blocked && c.blocked, "\(describe())")

            // The end of the connection: SIGTERM to the supervisor ends it and the server,
            // the last descriptor of /dev/fuse closes, and the kernel answers the three.
            let ended = Date()
            kill(mount.supervisor, SIGTERM)
            try waitUntil("the readers to be freed", timeout: 10) { t.readers.allSatisfy { !isAlive($0.pid) } }
            let took = Date().timeIntervalSince(ended)
            let statuses = t.readers.map { $0.reap() }
            #expect(statuses[0].map { $0 & 0x7f } == SIGKILL)
            // B dies of the SIGTERM it got while blocked (the first fatal signal is kept).
            #expect(statuses[1].map { $0 & 0x7f } == SIGTERM)
            #expect(statuses[2].map { ($0 >> 8) & 0xff } == 1, "\(c.text)")
            #expect(c.text.contains("Software caused connection abort"), "\(c.text)")  // ECONNABORTED
            try waitUntil("the supervisor to exit", timeout: 10) { !isAlive(mount.supervisor) }
            Timings.report(
                "no resend: 3 parked readers blocked through 120 answered requests, SIGINT, SIGTERM, SIGKILL (S -> D) and a lazy unmount; freed (ECONNABORTED) \(Int(took * 1000)) ms after SIGTERM to the supervisor"
            )
        } catch {
            await t.tearDown()
            throw error
        }
        await t.tearDown()
    }

    /// Without RESEND, the other way out: aborting the connection frees the readers at once
    /// and kills the mount for everyone (ENOTCONN), which is what a takeover was meant to avoid.
    @Test(.enabled(if: Host.hasFuseControl, Host.hasFuseControlReason))
    func withoutResendAbortFreesTheReadersAndEndsTheMount() async throws {
        let t = ParkedTakeover()
        do {
            try await t.start(resend: false)
            guard let mount = t.mount else { return }
            t.answerMore(20)
            #expect(t.readers.allSatisfy { $0.blocked })
            try "1".write(toFile: "/sys/fs/fuse/connections/\(t.connection)/abort", atomically: false, encoding: .utf8)
            try waitUntil("the readers to be freed", timeout: 10) { t.readers.allSatisfy { !isAlive($0.pid) } }
            for reader in t.readers.dropFirst() {
                #expect(reader.text.contains("Software caused connection abort"), "\(reader.name): \(reader.text)")
            }
            #expect(readFile(mount.path("status")).error == ENOTCONN)
        } catch {
            await t.tearDown()
            throw error
        }
        await t.tearDown()
    }
}
