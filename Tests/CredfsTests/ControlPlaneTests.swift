import CPosixIPC
import Foundation
import Testing

@testable import credfs

/// `Tests/hostile/control_plane.c`, compiled with `cc` into a directory every user may
/// enter, and run as nobody (or as root where the test says so).
struct Attacker {
    static let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("hostile/control_plane.c").path

    let dir: TempDir
    let program: String

    init() throws {
        dir = try TempDir()
        chmod(dir.path, 0o755)
        program = dir.path + "/control_plane"
        let compiled = try runProcess("/usr/bin/cc", ["-O2", "-o", program, Self.source])
        guard compiled.status == 0 else {
            dir.remove()
            throw HarnessError(description: "cc: \(compiled.stderr)")
        }
    }

    func remove() { dir.remove() }

    /// setpriv's arguments for nobody; with `dacOverride`, nobody that may still enter any
    /// directory (CAP_DAC_OVERRIDE, ambient): it gets past the file modes to the
    /// supervisor's own check.
    static func asNobody(dacOverride: Bool = false) -> [String] {
        ["--reuid=65534", "--regid=65534", "--clear-groups"]
            + (dacOverride ? ["--inh-caps=+dac_override", "--ambient-caps=+dac_override"] : []) + ["--"]
    }

    /// Runs to completion as nobody.
    func run(_ arguments: [String]) throws -> CommandResult {
        try runProcess("/usr/bin/setpriv", Self.asNobody() + [program] + arguments)
    }

    /// A long-running attack as nobody: its output goes to a file the test reads.
    final class Running {
        let process = Process()
        let output: String

        init(_ attacker: Attacker, _ arguments: [String], dacOverride: Bool = false) throws {
            output = attacker.dir.path + "/out-\(UInt32.random(in: 0...UInt32.max))"
            FileManager.default.createFile(atPath: output, contents: nil)
            process.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            process.arguments = Attacker.asNobody(dacOverride: dacOverride) + [attacker.program] + arguments
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
            process.standardError = process.standardOutput
            try process.run()
        }

        var lines: [String] {
            ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        }

        func waitFor(_ line: String) throws {
            try waitUntil("the attacker to print \(line)", timeout: 10) {
                guard process.isRunning else { throw HarnessError(description: "the attacker exited: \(lines)") }
                return lines.contains(line)
            }
        }

        func stop() {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// The name the supervisor used to listen on before the private channel (the abstract
/// namespace, from the mount path): what a squatter binds.
func oldSupervisorName(_ mountpoint: String) -> String {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in mountpoint.utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x100_0000_01b3
    }
    let hex = String(hash, radix: 16)
    return "@credfs-supervisor-" + String(repeating: "0", count: max(0, 16 - hex.count)) + hex
}

/// The takeover's control plane under attack (docs/security.md, "The control plane"): what
/// another local user (nobody) can do to the supervisor of a real mount, and the exec paths.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(5)))
struct ControlPlaneTests {
    /// Somebody binds the old name and tries to make the control socket before the mount:
    /// `credfs mount` still mounts, and `upgrade` reaches the real supervisor.
    @Test func squattingBeforeTheMountDoesNotStopIt() throws {
        let attacker = try Attacker()
        defer { attacker.remove() }
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        let squatter = try Attacker.Running(attacker, ["squat", oldSupervisorName(mountpoint)])
        defer { squatter.stop() }
        try squatter.waitFor("bound")
        let made = try attacker.run([
            "create", ControlSocket.directory(uid: 0), ControlSocket.directory(uid: 0) + "/squat.sock",
        ])
        #expect(!made.stdout.contains("mkdir 0\n") && !made.stdout.contains("bind 0\n"), "\(made.stdout)")

        let mounted = try runCredfs(["mount", mountpoint, "--provider", "demo"])
        #expect(mounted.status == 0, "\(mounted.stderr)")
        defer { MountView(mountpoint).remove() }
        let mount = MountView(mountpoint)
        let before = try mount.serverPID()
        let upgraded = try runCredfs(["upgrade", mountpoint, "--binary", Binary.credfs])
        #expect(upgraded.status == 0, "\(upgraded.stderr)")
        #expect(try mount.serverPID() != before)
        #expect(!squatter.lines.contains("request"))
    }

