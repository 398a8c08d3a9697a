import CFuse3
import Foundation
import Testing

/// `--serve-uri` and `--metrics` against a real mount, attacked by an unprivileged user
/// (docs/security.md, "Listeners"): a proper GET answered within 2 s while 400 idle and 64
/// trickling connections are open on each port; a process looping on bind(PORT) across 10
/// takeovers never gets the port, and every answer a client gets is credfs's.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason))
struct ListenerAbuseTests {
    /// A python3 process started as `nobody`, its stdout in a file; stopped by SIGTERM.
    final class Attacker {
        let process = Process()
        let output: String
        init(_ source: String, _ arguments: [String], dir: TempDir, name: String, asNobody: Bool = true) throws {
            output = dir.path + "/" + name + ".out"
            FileManager.default.createFile(atPath: output, contents: nil)
            let python = ["/usr/bin/python3", "-u", "-c", source] + arguments
            process.executableURL = URL(fileURLWithPath: asNobody ? "/usr/bin/setpriv" : python[0])
            process.arguments =
                asNobody
                ? ["--reuid=65534", "--regid=65534", "--clear-groups", "--"] + python : Array(python.dropFirst())
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            process.standardError = process.standardOutput
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }
        var text: String { readProcFile(output) ?? "" }
        /// The last `key N` line's number.
        func number(_ key: String) -> Int? {
            text.split(separator: "\n").last { $0.hasPrefix(key + " ") }.flatMap { Int($0.dropFirst(key.count + 1)) }
        }
        func stop() {
            if process.isRunning { process.terminate() }
            process.waitUntilExit()
        }
    }

    /// Holds `idle` idle and `trickling` trickling (a header byte every 2 s) connections
    /// open on each port: once a second, every one the server closed is opened again
    /// (non-blocking: a connection still in the accept queue counts as open). Prints
    /// `open N reopened M` each round.
    static let slowloris = """
        import socket, sys, time, signal, errno
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        ports = [int(p) for p in sys.argv[1].split(",")]
        idle, trickling = int(sys.argv[2]), int(sys.argv[3])
        head = b"GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nX-Slow: "
        def connect(port):
            s = socket.socket()
            s.setblocking(False)
            if s.connect_ex(("127.0.0.1", port)) not in (0, errno.EINPROGRESS):
                s.close()
                return None
            return s
        def alive(s):
            if s is None or s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR): return False
            try:
                return s.recv(1, socket.MSG_PEEK) != b""
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as e:
                return e.errno == errno.ENOTCONN
        slots = [[port, kind, None, 0.0, 0] for port in ports for kind in ["idle"] * idle + ["trickle"] * trickling]
        reopened = 0
        while True:
            now = time.time()
            for slot in slots:
                if not alive(slot[2]):
                    if slot[2] is not None:
                        slot[2].close(); reopened += 1
                    slot[2], slot[3], slot[4] = connect(slot[0]), now, 0
                elif slot[1] == "trickle" and now - slot[3] >= 2:
                    try:
                        slot[2].send(head[slot[4] % len(head):][:1] or b"a"); slot[3] = now; slot[4] += 1
                    except OSError:
                        pass
            print("open", sum(s[2] is not None for s in slots))
            print("reopened", reopened)
            time.sleep(max(0, 1 - (time.time() - now)))
        """

    /// Loops on bind(127.0.0.1:PORT) for each port (plain, SO_REUSEADDR, SO_REUSEPORT); a
    /// bind that succeeds listens and answers `EVIL`, and prints `won PORT`.
    static let squatter = """
        import socket, sys, threading, signal
        signal.signal(signal.SIGTERM, lambda *a: (print("attempts", attempts), sys.exit(0)))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        ports = [int(p) for p in sys.argv[1].split(",")]
        attempts = 0
        def serve(s):
            while True:
                c, _ = s.accept()
                c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 5\\r\\nConnection: close\\r\\n\\r\\nEVIL\\n"); c.close()
        while True:
            for port in ports:
                for option in [None, socket.SO_REUSEADDR, socket.SO_REUSEPORT]:
                    s = socket.socket()
                    if option: s.setsockopt(socket.SOL_SOCKET, option, 1)
                    attempts += 1
                    try:
                        s.bind(("127.0.0.1", port)); s.listen(64)
                    except OSError:
                        s.close(); continue
                    print("won", port, flush=True)
                    threading.Thread(target=serve, args=(s,), daemon=True).start()
        """

