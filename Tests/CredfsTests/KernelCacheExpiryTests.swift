import Foundation
import Testing

/// `--kernel-cache` at the instant of expiry (issue 26): opens never reach the daemon, so
/// the kernel must not keep a generation's name past its Expiration. An open that begins at
/// or after it fails with EIO; none is served the expired set.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct KernelCacheExpiryTests {
    @Test func noOpenAtOrAfterExpirationIsServed() async throws {
        // Sets of 3 s that the fake renews only when told to.
        let server = FakeCredentialServer(lifetime: 3)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--kernel-cache"])
        defer { daemon.stop() }
        let path = daemon.path("credentials")
        var buffer = [UInt8](repeating: 0, count: 4096)
        for round in 1...3 {
            try waitUntil("generation \(round)") {
                try daemon.generation() == round && daemon.read("credentials").bytes != nil
            }
            let text = try #require(try daemon.status()["expiration"] as? String)
            let expiration = try #require(ISO8601DateFormatter().date(from: text))
            // No renewal: the set expires.
            server.setBehaviour(.status(503))
            try waitUntil("shortly before the Expiration", timeout: 5) { Date() >= expiration.addingTimeInterval(-0.3) }
            var servedBefore = 0
            var refusedAfter = 0
            var servedLate: [Int] = []
            while true {
                let started = Date()
                let late = started.timeIntervalSince(expiration)
                if late > 0.3 { break }
                let fd = open(path, O_RDONLY)
                if fd >= 0 {
                    let n = read(fd, &buffer, buffer.count)
                    close(fd)
                    if n > 0, late >= 0 { servedLate.append(Int(late * 1_000_000)) }
                    if n > 0, late < 0 { servedBefore += 1 }
                } else if late >= 0 {
                    #expect(errno == EIO)
                    refusedAfter += 1
                }
            }
            #expect(
                servedLate.isEmpty, "round \(round): opens \(servedLate.prefix(5)) µs after the Expiration were served")
            #expect(
                servedBefore > 0 && refusedAfter > 0, "round \(round): \(servedBefore) served, \(refusedAfter) refused")
            try waitUntil("expired") { try daemon.state() == "expired" }
            server.setBehaviour(.serve)
            server.rotate()
            daemon.signal(SIGHUP)
        }
    }
}