    /// A `-f` mount has no supervisor: `upgrade` says so and exits 1, even with a squatter on
    /// the old name that answers "ok" to anything.
    @Test func upgradeOfAForegroundMountSaysThereIsNoSupervisor() throws {
        let attacker = try Attacker()
        defer { attacker.remove() }
        let daemon = try Daemon(["--provider", "demo"])
        defer { daemon.stop() }
        let squatter = try Attacker.Running(attacker, ["squat", oldSupervisorName(daemon.mountpoint)])
        defer { squatter.stop() }
        try squatter.waitFor("bound")
        let result = try runCredfs(["upgrade", daemon.mountpoint, "--binary", Binary.credfs])
        #expect(result.status == 1)
        #expect(result.stderr.contains("no credfs supervisor serves"), "\(result.stderr)")
        #expect(!squatter.lines.contains("request"))
        #expect(daemon.process.isRunning)
    }

    /// Descriptors from another user never reach the supervisor: a TCP socket whose close
    /// waits (SO_LINGER over unsent data) sent to the old name, to the control socket, and
    /// (with CAP_DAC_OVERRIDE past the directory's mode) as an upgrade request. With the
    /// attacker still holding its end, the supervisor takes a kill -9 over, passes a SIGHUP
    /// on and upgrades.
    @Test func descriptorsFromAnotherUserCannotReachTheSupervisor() throws {
        let attacker = try Attacker()
        defer { attacker.remove() }
        let dir = try TempDir()
        defer { dir.remove() }
        let log = dir.path + "/supervisor.log"
        var environment = Host.hermeticEnvironment
        environment[Supervisor.Limits.variable] = "log=\(log)"
        let mount = try Supervised(["--provider", "demo", "--allow-other"], environment: environment)
        defer { try? mount.stop() }
        let socket = ControlSocket.path(supervisor: mount.supervisor, uid: 0)
        let old = oldSupervisorName(mount.mountpoint)

        let plain = try Attacker.Running(attacker, ["linger", old, socket])
        defer { plain.stop() }
        try plain.waitFor("done")
        #expect(plain.lines.contains("\(old) error \(ECONNREFUSED)"), "\(plain.lines)")
        #expect(plain.lines.contains("\(socket) error \(EACCES)"), "\(plain.lines)")
        // With the attacker still holding its end, the supervisor is not held: a kill -9 is
        // taken over, a SIGHUP refreshes, an upgrade works.
        try Self.supervisorServes(mount, restarts: 1)

        let past = try Attacker.Running(attacker, ["linger", socket], dacOverride: true)
        defer { past.stop() }
        try past.waitFor("done")
        // Refused before anything was read: closed without an answer (before its request
        // went, EPIPE; after, end of file: which one depends on who runs first).
        #expect(
            past.lines.contains("\(socket) eof") || past.lines.contains("\(socket) error \(EPIPE)"), "\(past.lines)")
        #expect(
            ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").contains(
                "refused an upgrade request from uid 65534"))
        try Self.supervisorServes(mount, restarts: 3)
    }

    /// A kill -9 is taken over (the successor process is seen before the mount is read: with
    /// the supervisor held, nothing would answer), a SIGHUP to the supervisor refreshes, an
    /// upgrade works.
    static func supervisorServes(_ mount: Supervised, restarts: Int) throws {
        let first = try mount.serverPID()
        kill(first, SIGKILL)
        try waitUntil("a successor process", timeout: 10) { childPIDs(of: mount.supervisor).contains { $0 != first } }
        try waitUntil("a successor", timeout: 10) { (try? mount.serverPID()).map { $0 != first && $0 > 0 } ?? false }
        let generation = try mount.status()["generation"] as? Int ?? 0
        kill(mount.supervisor, SIGHUP)
        try waitUntil("a refresh after SIGHUP to the supervisor") {
            (try? mount.status()["generation"] as? Int ?? 0) ?? 0 > generation
        }
        let upgraded = try runCredfs(["upgrade", mount.mountpoint, "--binary", Binary.credfs])
        #expect(upgraded.status == 0, "\(upgraded.stderr)")
        #expect(try mount.status()["restarts"] as? Int == restarts + 1)
    }

    /// `credfs upgrade` run by another user is refused (it cannot even connect), and nothing
    /// changes.
    @Test func upgradeByAnotherUserIsRefused() throws {
        let mount = try Supervised(["--provider", "demo", "--allow-other"])
        defer { try? mount.stop() }
        // Another user may read the mount's status (it finds the supervisor from it).
        chmod(mount.dir.path, 0o755)
        let before = try mount.serverPID()
        let result = try runAs(
            uid: 65534, gid: 65534, [Binary.credfs, "upgrade", mount.mountpoint, "--binary", "/bin/true"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("only root or the mount's owner may upgrade"), "\(result.stderr)")
        #expect(try mount.serverPID() == before)
        #expect(try mount.status()["restarts"] as? Int == 0)
    }

    /// The binary file the mount was started from is replaced: a successor still runs the
    /// binary the supervisor started with (its descriptor), never the new file.
    @Test func aReplacedBinaryFileIsNotRun() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let copy = dir.path + "/credfs"
        try FileManager.default.copyItem(atPath: Binary.credfs, toPath: copy)
        let marker = dir.path + "/replacement-ran"
        let mountpoint = dir.path + "/mnt"
        let mounted = try runProcess(
            copy, ["mount", mountpoint, "--provider", "demo"], environment: Host.hermeticEnvironment)
        try #require(mounted.status == 0, "\(mounted.stderr)")
        defer { MountView(mountpoint).remove() }
        let replacement = dir.path + "/credfs.new"
        try "#!/bin/sh\ntouch \(marker)\nexit 1\n".write(toFile: replacement, atomically: true, encoding: .utf8)
        chmod(replacement, 0o755)
        #expect(rename(replacement, copy) == 0)

        let mount = MountView(mountpoint)
        let first = try mount.serverPID()
        let supervisor = parentPID(of: first) ?? 0
        kill(first, SIGKILL)
        try waitUntil("a successor running the binary the mount was started from", timeout: 10) {
            childPIDs(of: supervisor).contains {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/exe")) == copy + " (deleted)"
            }
        }
        try waitUntil("a successor", timeout: 10) { (try? mount.serverPID()).map { $0 != first && $0 > 0 } ?? false }
        #expect(try mount.status()["restarts"] as? Int == 1)
        #expect(!FileManager.default.fileExists(atPath: marker))
        let exe =
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(try mount.serverPID())/exe")) ?? ""
        #expect(exe == copy + " (deleted)")
    }

    /// The mount is started from a binary that is then deleted, in a directory that holds an
    /// executable `mount`: a successor runs the deleted binary, never `./mount` (the old
    /// supervisor's `/bin/sh -c … exec /proc/self/exe` ran the shell, which ran `./mount`).
    @Test func aDeletedBinaryNeverRunsAMountFromTheWorkingDirectory() throws {
        let attacker = try Attacker()
        defer { attacker.remove() }
        let dir = try TempDir()
        defer { dir.remove() }
        let copy = dir.path + "/credfs"
        try FileManager.default.copyItem(atPath: Binary.credfs, toPath: copy)
        let work = dir.path + "/work"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        let marker = dir.path + "/dot-mount-ran"
        try "#!/bin/sh\ntouch \(marker)\nexit 1\n".write(toFile: work + "/mount", atomically: true, encoding: .utf8)
        chmod(work + "/mount", 0o755)
        let mountpoint = dir.path + "/mnt"

        let launcher = Process()
        launcher.executableURL = URL(fileURLWithPath: attacker.program)
        launcher.arguments = ["fexec", copy, "credfs", "mount", mountpoint, "--provider", "demo"]
        launcher.currentDirectoryURL = URL(fileURLWithPath: work)
        launcher.environment = Host.hermeticEnvironment
        launcher.standardInput = FileHandle.nullDevice
        launcher.standardOutput = FileHandle.nullDevice
        launcher.standardError = FileHandle.nullDevice
        try launcher.run()
        launcher.waitUntilExit()
        try #require(launcher.terminationStatus == 0)
        defer { MountView(mountpoint).remove() }
        #expect(!FileManager.default.fileExists(atPath: copy))

        let mount = MountView(mountpoint)
        for round in 1...2 {
            let old = try mount.serverPID()
            let supervisor = parentPID(of: old) ?? 0
            kill(old, SIGKILL)
            try waitUntil("a successor running the deleted binary", timeout: 10) {
                childPIDs(of: supervisor).contains {
                    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\($0)/exe")) == copy
                        + " (deleted)"
                        && $0 != old
                }
            }
            try waitUntil("a successor", timeout: 10) { (try? mount.serverPID()).map { $0 != old && $0 > 0 } ?? false }
            #expect(try mount.status()["restarts"] as? Int == round)
        }
        #expect(!FileManager.default.fileExists(atPath: marker))
        let supervisor = parentPID(of: try mount.serverPID()) ?? 0
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(supervisor)/cwd")) == "/")
    }

    /// No process of a mount shows a secret in /proc/PID/cmdline: not `credfs mount` itself,
    /// the supervisor, the server, a successor after kill -9 or after an upgrade, nor a
    /// `-f` process (which scrubs its own argv).
    @Test func noSecretInAnyArgv() throws {
        let secrets = ["TOKSECRET", "EXTSECRET", "POLSECRET"]
        let arguments = [
            "--provider", "ram-role-arn", "--source-provider", "uri",
            "--uri", "http://127.0.0.1:1/credentials?token=TOKSECRET", "--role-arn", "acs:ram::1:role/r",
            "--external-id", "EXTSECRET", "--policy={\"Statement\":\"POLSECRET\"}", "--sts-endpoint",
            "http://127.0.0.1:1", "--initial-wait", "0",
        ]
        func cmdline(_ pid: pid_t) -> String {
            let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") ?? Data()
            return String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\0", with: " ")
        }
        func clean(_ pid: pid_t, _ who: String) {
            let line = cmdline(pid)
            #expect(!line.isEmpty, "\(who): no cmdline")
            for secret in secrets { #expect(!line.contains(secret), "\(who): \(line)") }
        }

        // `credfs mount` while it waits for the mount: read once it has started its child
        // (it scrubbed its argv before that).
        let dir = try TempDir()
        defer { dir.remove() }
        let mountpoint = dir.path + "/mnt"
        let parent = Process()
        parent.executableURL = URL(fileURLWithPath: Binary.credfs)
        parent.arguments = ["mount", mountpoint] + arguments
        parent.environment = Host.hermeticEnvironment
        parent.standardInput = FileHandle.nullDevice
        parent.standardOutput = FileHandle.nullDevice
        parent.standardError = FileHandle.nullDevice
        try parent.run()
        var sawParent = false
        while parent.isRunning {
            if childPIDs(of: parent.processIdentifier).isEmpty { continue }
            let line = cmdline(parent.processIdentifier)
            if parent.isRunning, line.contains("mount") {
                sawParent = true
                for secret in secrets { #expect(!line.contains(secret), "credfs mount: \(line)") }
            }
            break
        }
        parent.waitUntilExit()
        #expect(parent.terminationStatus == 0)
        let mount = MountView(mountpoint)
        defer { MountView(mountpoint).remove() }
        let server = try mount.serverPID()
        let supervisor = parentPID(of: server) ?? 0
        clean(supervisor, "supervisor")
        clean(server, "server")
        kill(server, SIGKILL)
        try waitUntil("a successor", timeout: 10) { (try? mount.serverPID()).map { $0 != server && $0 > 0 } ?? false }
        clean(try mount.serverPID(), "successor after kill -9")
        let upgraded = try runCredfs(["upgrade", mountpoint, "--binary", Binary.credfs])
        #expect(upgraded.status == 0, "\(upgraded.stderr)")
        clean(try mount.serverPID(), "successor after upgrade")
        #expect(parentPID(of: try mount.serverPID()) == supervisor)
        if !sawParent { Timings.report("argv: credfs mount exited before its cmdline could be read") }

        let foreground = try Daemon(arguments)
        defer { foreground.stop() }
        clean(foreground.pid, "mount -f")
    }

    /// The argv scrubber on each form a secret can take: `--flag VALUE`, `--flag=VALUE`, an
    /// fstab `-o` list (keys with `_`), and nothing else touched.
    @Test func scrubbingCoversEveryForm() {
        let given = [
            "credfs", "mount", "/m", "--uri", "http://h/?token=T1", "--external-id=E1", "--policy", "{\"a\":1}",
            "--policy-file", "/etc/p.json", "-o", "provider=uri,uri=http://h/?token=T2,external_id=E2,allow_other",
            "-opolicy=P3,uid=1", "--region", "cn-x",
        ]
        var argv = given.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        argv.withUnsafeMutableBufferPointer { buffer in
            if let base = buffer.baseAddress { SecretArguments.scrub(base, count: given.count) }
        }
        let after = argv.prefix(given.count).map { String(cString: $0!) }
        #expect(
            after == [
                "credfs", "mount", "/m", "--uri", "******************", "--external-id=**", "--policy", "*******",
                "--policy-file", "/etc/p.json", "-o",
                "provider=uri,uri=******************,external_id=**,allow_other", "-opolicy=**,uid=1", "--region",
                "cn-x",
            ])
    }

    /// The store protocol reads back what it writes, as the supervisor and the fake manager
    /// read it; the arguments memfd round-trips.
    @Test func storeProtocolAndArgumentsFileRoundTrip() throws {
        let messages: [StoreProtocol.Message] = [
            .store(StoreProtocol.fuse), .remove(StoreProtocol.state(7)), .serving, .stopping, .standby, .adopt,
            .ready(status: "serving generation 3"), .status("refresh failing"),
        ]
        for message in messages { #expect(StoreProtocol.Message.parse(message.text) == [message]) }
        #expect(StoreProtocol.Message.parse("FDSTORE=1") == [.store("stored")])
        #expect(StoreProtocol.Message.parse("FDSTOREREMOVE=1") == [])
        #expect(StoreProtocol.Message.parse("garbage\n=\nX=1") == [])
        #expect(StoreProtocol.stateSequence(StoreProtocol.state(42)) == 42)
        #expect(StoreProtocol.stateSequence("state.x") == nil)
        #expect(StoreProtocol.stateSequence(StoreProtocol.fuse) == nil)

        let arguments = ["/mnt/x", "--uri", "http://h/?t=1", "--policy", "{\"a\": [1, 2]}", ""]
        let fd = ArgumentsFile.make(arguments: arguments, workingDirectory: "/work dir")
        try #require(fd >= 0)
        defer { close(fd) }
        let read = ArgumentsFile.read(fd)
        #expect(read?.workingDirectory == "/work dir")
        #expect(read?.arguments == arguments)
        // Sealed: nobody changes it after it was made.
        #expect(write(fd, "x", 1) < 0)
        let other = MemoryFile.make(name: "not-arguments", bytes: Array("something\0else\0".utf8))
        defer { close(other) }
        #expect(ArgumentsFile.read(other) == nil)
    }
}

/// A mount found by its path only (made by the test some other way than `Supervised`).
struct MountView {
    let mountpoint: String
    init(_ mountpoint: String) { self.mountpoint = mountpoint }

    func status() throws -> [String: Any] {
        let read = readFile(mountpoint + "/status")
        guard let bytes = read.bytes,
            let object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
        else { throw HarnessError(description: "status unreadable: errno \(read.error)") }
        return object
    }

    func serverPID() throws -> pid_t { pid_t(try status()["pid"] as? Int ?? -1) }

    /// Unmounts (the supervisor and server then exit); never leaves a mount behind.
    func remove() {
        _ = try? runCredfs(["unmount", mountpoint])
        if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
    }
}

/// The processes whose parent is `pid`.
func childPIDs(of pid: pid_t) -> [pid_t] {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap(pid_t.init).filter { parentPID(of: $0) == pid }
}