    /// GETs both ports without pause and sorts every answer: credfs's credentials or
    /// metrics, credfs's 503 (no credentials), none (refused, reset, timed out), or someone
    /// else's. (SIGTERM is unblocked: a child of a Swift thread inherits its blocked signals.)
    static let client = """
        import socket, sys, signal
        counts = {"credfs": 0, "unavailable": 0, "none": 0, "foreign": 0}
        signal.signal(signal.SIGTERM, lambda *a: (print(" ".join("%s %d" % kv for kv in counts.items())), sys.exit(0)))
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
        uri, metrics = int(sys.argv[1]), int(sys.argv[2])
        def get(port, path):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(("GET %s HTTP/1.1\\r\\nHost: 127.0.0.1:%d\\r\\n\\r\\n" % (path, port)).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk: break
                data += chunk
            s.close()
            return data
        while True:
            for port, path, mark in [(uri, "/", b'"AccessKeyId":"STS.DEMO'), (metrics, "/metrics", b"credfs_generation ")]:
                try:
                    data = get(port, path)
                except OSError:
                    counts["none"] += 1; continue
                if not data:
                    counts["none"] += 1
                elif data.startswith(b"HTTP/1.1 200") and mark in data:
                    counts["credfs"] += 1
                elif data.startswith(b"HTTP/1.1 503") and b'"Code":"CredentialsUnavailable"' in data:
                    counts["unavailable"] += 1
                else:
                    counts["foreign"] += 1; print("foreign", data[:80], flush=True)
        """

    /// `curl` with the contract's 2 s as its own deadline: the HTTP code and the seconds.
    static func properGet(_ url: String) throws -> (code: String, seconds: Double) {
        let result = try runProcess(
            "/usr/bin/curl", ["-s", "-o", "/dev/null", "--max-time", "2", "-w", "%{http_code} %{time_total}", url])
        let parts = result.stdout.split(separator: " ")
        return (parts.first.map(String.init) ?? "", parts.count > 1 ? Double(parts[1]) ?? 99 : 99)
    }

