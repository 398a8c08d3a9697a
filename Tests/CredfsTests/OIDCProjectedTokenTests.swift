import Foundation
import Testing

/// The OIDC token file as Kubernetes projects it: `token -> ..data/token`, `..data ->
/// ..<timestamp>`; the kubelet writes a new `..<timestamp>` directory, swaps `..data` with
/// one rename and removes the old directory. The next refresh must read the new token.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct OIDCProjectedTokenTests {
    /// A projected volume in `dir`: writes `token` into a new timestamped directory and
    /// points `..data` at it the way the kubelet's AtomicWriter does.
    struct ProjectedVolume {
        let dir: String
        var current: String?

        mutating func project(_ token: String, stamp: String) throws {
            let data = dir + "/..\(stamp)"
            try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: false)
            try token.write(toFile: data + "/token", atomically: false, encoding: .utf8)
            let next = dir + "/..data_tmp"
            try FileManager.default.createSymbolicLink(atPath: next, withDestinationPath: "..\(stamp)")
            guard rename(next, dir + "/..data") == 0 else {
                throw HarnessError(description: "rename ..data_tmp: errno \(errno)")
            }
            if (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/token")) == nil {
                try FileManager.default.createSymbolicLink(atPath: dir + "/token", withDestinationPath: "..data/token")
            }
            if let old = current { try FileManager.default.removeItem(atPath: dir + "/..\(old)") }
            current = stamp
        }
    }

    @Test func aSwappedDataSymlinkIsReadAtTheNextRefresh() async throws {
        let sts = FakeSTSServer()
        sts.set { $0.acceptedToken = "oidc-token-A" }
        try await sts.start()
        let setup = try Fixtures.OIDCSetup(token: "unused")
        defer { setup.dir.remove() }
        try FileManager.default.removeItem(atPath: setup.tokenFile)
        var volume = ProjectedVolume(dir: setup.dir.path)
        try volume.project("oidc-token-A\n", stamp: "2026_12_07_21_00_00.000000001")
        #expect(try String(contentsOfFile: setup.tokenFile, encoding: .utf8) == "oidc-token-A\n")

        let daemon = try Daemon(
            ["--provider", "oidc-role-arn", "--sts-endpoint", sts.endpoint], environment: setup.environment)
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        #expect(sts.read { $0.seen.last?.form["OIDCToken"] } == "oidc-token-A")

        for (n, token, stamp) in [
            (2, "oidc-token-B", "2026_12_07_21_50_00.000000002"), (3, "oidc-token-C", "2026_12_07_22_40_00.000000003"),
        ] {
            // The old directory is gone after the swap: a reader holding a resolved path
            // or an open descriptor of the old file would fail or send the old token.
            try volume.project(token + "\n", stamp: stamp)
            sts.set { $0.acceptedToken = token }
            sts.rotate()
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
            #expect(sts.read { $0.seen.last?.form["OIDCToken"] } == token)
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(n))
        }
        let status = try daemon.status()
        #expect(!(status["lastError"] is String), "\(status)")
    }
}
