import Foundation
import Testing

/// The shipping TLS path end to end: libcurl (loaded with dlopen) with the system trust
/// store, against a fake HTTPS upstream on 127.0.0.1: a TLS front (Python's `ssl`) with
/// certificates from a test CA (openssl), carrying the bytes to a plain fake.
///
/// The test CA is trusted by the daemon alone: it runs in a mount namespace of its own
/// where the system bundle (`/etc/ssl/certs/ca-certificates.crt`, libcurl's CAINFO on
/// Debian) is a bind mount of that bundle plus the test CA. The mount directory is a shared
/// bind mount for the test's length, so the daemon's FUSE mount shows here too. Nothing of
/// the machine changes (checked: the system bundle's fingerprint before and after).
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct HTTPSMountTests {
    static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"
    static let hasBundle = FileManager.default.fileExists(atPath: systemBundle)

    /// Certificates under `dir`: `ca` (trusted by the daemon), `good` (127.0.0.1 by the
    /// CA), `wrongname` (another name by the CA), `unknown` (127.0.0.1 by a CA nobody
    /// trusts); `bundle.pem` is the system bundle plus `ca`.
    struct Certificates {
        let dir: String
        var bundle: String { dir + "/bundle.pem" }
        func cert(_ name: String) -> String { dir + "/\(name).pem" }
        func key(_ name: String) -> String { dir + "/\(name).key" }

        init(in dir: String) throws {
            self.dir = dir
            func openssl(_ arguments: [String]) throws {
                let result = try runProcess("/usr/bin/openssl", arguments)
                guard result.status == 0 else {
                    throw HarnessError(description: "openssl \(arguments.first ?? ""): \(result.stderr)")
                }
            }
            for ca in ["ca", "otherca"] {
                try openssl([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=credfs test \(ca)",
                    "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
                    "-keyout", dir + "/\(ca).key", "-out", dir + "/\(ca).pem",
                ])
            }
            for (name, ca, san) in [
                ("good", "ca", "IP:127.0.0.1"), ("wrongname", "ca", "DNS:wrong-name.invalid"),
                ("unknown", "otherca", "IP:127.0.0.1"),
            ] {
                try openssl([
                    "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=\(name)", "-keyout", dir + "/\(name).key",
                    "-out", dir + "/\(name).csr",
                ])
                try "subjectAltName=\(san)\nextendedKeyUsage=serverAuth\n".write(
                    toFile: dir + "/\(name).ext", atomically: true, encoding: .utf8)
                try openssl([
                    "x509", "-req", "-in", dir + "/\(name).csr", "-CA", dir + "/\(ca).pem", "-CAkey",
                    dir + "/\(ca).key", "-CAcreateserial", "-days", "2", "-extfile", dir + "/\(name).ext", "-out",
                    dir + "/\(name).pem",
                ])
            }
            let system = try Data(contentsOf: URL(fileURLWithPath: HTTPSMountTests.systemBundle))
            let ours = try Data(contentsOf: URL(fileURLWithPath: dir + "/ca.pem"))
            try (system + Data("\n".utf8) + ours).write(to: URL(fileURLWithPath: bundle))
        }
    }

    /// A TLS front on 127.0.0.1 that carries each connection's bytes to `forwardPort`, and
    /// logs each refused handshake to `log`.
    final class TLSFront {
        static let script = """
            import select, socket, ssl, sys, threading
            cert, key, forward, log = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            print(listener.getsockname()[1], flush=True)
            def serve(raw):
                try:
                    tls = ctx.wrap_socket(raw, server_side=True)
                except (ssl.SSLError, OSError) as error:
                    with open(log, "a") as f: f.write("handshake refused: %s\\n" % error)
                    raw.close()
                    return
                with open(log, "a") as f: f.write("handshake ok\\n")
                upstream = socket.create_connection(("127.0.0.1", forward))
                try:
                    while True:
                        ready = [tls] if tls.pending() else select.select([tls, upstream], [], [], 30)[0]
                        if not ready: return
                        for s in ready:
                            data = s.recv(65536)
                            if not data: return
                            (upstream if s is tls else tls).sendall(data)
                except OSError:
                    pass
                finally:
                    upstream.close()
                    tls.close()
            while True:
                connection, _ = listener.accept()
                threading.Thread(target=serve, args=(connection,), daemon=True).start()
            """
        let process = Process()
        let port: Int
        let log: String

        init(certificate: String, key: String, forwardPort: Int, log: String) throws {
            self.log = log
            FileManager.default.createFile(atPath: log, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-c", Self.script, certificate, key, String(forwardPort), log]
            let out = Pipe()
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            try process.run()
            var line = ""
            while !line.hasSuffix("\n") {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line += String(decoding: chunk, as: UTF8.self)
            }
            guard let port = Int(line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                throw HarnessError(description: "the TLS front did not start")
            }
            self.port = port
        }

        var url: String { "https://127.0.0.1:\(port)" }
        var handshakes: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        /// SIGKILL: a child of a test thread starts with SIGTERM blocked.
        func stop() {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }

    /// Runs `body` with a daemon that trusts the test CA (its own mount namespace), its
    /// mount visible here.
    func withTrustingDaemon(
        _ certificates: Certificates, _ arguments: [String], environment: [String: String]? = nil,
        _ body: (Daemon) throws -> Void
    ) throws {
        let dir = try TempDir()
        defer { dir.remove() }
        // A shared bind mount of the directory: the daemon's namespace gets a peer of it,
        // so the FUSE mount it makes there propagates back here.
        for step in [["--bind", dir.path, dir.path], ["--make-shared", dir.path]] {
            let result = try runProcess("/bin/mount", step)
            try #require(result.status == 0, "mount \(step): \(result.stderr)")
        }
        defer { umount2(dir.path, Int32(MNT_DETACH)) }
        // In the daemon's namespace only: the mount holding the bundle made private (on a
        // machine whose / is shared the bind must not propagate back), then the bind.
        let trust = """
            set -e
            bundle=$1; shift
            mount --make-private "$(findmnt -n -o TARGET -T \(Self.systemBundle))"
            mount --bind "$bundle" \(Self.systemBundle)
            exec "$@"
            """
        let daemon = try Daemon(
            arguments, environment: environment, in: dir,
            launcher: [
                "/usr/bin/unshare", "--mount", "--propagation", "unchanged", "/bin/sh", "-c", trust, "trust",
                certificates.bundle,
            ])
        daemon.removesDirectory = false
        defer { daemon.stop() }
        try body(daemon)
    }

    @Test(.enabled(if: hasBundle, "needs the system CA bundle at /etc/ssl/certs/ca-certificates.crt"))
    func certificatesFromTheTrustStoreAreAcceptedAndOthersRefused() async throws {
        let before = Host.fingerprint(["/etc/ssl/certs"])
        let work = try TempDir()
        defer { work.remove() }
        let certificates = try Certificates(in: work.path)
        let upstream = FakeCredentialServer()
        try await upstream.start()

        // A certificate for 127.0.0.1 by the trusted CA: served.
        let good = try TLSFront(
            certificate: certificates.cert("good"), key: certificates.key("good"), forwardPort: upstream.port,
            log: work.path + "/good.log")
        defer { good.stop() }
        try withTrustingDaemon(certificates, ["--provider", "uri", "--uri", good.url + "/credentials"]) { daemon in
            try waitUntil("generation 1 over TLS") { try daemon.generation() == 1 }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(1))
            #expect(good.handshakes.contains("handshake ok"))
        }
        let served = upstream.requests
        #expect(served >= 1)

        // By a CA nobody trusts, and the trusted CA's certificate for another name: refused
        // with a clear lastError, and the upstream never asked. (An unknown CA ends the
        // handshake; libcurl checks the name once the handshake is done, then closes.)
        for name in ["unknown", "wrongname"] {
            let front = try TLSFront(
                certificate: certificates.cert(name), key: certificates.key(name), forwardPort: upstream.port,
                log: work.path + "/\(name).log")
            defer { front.stop() }
            try withTrustingDaemon(
                certificates, ["--provider", "uri", "--uri", front.url + "/credentials", "--initial-wait", "1"]
            ) { daemon in
                try waitUntil("a failure in status") { try daemon.status()["lastError"] is String }
                let status = try daemon.status()
                let lastError = status["lastError"] as? String ?? ""
                print("TLS, \(name) certificate: lastError \(lastError)")
                #expect(lastError.contains("TLS: the server's certificate is not trusted"), "\(name): \(lastError)")
                #expect(lastError.contains(front.url), "\(name): \(lastError)")
                #expect(status["state"] as? String == "pending")
                #expect(daemon.read("credentials").error == EIO)
            }
            if name == "unknown" {
                #expect(front.handshakes.contains("handshake refused"), "\(name): \(front.handshakes)")
                #expect(!front.handshakes.contains("handshake ok"), "\(name): \(front.handshakes)")
            }
        }
        #expect(upstream.requests == served, "a refused certificate's upstream was asked")
        #expect(Host.fingerprint(["/etc/ssl/certs"]) == before)
        #expect(!isMounted(Self.systemBundle))
    }

    @Test(.enabled(if: hasBundle, "needs the system CA bundle at /etc/ssl/certs/ca-certificates.crt"))
    func assumeRoleIsSignedOverTLS() async throws {
        let work = try TempDir()
        defer { work.remove() }
        let certificates = try Certificates(in: work.path)
        let sts = Fixtures.fakeAssumeRole()
        try await sts.start()
        let front = try TLSFront(
            certificate: certificates.cert("good"), key: certificates.key("good"), forwardPort: sts.http.port,
            log: work.path + "/sts.log")
        defer { front.stop() }
        try withTrustingDaemon(
            certificates,
            [
                "--provider", "ram-role-arn", "--source-provider", "env", "--role-arn", Fixtures.assumedRoleArn,
                "--sts-endpoint", front.url,
            ], environment: Fixtures.ramRoleArnEnvironment()
        ) { daemon in
            try waitUntil("generation 1 from STS over TLS") { try daemon.generation() == 1 }
            sts.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation 2") { try daemon.generation() == 2 }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(2))
        }
        // Both AssumeRole requests came through TLS and their signatures verified.
        #expect(sts.requests == 2)
        #expect(sts.verified == 2, "\(sts.read { $0.seen.map(\.rejected) })")
        #expect(front.handshakes.contains("handshake ok"))
    }
}