    @Test func aProperGetIsAnsweredWithin2sUnderSlowlorisOnBothListeners() throws {
        let uri = unusedLoopbackPort()
        let metrics = unusedLoopbackPort()
        let daemon = try Daemon([
            "--provider", "demo", "--demo-lifetime", "3600", "--serve-uri", "127.0.0.1:\(uri)", "--metrics",
            "127.0.0.1:\(metrics)",
        ])
        defer { daemon.stop() }
        try waitUntil("credentials") { daemon.read("expiration").bytes != nil }
        let attacker = try Attacker(
            Self.slowloris, ["\(uri),\(metrics)", "400", "64"], dir: daemon.dir, name: "slowloris")
        defer { attacker.stop() }
        try waitUntil("400 idle and 64 trickling connections on each port", timeout: 30) {
            attacker.number("open") == 928 && (attacker.number("reopened") ?? 0) > 0
        }
        var times: [Double] = []
        // Over 6 s and more: past the 3 s head deadline, so the attacker keeps opening.
        for _ in 0..<12 {
            for url in ["http://127.0.0.1:\(uri)/", "http://127.0.0.1:\(metrics)/metrics"] {
                let (code, seconds) = try Self.properGet(url)
                #expect(
                    code == "200", "\(url): HTTP \(code) after \(seconds) s (attacker: \(attacker.text.suffix(200)))")
                times.append(seconds)
            }
            usleep(500_000)  // pacing between rounds, not a wait for a condition
        }
        #expect(attacker.process.isRunning, "\(attacker.text.suffix(300))")
        let reopened = attacker.number("reopened") ?? 0
        // The server closed the attacker's connections (head deadline, the cap) and the
        // attacker opened them again: the attack was on all the while.
        #expect(reopened > 928, "\(attacker.text.suffix(300))")
        let sorted = times.sorted()
        Timings.report(
            "listeners under slowloris (400 idle + 64 trickling per port, \(reopened) reopened): \(times.count) proper GETs, median \(Int(sorted[sorted.count / 2] * 1000)) ms, max \(Int((sorted.last ?? 0) * 1000)) ms"
        )
    }

    @Test func aSquatterNeverGetsThePortAcross10Takeovers() throws {
        let uri = unusedLoopbackPort()
        let metrics = unusedLoopbackPort()
        let mount = try Supervised([
            "--provider", "demo", "--demo-lifetime", "3600", "--serve-uri", "127.0.0.1:\(uri)", "--metrics",
            "127.0.0.1:\(metrics)",
        ])
        defer { try? mount.stop() }
        let squatter = try Attacker(Self.squatter, ["\(uri),\(metrics)"], dir: mount.dir, name: "squatter")
        defer { squatter.stop() }
        let client = try Attacker(
            Self.client, ["\(uri)", "\(metrics)"], dir: mount.dir, name: "client", asNobody: false)
        defer { client.stop() }
        var kinds: [String] = []
        for round in 1...10 {
            let old = try mount.serverPID()
            if round % 2 == 1 {
                kill(old, SIGKILL)
                kinds.append("kill -9")
            } else {
                let result = try runCredfs(["upgrade", mount.mountpoint, "--binary", Binary.credfs])
                #expect(result.status == 0, "\(result.stderr)")
                kinds.append("upgrade")
            }
            try waitUntil("a successor (round \(round))", timeout: 10) {
                (try? mount.serverPID()).map { $0 != old && $0 > 0 } ?? false
            }
            // The successor answers on both ports (on the socket the first server bound).
            for url in ["http://127.0.0.1:\(uri)/", "http://127.0.0.1:\(metrics)/metrics"] {
                let answer = try runProcess("/usr/bin/curl", ["-s", "--max-time", "5", url])
                #expect(
                    answer.stdout.contains("STS.DEMO") || answer.stdout.contains("credfs_generation "),
                    "round \(round) (\(kinds.last ?? "")): \(url) answered \(answer.stdout.prefix(80))")
            }
        }
        client.stop()
        squatter.stop()
        let counts = client.text.split(separator: "\n").last { $0.hasPrefix("credfs ") } ?? ""
        let numbers = counts.split(separator: " ")
        func count(_ key: String) -> Int {
            guard let i = numbers.firstIndex(of: Substring(key)), i + 1 < numbers.count else { return -1 }
            return Int(numbers[i + 1]) ?? -1
        }
        #expect(!squatter.text.contains("won"), "\(squatter.text.suffix(300))")
        #expect(count("foreign") == 0, "\(client.text.suffix(500))")
        // A successor's first answer is already the carried credentials.
        #expect(count("unavailable") == 0, "\(client.text.suffix(500))")
        #expect(count("credfs") > 0, "\(client.text.suffix(300))")
        Timings.report(
            "listeners across 10 takeovers (\(kinds.joined(separator: ", "))): squatter \(squatter.number("attempts") ?? -1) bind attempts, 0 won; client answers: \(counts)"
        )
    }

    /// The systemd path (a fake service manager): the listening socket is stored as
    /// `listen-uri`; after a kill -9 the port stays taken (the store holds it) and the next
    /// start answers on it. A successor given no socket whose port someone else took serves
    /// the mount without the listener (and says so in its log), instead of dying.
    @Test func theStoreCarriesTheSocketAndASuccessorWithoutOneStillServesTheMount() throws {
        let manager = try FakeServiceManager()
        let dir = try TempDir()
        let mountpoint = dir.path + "/mnt"
        let log = dir.path + "/credfs.log"
        let port = unusedLoopbackPort()
        var pids: [pid_t] = []
        var squat: Int32 = -1
        defer {
            pids.forEach { kill($0, SIGKILL) }
            if squat >= 0 { close(squat) }
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            dir.remove()
        }
        func serverPID() -> Int? {
            guard let bytes = readFile(mountpoint + "/status").bytes,
                let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
            else { return nil }
            return object["pid"] as? Int
        }
        func uriAnswer() throws -> String {
            try runProcess("/usr/bin/curl", ["-s", "--max-time", "5", "http://127.0.0.1:\(port)/"]).stdout
        }
        let arguments = [
            "mount", mountpoint, "-f", "--provider", "demo", "--demo-lifetime", "3600", "--serve-uri",
            "127.0.0.1:\(port)",
        ]
        let first = try manager.start(arguments, log: log)
        pids.append(first)
        try waitUntil("the connection and the listener in the store") {
            manager.pump()
            return manager.has("fuse") && manager.has("listen-uri") && serverPID() == Int(first)
        }
        #expect(try uriAnswer().contains("STS.DEMO"))
        kill(first, SIGKILL)
        var status: Int32 = 0
        waitpid(first, &status, 0)
        // No server runs: the port is still taken (the store's copy listens).
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let fresh = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fresh) }
        // As a squatter would: past the TIME_WAIT of the connections credfs closed.
        var one: Int32 = 1
        setsockopt(fresh, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fresh, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(bound != 0 && errno == EADDRINUSE, "the port was free between two servers")

        let second = try manager.start(arguments, log: log)
        pids.append(second)
        try waitUntil("the successor to serve") { serverPID() == Int(second) }
        #expect(try uriAnswer().contains("STS.DEMO"))

        // Without the stored socket, and with the port taken by someone else.
        kill(second, SIGKILL)
        waitpid(second, &status, 0)
        manager.pump()
        manager.store.removeAll { entry in
            if entry.name == "listen-uri" { close(entry.fd) }
            return entry.name == "listen-uri"
        }
        let taken = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fresh, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(taken == 0 && listen(fresh, 1) == 0)
        let third = try manager.start(arguments, log: log)
        pids.append(third)
        // Its log first: a mount with no server would block a read of `status` for ever.
        try waitUntil("the third server to take over") {
            var ended: Int32 = 0
            if waitpid(third, &ended, WNOHANG) == third {
                throw HarnessError(description: "the successor exited: \(readProcFile(log)?.suffix(300) ?? "")")
            }
            return readProcFile(log)?.components(separatedBy: "took over the mount").count == 3
        }
        #expect(serverPID() == Int(third))
        #expect(readFile(mountpoint + "/credentials").text?.contains("STS.DEMO") == true)
        try waitUntil("the log line") {
            readProcFile(log)?.contains("serving the mount without the credentials URI") == true
        }
        kill(third, SIGTERM)
        waitpid(third, &status, 0)
        #expect(status == 0)
        #expect(!isMounted(mountpoint))
        pids = []
    }
}
