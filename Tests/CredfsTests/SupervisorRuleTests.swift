import CPosixIPC
import Foundation
import Testing

@testable import credfs

/// The supervisor's own rules (docs/hitless.md, "The supervisor", "credfs upgrade", "Crash
/// loops"), each with a real mount. Its deadlines are shortened for the test through
/// `CREDFS_SUPERVISOR_TEST` (version, handover, serving, standby), which also copies its log lines to
/// a file the test reads.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(5)))
struct SupervisorRuleTests {
    /// A supervised mount with a supervisor log and shortened deadlines.
    final class Setup {
        let dir: TempDir
        let log: String
        let mount: Supervised

        init(
            limits: String = "", arguments: [String] = ["--provider", "demo"], environment extra: [String: String] = [:]
        )
            throws
        {
            dir = try TempDir()
            chmod(dir.path, 0o755)
            log = dir.path + "/supervisor.log"
            var environment = Host.hermeticEnvironment.merging(extra) { $1 }
            environment[Supervisor.Limits.variable] = "log=\(log)" + (limits.isEmpty ? "" : "," + limits)
            do {
                mount = try Supervised(arguments, environment: environment)
            } catch {
                dir.remove()
                throw error
            }
        }

        var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        /// An executable script in the test's directory.
        func script(_ name: String, _ body: String) throws -> String {
            let path = dir.path + "/" + name
            try ("#!/bin/sh\n" + body).write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
            return path
        }

        func upgrade(to binary: String) throws -> CommandResult {
            try runCredfs(["upgrade", mount.mountpoint, "--binary", binary])
        }

        func stop() {
            try? mount.stop()
            dir.remove()
        }
    }

    /// SIGHUP to the supervisor (the pid a user finds first) refreshes now: it passes it on.
    @Test func sighupToTheSupervisorRefreshes() throws {
        let setup = try Setup(arguments: ["--provider", "demo", "--demo-lifetime", "3600"])
        defer { setup.stop() }
        try waitUntil("generation 1") { (try? setup.mount.status()["generation"] as? Int) == 1 }
        kill(setup.mount.supervisor, SIGHUP)
        try waitUntil("generation 2") { (try? setup.mount.status()["generation"] as? Int) == 2 }
        #expect(setup.logText.contains("SIGHUP: passed on to the server"))
    }

    /// A binary whose `--version` never ends: the upgrade gives up after the deadline, the
    /// serving process untouched.
    @Test func versionDeadline() throws {
        let setup = try Setup(limits: "version=1")
        defer { setup.stop() }
        let hanging = try setup.script("hangs", "exec sleep 1000\n")
        let before = try setup.mount.serverPID()
        let result = try setup.upgrade(to: hanging)
        #expect(result.status == 1)
        #expect(result.stderr.contains("did not answer --version within 1 s"), "\(result.stderr)")
        #expect(try setup.mount.serverPID() == before)
        #expect(try setup.mount.status()["restarts"] as? Int == 0)
    }

    /// A server that does not hand over (stopped, so SIGUSR2 stays pending) is killed after
    /// the deadline, and the new binary takes over as after a crash. The request is sent
    /// straight to the control socket: `credfs upgrade` would first read the stopped
    /// server's `status`.
    @Test func handoverDeadline() throws {
        let setup = try Setup(limits: "handover=1")
        defer { setup.stop() }
        let old = try setup.mount.serverPID()
        kill(old, SIGSTOP)
        let connection = credfs_connect_seqpacket(ControlSocket.path(supervisor: setup.mount.supervisor, uid: 0))
        try #require(connection >= 0)
        defer { close(connection) }
        let binary = open(Binary.credfs, O_RDONLY | O_CLOEXEC)
        defer { close(binary) }
        let answer = try ControlSocket.request(connection, binary: binary, name: Binary.credfs)
        // Should it still live (the rule broken), it must answer the reads below.
        kill(old, SIGCONT)
        #expect(answer == "ok")
        #expect(!isAlive(old))
        #expect(try setup.mount.serverPID() != old)
        #expect(try setup.mount.status()["restarts"] as? Int == 1)
        #expect(setup.logText.contains("the server did not hand over within 1 s; killing it"))
    }

