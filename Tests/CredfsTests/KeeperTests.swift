import Foundation
import Testing

@testable import credfs

/// `credfs keeper` (docs/operations.md, "Kubernetes"): the node's fd store, tried with plain
/// processes (scripts/test-containers tries it under podman).
@Suite(.serialized) struct KeeperTests {
    @Test func messagesCarryRoleAndNamesInBatches() throws {
        let names = (0..<20).map { "state.\($0)" }
        let messages = KeeperProtocol.messages(role: "successor", names: names)
        #expect(messages.map(\.count) == [16, 4])
        let parsed = try messages.map { try #require(KeeperProtocol.parse($0.text)) }
        #expect(parsed.flatMap(\.names) == names)
        #expect(parsed.map(\.done) == [false, true])
        #expect(KeeperProtocol.messages(role: "first", names: []).map(\.count) == [0])
        #expect(KeeperProtocol.parse("ROLE=first\nFDNAMES=\nDONE=1")?.names == [])
        #expect(KeeperProtocol.parse("ROLE=owner\nFDNAMES=\nDONE=1") == nil)
    }

    /// A process started in the background with stderr to a file.
    final class Background {
        let process = Process()
        init(_ arguments: [String], log: String) throws {
            FileManager.default.createFile(atPath: log, contents: nil)
            process.executableURL = URL(fileURLWithPath: Binary.credfs)
            process.arguments = arguments
            process.environment = Host.hermeticEnvironment
            process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
            process.standardOutput = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
        }
        var pid: pid_t { process.processIdentifier }
        func end(_ sig: Int32) {
            if process.isRunning { kill(pid, sig) }
            process.waitUntilExit()
        }
    }

    /// A keeper serving in `dir` with `options`: its socket, the mount point (below a
    /// parent directory, as on a node) and the process.
    static func node(in dir: TempDir, _ options: [String]) throws -> (String, String, Background) {
        let socket = dir.path + "/keeper/keeper.sock"
        let mountpoint = dir.path + "/parent/.alibabacloud"
        try FileManager.default.createDirectory(atPath: dir.path + "/parent", withIntermediateDirectories: true)
        let keeper = try Background(
            ["keeper", "serve", "--socket", socket, "--mountpoint", mountpoint] + options, log: dir.path + "/keeper.log"
        )
        return (socket, mountpoint, keeper)
    }

    /// kill -9 of a launched server, a second launcher waiting while the first serves, a
    /// handover; the same connection (st_dev) throughout; SIGTERM to the keeper with no
    /// server unmounts.
    @Test func theConnectionOutlivesServersAndEndsWithTheKeeper() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let (socket, mountpoint, keeper) = try Self.node(in: dir, ["--timeout", "30", "--term-wait", "5"])
        var servers: [Background] = []
        defer {
            servers.forEach { $0.end(SIGKILL) }
            keeper.end(SIGKILL)
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        }
        let launch = ["keeper", "launch", "--socket", socket, "--", "mount", mountpoint, "--provider", "demo"]
        servers.append(try Background(launch, log: dir.path + "/server1.log"))
        try waitUntil("the first mount", timeout: 20) { readFile(mountpoint + "/credentials").bytes != nil }
        var first = stat()
        #expect(stat(mountpoint, &first) == 0)

        // A second launcher waits while the first serves (single owner).
        servers.append(try Background(launch, log: dir.path + "/server2.log"))
        try waitUntil("the keeper to see the waiting launcher") {
            (try? String(contentsOfFile: dir.path + "/keeper.log", encoding: .utf8))?.contains("waits") == true
        }
        #expect(servers[1].process.isRunning)
        kill(servers[0].pid, SIGKILL)
        servers[0].process.waitUntilExit()
        try waitUntil("the successor to serve", timeout: 20) {
            (try? String(contentsOfFile: dir.path + "/keeper.log", encoding: .utf8))?.contains(
                "pid \(servers[1].pid) serves (successor") == true
        }
        #expect(readFile(mountpoint + "/credentials").bytes != nil)
        var second = stat()
        #expect(stat(mountpoint, &second) == 0 && second.st_dev == first.st_dev)

        // A handover (preStop): the server exits 0 without unmounting; the next one serves.
        let handover = try runCredfs(["keeper", "handover", "--pid", String(servers[1].pid), "--within", "10"])
        #expect(handover.status == 0, "\(handover.stderr)")
        servers[1].process.waitUntilExit()
        #expect(servers[1].process.terminationStatus == 0)
        servers.append(try Background(launch, log: dir.path + "/server3.log"))
        try waitUntil("the third server", timeout: 20) { readFile(mountpoint + "/credentials").bytes != nil }
        var third = stat()
        #expect(stat(mountpoint, &third) == 0 && third.st_dev == first.st_dev)

        // Delete: the server hands over, the keeper is terminated: nothing stays mounted.
        #expect(try runCredfs(["keeper", "handover", "--pid", String(servers[2].pid)]).status == 0)
        keeper.end(SIGTERM)
        #expect(keeper.process.terminationStatus == 0)
        #expect(!isMounted(mountpoint))
    }

    /// A handover with no successor: after --timeout the keeper unmounts and ends the
    /// connection (a DaemonSet deleted while its keeper stays).
    @Test func noSuccessorWithinTheTimeoutEndsTheMount() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let (socket, mountpoint, keeper) = try Self.node(in: dir, ["--timeout", "1"])
        let server = try Background(
            ["keeper", "launch", "--socket", socket, "--", "mount", mountpoint, "--provider", "demo"],
            log: dir.path + "/server.log")
        defer {
            server.end(SIGKILL)
            keeper.end(SIGKILL)
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
        }
        try waitUntil("the mount", timeout: 20) { readFile(mountpoint + "/credentials").bytes != nil }
        #expect(try runCredfs(["keeper", "handover", "--pid", String(server.pid)]).status == 0)
        server.process.waitUntilExit()
        #expect(isMounted(mountpoint))
        try waitUntil("the keeper to end the connection", timeout: 10) { !isMounted(mountpoint) }
        #expect(keeper.process.isRunning)
    }
}
