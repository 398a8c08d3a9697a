import Foundation
import Testing

/// The FUSE fuzzer (issue 10): `Tests/fuzz/fuse_fuzz.c`, compiled with `cc`, run as
/// nobody (65534) against a real `--allow-other --mode 0444` mount whose credentials come
/// from the fuzzer's own helper (`--provider process`): 3-second credentials, 30% of the
/// answers hostile (bytes outside 0x21–0x7E, Expirations like 1e19 or Feb 30, broken
/// JSON, 70 KB, exit 1), so the run crosses rotations, rejected answers and expiry.
/// The daemon must survive, every full read must be one valid generation, and no call
/// (nor a concurrent `status` read) may take longer than the hang limit.
///
/// `CREDFS_FUZZ_SEED` and `CREDFS_FUZZ_SECONDS` change the run; `scripts/fuzz` runs longer.
@Suite(.serialized) struct FuseFuzzTests {
    static let source = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("fuzz/fuse_fuzz.c").path

    /// Kinds of calls to leave out (`--without`) while a bug this fuzzer found is open
    /// outside this suite's files. Empty: the two it found (a readdir offset past the end
    /// trapped the daemon; a page-cache fill through a pinned descriptor poisoned the
    /// current generation) are fixed; docs/security.md, "Findings".
    static let knownBugs: [String] = []

    @Test func aSeededRunAsNobodyLeavesTheDaemonServing() throws {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["CREDFS_FUZZ_SEED"].flatMap(UInt64.init) ?? 20_261_129
        let seconds = environment["CREDFS_FUZZ_SECONDS"].flatMap(Double.init) ?? 30

        let dir = try TempDir()
        defer { dir.remove() }
        chmod(dir.path, 0o755)
        let fuzzer = dir.path + "/fuse_fuzz"
        let compiled = try runProcess("/usr/bin/cc", ["-O2", "-o", fuzzer, Self.source])
        try #require(compiled.status == 0, "cc: \(compiled.stderr)")

        let daemon = try Daemon(
            [
                "--provider", "process", "--command", "\(fuzzer) --helper \(dir.path)/state 3 \(seed)",
                "--allow-other", "--mode", "0444", "--initial-wait", "2",
            ], in: dir)
        daemon.removesDirectory = false
        defer { daemon.stop() }
        try waitUntil("the first credentials", timeout: 10) { daemon.read("credentials").bytes != nil }

        let run = try runAs(
            uid: 65534, gid: 65534,
            [fuzzer, daemon.mountpoint, "--seed", String(seed), "--seconds", String(seconds), "--procs", "6"]
                + (Self.knownBugs.isEmpty ? [] : ["--without", Self.knownBugs.joined(separator: ",")]))
        print(run.stdout, terminator: "")
        let calls = run.stderr.split(separator: "\n").filter { $0.hasPrefix("fuse-fuzz: calls by kind") }
        for line in calls { print(line) }
        #expect(run.status == 0, "\(run.stdout)\n\(run.stderr.suffix(4000))")
        #expect(run.stdout.contains("daemon alive: ok"))

        // Still serving, to everyone, after the run.
        #expect(daemon.process.isRunning, "credfs died: \(daemon.log.suffix(2000))")
        #expect(try daemon.status()["state"] != nil)
        let reread = try runAs(uid: 65534, gid: 65534, ["cat", daemon.mountpoint + "/status"])
        #expect(reread.status == 0)
        // No credential value of a rejected answer ever reached the log either.
        #expect(!daemon.log.contains("SECB") && !daemon.log.contains("TOKB") && !daemon.log.contains("SECG"))
    }
}