    /// A binary that runs but never serves: given up after the deadline, the previous
    /// binary serves again, and the answer says so.
    @Test func servingDeadline() throws {
        let setup = try Setup(limits: "serving=2")
        defer { setup.stop() }
        let pidFile = setup.dir.path + "/silent.pid"
        let silent = try setup.script(
            "silent", "[ \"$1\" = --version ] && exit 0\necho $$ > \(pidFile)\nexec sleep 1000\n")
        let before = try setup.mount.serverPID()
        let result = try setup.upgrade(to: silent)
        // Should it still live (the rule broken), the reads below would wait for it.
        if let pid = (try? String(contentsOfFile: pidFile, encoding: .utf8)).flatMap({
            pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }) {
            kill(pid, SIGKILL)
        }
        #expect(result.status == 1)
        #expect(
            result.stderr.contains("did not take over: it did not serve within 2 s; the previous binary serves again"),
            "\(result.stderr)")
        let now = try setup.mount.serverPID()
        #expect(now != before)
        #expect(Supervisor.processStat(now).map { _ in true } ?? false)
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(now)/exe")) ?? ""
        #expect(exe == URL(fileURLWithPath: Binary.credfs).resolvingSymlinksInPath().path)
    }

    /// The new binary does not take over and the previous one cannot serve either: the answer
    /// says that (never "serves again"); once the previous one can, the supervisor's retries
    /// bring it back.
    @Test func aPreviousBinaryThatCannotServeIsReported() throws {
        let setup = try Setup(limits: "serving=3")
        defer { setup.stop() }
        let broken = setup.dir.path + "/broken"
        let wrapper = try setup.script("wrapper", "[ -e \(broken) ] && exit 1\nexec \(Binary.credfs) \"$@\"\n")
        let toWrapper = try setup.upgrade(to: wrapper)
        try #require(toWrapper.status == 0, "\(toWrapper.stderr)")
        let failing = try setup.script("failing", "[ \"$1\" = --version ] && exit 0\nexit 3\n")
        FileManager.default.createFile(atPath: broken, contents: nil)
        let result = try setup.upgrade(to: failing)
        #expect(result.status == 1)
        #expect(result.stderr.contains("did not take over: it exited (exit status 3)"), "\(result.stderr)")
        #expect(
            result.stderr.contains("the previous binary did not serve again either (exit status 1)"), "\(result.stderr)"
        )
        #expect(!result.stderr.contains("serves again"))
        try FileManager.default.removeItem(atPath: broken)
        let restarts = try setup.mount.status()["restarts"] as? Int ?? 0
        #expect(restarts >= 2)
    }

    /// The standby (docs/hitless.md, "The standby"): once the server serves, a second process
    /// waits, holding nothing of the mount; a kill -9 is taken over by it, and another
    /// standby follows. An upgrade starts the new binary as the standby first.
    @Test func theStandbyTakesOverAndAnotherFollows() throws {
        let setup = try Setup()
        defer { setup.stop() }
        func readyStandbys() -> [pid_t] {
            setup.logText.split(separator: "\n").compactMap { line in
                guard let at = line.range(of: "a standby is ready (pid ") else { return nil }
                return pid_t(line[at.upperBound...].prefix { $0.isNumber })
            }
        }
        let first = try setup.mount.serverPID()
        try waitUntil("a ready standby", timeout: 20) { !readyStandbys().isEmpty }
        let standby = try #require(readyStandbys().last)
        #expect(standby != first)
        // It holds no part of the mount: no /dev/fuse descriptor.
        let held = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(standby)/fd")) ?? []
        #expect(
            !held.contains {
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(standby)/fd/\($0)"))
                    == "/dev/fuse"
            })
        kill(first, SIGKILL)
        try waitUntil("the standby serves", timeout: 10) { (try? setup.mount.serverPID()) == standby }
        #expect(try setup.mount.status()["restarts"] as? Int == 1)
        #expect(setup.logText.contains("its standby takes over now"))
        try waitUntil("another standby", timeout: 20) { readyStandbys().count >= 2 }
        let upgraded = try setup.upgrade(to: Binary.credfs)
        #expect(upgraded.status == 0, "\(upgraded.stderr)")
        #expect(try setup.mount.status()["restarts"] as? Int == 2)
        #expect(readyStandbys().count >= 3)
    }

    /// Successors that die before they serve are started again with a growing pause (0.2 s
    /// doubling after three); a server killed while serving is replaced at once, however many
    /// crashes came before ("never served", not "lived briefly").
    @Test func crashLoopBacksOffButAServingServerIsReplacedAtOnce() throws {
        // Cold successors only: a standby, started before the binary broke, would serve.
        let setup = try Setup(limits: "standby=0")
        defer { setup.stop() }
        let broken = setup.dir.path + "/broken"
        let starts = setup.dir.path + "/starts"
        let wrapper = try setup.script(
            "wrapper",
            "if [ -e \(broken) ]; then date +%s.%N >> \(starts); exit 1; fi\nexec \(Binary.credfs) \"$@\"\n")
        let toWrapper = try setup.upgrade(to: wrapper)
        try #require(toWrapper.status == 0, "\(toWrapper.stderr)")

        FileManager.default.createFile(atPath: broken, contents: nil)
        kill(try setup.mount.serverPID(), SIGKILL)
        func times() -> [Double] {
            ((try? String(contentsOfFile: starts, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
                Double($0)
            }
        }
        try waitUntil("seven failed starts", timeout: 30) { times().count >= 7 }
        try FileManager.default.removeItem(atPath: broken)
        let seen = times()
        let gaps = zip(seen.dropFirst(), seen).map { $0 - $1 }
        Timings.report("crash loop: gaps between failed starts \(gaps.map { Int($0 * 1000) }) ms")
        // The pauses the rule sets before starts 5, 6 and 7: 0.4, 0.8, 1.6 s (a loaded
        // machine only makes them longer).
        #expect(gaps[3] >= 0.4 && gaps[4] >= 0.8 && gaps[5] >= 1.6, "\(gaps)")
        #expect(setup.logText.contains("3 in a row died before serving: starting its successor in 0.2 s"))

        // Served again; then three kills of serving servers in a row: each replaced at once.
        try waitUntil("a server again", timeout: 15) { (try? setup.mount.status()["pid"] as? Int) != nil }
        for round in 1...3 {
            let old = try setup.mount.serverPID()
            kill(old, SIGKILL)
            try waitUntil("successor \(round)", timeout: 10) {
                (try? setup.mount.serverPID()).map { $0 != old && $0 > 0 } ?? false
            }
        }
        let tail = setup.logText.split(separator: "\n").filter { $0.contains("the server died") }.suffix(3)
        #expect(tail.count == 3)
        for line in tail { #expect(line.hasSuffix("starting its successor now"), "\(line)") }
    }

    static let zombieSource = """
        #include <pthread.h>
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        static void *stay(void *arg) { (void)arg; for (;;) pause(); return 0; }
        int main(int argc, char **argv) {
            const char *flag = getenv("ZOMBIE_FLAG"), *real = getenv("ZOMBIE_REAL"), *pids = getenv("ZOMBIE_PIDS");
            int version = argc > 1 && strcmp(argv[1], "--version") == 0;
            if (!version && flag && access(flag, F_OK) == 0) {
                FILE *f = fopen(pids, "a");
                if (f) { fprintf(f, "%d\\n", (int)getpid()); fclose(f); }
                pthread_t thread;
                pthread_create(&thread, 0, stay, 0);
                pthread_exit(0);
            }
            execv(real, argv);
            return 127;
        }
        """

    /// A server whose main thread is gone while another thread lives (its pidfd never
    /// fires, as when a thread is held in the kernel): the supervisor counts it as dead and a
    /// successor takes over while that process still exists.
    @Test func aZombieMainThreadLeadsToASuccessor() throws {
        let flag = NSTemporaryDirectory() + "credfs-zombie-\(getpid())-flag"
        let pids = NSTemporaryDirectory() + "credfs-zombie-\(getpid())-pids"
        // Cold successors only: a standby, started before the flag, would serve.
        let setup = try Setup(
            limits: "standby=0", environment: ["ZOMBIE_FLAG": flag, "ZOMBIE_REAL": Binary.credfs, "ZOMBIE_PIDS": pids])
        defer { setup.stop() }
        let source = setup.dir.path + "/zombie.c"
        let program = setup.dir.path + "/zombie"
        try Self.zombieSource.write(toFile: source, atomically: true, encoding: .utf8)
        let compiled = try runProcess("/usr/bin/cc", ["-o", program, source, "-lpthread"])
        try #require(compiled.status == 0, "\(compiled.stderr)")
        let toZombie = try setup.upgrade(to: program)
        try #require(toZombie.status == 0, "\(toZombie.stderr)")

        func zombies() -> [pid_t] {
            ((try? String(contentsOfFile: pids, encoding: .utf8)) ?? "").split(separator: "\n").compactMap {
                pid_t($0)
            }
        }
        defer {
            zombies().forEach { kill($0, SIGKILL) }
            try? FileManager.default.removeItem(atPath: flag)
            try? FileManager.default.removeItem(atPath: pids)
        }
        FileManager.default.createFile(atPath: flag, contents: nil)
        let old = try setup.mount.serverPID()
        kill(old, SIGKILL)
        try waitUntil("a server whose main thread is gone", timeout: 10) {
            zombies().contains { Supervisor.mainThreadGone($0) }
        }
        try FileManager.default.removeItem(atPath: flag)
        let held = zombies()
        // A successor process first (no read of the mount: nothing would answer it without one).
        try waitUntil("a successor process", timeout: 15) {
            childPIDs(of: setup.mount.supervisor).contains { !zombies().contains($0) }
        }
        try waitUntil("a successor that serves", timeout: 15) {
            (try? setup.mount.serverPID()).map { $0 != old && $0 > 0 && !held.contains($0) } ?? false
        }
        // The first of them still exists (its thread lives): the successor did not wait for it.
        #expect(held.first.map(Supervisor.mainThreadGone) == true)
        #expect(setup.logText.contains("the server's main thread is gone but the process cannot end"))
    }
}
