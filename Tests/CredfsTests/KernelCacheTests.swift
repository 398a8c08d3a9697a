import Foundation
import Synchronization
import Testing

/// `--kernel-cache` (issue 12): opens never reach the daemon, and the guarantees that do
/// not need an OPEN still hold.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct KernelCacheTests {
    func generation(_ read: PosixRead) -> Int? {
        guard let text = read.text,
            let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: String],
            let id = object["AccessKeyId"]
        else { return nil }
        return FakeCredentialServer.generation(of: id)
    }

    @Test func opensNeverReachTheDaemonAndStatusSaysSo() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--kernel-cache"])
        defer { daemon.stop() }
        try waitUntil("credentials") { generation(daemon.read("credentials")) == 1 }
        let names = ["credentials", "token", "access_key_id", "env", "config.json", "expiration"]
        // The first OPEN once every file has content is answered ENOSYS, which ends OPENs for
        // the connection (an open parked for the first credentials was answered before).
        // `status` is read after that: it is rendered at its lookup and then cached, and a
        // rendering from before that last OPEN would count one less than later ones.
        for name in names { #expect(daemon.read(name).bytes?.isEmpty == false) }
        let before = try daemon.status()["openRequests"] as? Int ?? -1
        for name in names {
            for _ in 0..<100 { #expect(daemon.read(name).bytes?.isEmpty == false) }
        }
        let status = try daemon.status()
        #expect(status["mode"] as? String == "kernel-cache")
        #expect(before >= 1 && before <= 2)
        #expect(status["openRequests"] as? Int == before, "600 reads sent OPENs: \(status)")
    }

    @Test func rotationIsSeenAtOnceAndAHeldDescriptorKeepsItsGeneration() async throws {
        let server = FakeCredentialServer()
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--kernel-cache"])
        defer { daemon.stop() }
        try waitUntil("credentials") { generation(daemon.read("credentials")) == 1 }
        let held = open(daemon.path("credentials"), O_RDONLY)
        #expect(held >= 0)
        defer { close(held) }

        server.rotate()
        daemon.signal(SIGHUP)
        try waitUntil("generation 2") { generation(daemon.read("credentials")) == 2 }
        // From then on every open sees generation 2, and stat matches the bytes.
        for _ in 0..<200 {
            let read = daemon.read("credentials")
            #expect(generation(read) == 2)
            var st = stat()
            #expect(stat(daemon.path("credentials"), &st) == 0 && Int(st.st_size) == read.bytes?.count)
        }
        #expect(generation(readAll(held)) == 1, "a descriptor opened before the rotation reads its own generation")
    }

    @Test func expiryTurnsOpensIntoEIOThenRecovers() async throws {
        let server = FakeCredentialServer(lifetime: 3)
        try await server.start()
        let daemon = try Daemon([
            "--provider", "uri", "--uri", server.url, "--kernel-cache", "--refresh-before", "1",
        ])
        defer { daemon.stop() }
        try waitUntil("credentials") { generation(daemon.read("credentials")) == 1 }
        server.setBehaviour(.status(500))
        try waitUntil("expiry", timeout: 10) { daemon.read("credentials").error == EIO }
        #expect(daemon.read("token").error == EIO)
        #expect(try daemon.state() == "expired")
        server.rotate()
        server.setBehaviour(.serve)
        daemon.signal(SIGHUP)
        try waitUntil("recovery", timeout: 10) { generation(daemon.read("credentials")) == 2 }
    }

    @Test func statusIsAtMostASecondOld() async throws {
        let daemon = try Daemon(["--provider", "demo", "--demo-lifetime", "3600", "--kernel-cache"])
        defer { daemon.stop() }
        try waitUntil("credentials") { daemon.read("credentials").bytes != nil }
        for _ in 0..<3 {
            let status = try daemon.status()
            let remaining = try #require(status["secondsRemaining"] as? Int)
            let expiration = try #require(daemon.read("expiration").text)
            let expires = try #require(ISO8601DateFormatter().date(from: expiration))
            let actual = expires.timeIntervalSinceNow
            #expect(Double(remaining) <= actual + 1 && Double(remaining) >= actual - 2, "\(remaining) vs \(actual)")
            usleep(1_100_000)
        }
    }

    @Test func theFirstReadWaitsForTheFirstCredentials() async throws {
        let server = FakeCredentialServer()
        server.setBehaviour(.status(500))
        try await server.start()
        let daemon = try Daemon([
            "--provider", "uri", "--uri", server.url, "--kernel-cache", "--initial-wait", "60",
        ])
        defer { daemon.stop() }
        let path = daemon.path("credentials")
        // A thread of its own: the blocking read must not wait for a cooperative thread.
        let result = Mutex<PosixRead?>(nil)
        let thread = Thread { result.withLock { $0 = readFile(path) } }
        thread.start()
        try waitUntil("a parked open") { daemon.parkedOpens() >= 1 }
        #expect(try daemon.state() == "pending")
        server.setBehaviour(.serve)
        daemon.signal(SIGHUP)
        try waitUntil("the waiting read", timeout: 30) { result.withLock { $0 != nil } }
        let read = try #require(result.withLock { $0 })
        #expect(generation(read) == 1, "errno \(read.error)")
    }
}
