import Foundation
import Synchronization
import Testing

/// Rotation about every second, several concurrent readers for ~10 s: every read of
/// `credentials` is complete, valid JSON from one generation, unexpired, and as long as
/// `st_size` of its descriptor says.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct RotationStressTests {
    struct Tally {
        var reads = 0
        var failures: [String] = []
        var generations = Set<Int>()
    }

    @Test func concurrentReadersNeverSeeTornOrMixedCredentials() async throws {
        // Every request rotates; 3 s credentials refreshed when 2 s are left: ~1 rotation/s.
        let server = FakeCredentialServer(lifetime: 3, rotateOnEachRequest: true)
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url, "--refresh-before", "2"])
        defer { daemon.stop() }
        let firstGeneration = try daemon.generation()

        let tally = Mutex(Tally())
        let readers = 4
        let duration: TimeInterval = 10
        let path = daemon.path("credentials")
        let threads = (0..<readers).map { _ in
            Thread {
                let end = Date(timeIntervalSinceNow: duration)
                while Date() < end {
                    let started = Date()
                    let (result, size) = Self.readWithFstat(path)
                    var verdict = Self.check(result, startedAt: started)
                    if case .success = verdict, size != result.bytes?.count {
                        verdict = .failure(
                            Problem(description: "fstat size \(size), \(result.bytes?.count ?? -1) bytes read"))
                    }
                    tally.withLock { t in
                        t.reads += 1
                        switch verdict {
                        case .success(let generation): t.generations.insert(generation)
                        case .failure(let problem): t.failures.append(problem.description)
                        }
                    }
                }
            }
        }
        threads.forEach { $0.start() }
        try waitUntil("the readers", timeout: duration + 20) {
            tally.withLock { _ in threads.allSatisfy(\.isFinished) }
        }

        let result = tally.withLock { $0 }
        let lastGeneration = try daemon.generation()
        let rotations = lastGeneration - firstGeneration
        #expect(
            result.failures.isEmpty,
            "\(result.failures.count) bad reads, first: \(result.failures.prefix(3))")
        #expect(result.reads > 100)
        #expect(rotations >= 5, "only \(rotations) rotations in \(duration) s")
        #expect(result.generations.count >= 5)
        // Each request rotates, so one upstream request per generation: never a stampede.
        #expect(server.requests == lastGeneration)
        let status = try daemon.status()
        #expect(status["upstreamRequests"] as? Int == server.requests)
        print(
            "stress: \(result.reads) reads, \(rotations) rotations, \(server.requests) upstream requests")
    }

    struct Problem: Error, CustomStringConvertible { let description: String }

    /// One open: the bytes read to EOF and `st_size` of the same descriptor.
    static func readWithFstat(_ path: String) -> (PosixRead, Int) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return (PosixRead(bytes: nil, error: errno), -1) }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        return (readAll(fd), Int(st.st_size))
    }

    /// Parses one read of `credentials` and returns its generation, or what is wrong.
    static func check(_ read: PosixRead, startedAt: Date) -> Result<Int, Problem> {
        guard let bytes = read.bytes else {
            return .failure(Problem(description: "errno \(read.error)"))
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: String]
        else {
            return .failure(Problem(description: "not JSON (\(bytes.count) bytes)"))
        }
        guard object.count == 4, let id = object["AccessKeyId"], let secret = object["AccessKeySecret"],
            let token = object["SecurityToken"], let expiration = object["Expiration"]
        else { return .failure(Problem(description: "missing keys")) }
        let generations = [id, secret, token].map(FakeCredentialServer.generation(of:))
        guard let g = generations[0], generations.allSatisfy({ $0 == g }) else {
            return .failure(Problem(description: "mixed generations \(generations)"))
        }
        guard let expires = ISO8601DateFormatter().date(from: expiration), expires > startedAt else {
            return .failure(Problem(description: "expired: \(expiration)"))
        }
        return .success(g)
    }
}
