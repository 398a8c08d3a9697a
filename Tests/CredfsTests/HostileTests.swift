import Foundation
import Synchronization
import Testing

/// Requests any local user can make (issue 10): none may crash the daemon or hold a worker.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(3)))
struct HostileTests {
    static let nobody: (uid: uid_t, gid: gid_t) = (65534, 65534)

    @Test func readdirPastTheEndFromAnyUserAnswersAndTheDaemonLives() throws {
        let daemon = try Daemon(["--provider", "demo", "--allow-other", "--mode", "0444"])
        defer { daemon.stop() }
        chmod(daemon.dir.path, 0o755)
        for offset in ["100", "3", "12", "4611686018427387904", "9223372036854775807"] {
            let script = "opendir D, $ARGV[0] or die; seekdir D, \(offset); my @e = readdir D; print scalar(@e)"
            let result = try runAs(
                uid: Self.nobody.uid, gid: Self.nobody.gid, ["/usr/bin/perl", "-e", script, daemon.mountpoint])
            #expect(result.status == 0, "seekdir \(offset): \(result.stderr)")
            #expect(daemon.process.isRunning, "the daemon died on seekdir \(offset)")
        }
        // Still serving everyone.
        #expect(daemon.read("status").bytes != nil)
        #expect(daemon.read("credentials").bytes != nil)
    }

    @Test func listingInodesAgreeWithStat() throws {
        let daemon = try Daemon(["--provider", "demo"])
        defer { daemon.stop() }
        // Before the first credentials the names list their base inodes; compare once a
        // generation is served (the demo rotates every 20 s: far beyond this test).
        try waitUntil("the first credentials", timeout: 10) { (try? daemon.generation()) ?? 0 >= 1 }
        let listing = try runProcess("/bin/ls", ["-i1", daemon.mountpoint])
        #expect(listing.status == 0)
        var compared = 0
        for line in listing.stdout.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard parts.count == 2, let listed = UInt64(parts[0]) else { continue }
            var st = stat()
            #expect(stat(daemon.path(parts[1]), &st) == 0)
            #expect(UInt64(st.st_ino) == listed, "\(parts[1]): ls -i \(listed), stat \(st.st_ino)")
            compared += 1
        }
        #expect(compared >= 7, "\(listing.stdout)")
    }

    /// 200 opens waiting for the first credentials park, and every other request is answered
    /// meanwhile; when credentials arrive, every waiting open gets them.
    @Test func twoHundredWaitingOpensLeaveEveryOtherRequestAnswered() async throws {
        let server = FakeCredentialServer()
        server.setBehaviour(.status(500))
        try await server.start()
        let daemon = try Daemon([
            "--provider", "uri", "--uri", server.url, "--initial-wait", "120", "--allow-other", "--mode", "0444",
        ])
        defer { daemon.stop() }

        let readers = try (0..<200).map { i -> Process in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/bin/cat")
            process.arguments = [daemon.path(i % 2 == 0 ? "expiration" : "access_key_id")]
            process.standardOutput = try FileHandle(
                forWritingTo: { () -> URL in
                    let path = daemon.dir.path + "/out-\(i)"
                    FileManager.default.createFile(atPath: path, contents: nil)
                    return URL(fileURLWithPath: path)
                }())
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }
        defer { readers.filter(\.isRunning).forEach { kill($0.processIdentifier, SIGKILL) } }
        try waitUntil("200 parked opens", timeout: 30) {
            (try? daemon.status()["state"] as? String) == "pending" && readers.allSatisfy(\.isRunning)
                && daemon.parkedOpens() >= 200
        }
        // Every other request is answered while they wait.
        let started = Date()
        let status = try daemon.status()
        #expect(status["state"] as? String == "pending")
        let listing = try runProcess("/bin/ls", ["-l", daemon.mountpoint])
        #expect(listing.status == 0 && listing.stdout.contains("credentials"))
        let stillWaiting = readers.allSatisfy { $0.isRunning }
        #expect(stillWaiting, "the waiting opens were answered too early")
        print("status and ls with 200 parked opens: \(Int(Date().timeIntervalSince(started) * 1000)) ms")

        server.setBehaviour(.serve)
        daemon.signal(SIGHUP)
        try waitUntil("every waiting reader to finish", timeout: 30) { readers.allSatisfy { !$0.isRunning } }
        for (i, reader) in readers.enumerated() {
            #expect(reader.terminationStatus == 0)
            let out = try String(contentsOfFile: daemon.dir.path + "/out-\(i)", encoding: .utf8)
            #expect(i % 2 == 0 ? out.hasSuffix("Z") : out == FakeCredentialServer.accessKeyId(1))
        }
    }

    /// A group pinned to the previous generation that fills the page cache on purpose
    /// (sendfile, fadvise, a private mmap) reaches only its generation's own inode: every
    /// other reader still gets the current secret (found by the FUSE fuzzer).
    @Test func aPinnedGroupCannotPoisonTheCurrentPageCache() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--allow-other", "--mode", "0444"])
        defer { daemon.stop() }
        chmod(daemon.dir.path, 0o755)
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        let out = daemon.dir.path + "/pinned.out"
        FileManager.default.createFile(atPath: out, contents: nil)
        chmod(out, 0o666)
        let script = #"""
            import os, json, mmap, sys, time
            m, out = sys.argv[1], sys.argv[2]
            gen = lambda: json.load(open(m + "/status"))["generation"]
            first = open(m + "/access_key_secret").read()
            open(out, "a").write("pinned\n")
            while gen() == 1: time.sleep(0.02)
            fd = os.open(m + "/access_key_secret", os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            os.sendfile(os.open("/dev/null", os.O_WRONLY), fd, 0, 4096)
            try:
                mm = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ); mm[:1]; mm.close()
            except (OSError, ValueError):
                pass
            again = os.pread(fd, 4096, 0).decode()
            open(out, "a").write("first=" + first + "\nagain=" + again + "\n")
            """#
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/setsid")
        python.arguments = [
            "--wait", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", script,
            daemon.mountpoint, out,
        ]
        python.standardOutput = FileHandle.nullDevice
        try python.run()
        try waitUntil("the group to pin") {
            (try? String(contentsOfFile: out, encoding: .utf8))?.contains("pinned") == true
        }
        server.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("the pinned reader to finish", timeout: 20) { !python.isRunning }
        let lines = try String(contentsOfFile: out, encoding: .utf8)
        #expect(lines.contains("first=\(FakeCredentialServer.secret(1))"))
        #expect(lines.contains("again=\(FakeCredentialServer.secret(1))"), "the pinned group keeps its generation")
        for _ in 0..<5 {
            #expect(daemon.readAsNewGroup("access_key_secret") == FakeCredentialServer.secret(2))
            #expect(daemon.read("credentials").text?.contains(FakeCredentialServer.secret(2)) == true)
        }
    }

    /// A waiting open gives up with EIO after --initial-wait, without holding a worker.
    @Test func aWaitingOpenFailsWithEIOAtItsDeadline() async throws {
        let server = FakeCredentialServer()
        server.setBehaviour(.status(500))
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--initial-wait", "1"])
        defer { daemon.stop() }
        let started = Date()
        let read = daemon.read("credentials")
        #expect(read.bytes == nil && read.error == EIO)
        print("EIO after \(Int(Date().timeIntervalSince(started) * 1000)) ms (--initial-wait 1)")
    }
}

extension Daemon {
    /// Opens parked for content, as the daemon's `status` counts them.
    func parkedOpens() -> Int {
        (try? status()["parkedRequests"] as? Int) ?? 0
    }
}
