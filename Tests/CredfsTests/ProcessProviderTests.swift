import Foundation
import Testing

@testable import CredentialCore

/// `process`: a helper program on disk, run as argv without a shell.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct ProcessProviderTests {
    /// A helper that prints generation `$(cat counter)` in the External layout and records its argv.
    struct Helper {
        let dir: TempDir
        var script: String { dir.path + "/helper" }
        var counter: String { dir.path + "/generation" }
        var argsFile: String { dir.path + "/args" }

        init(body: String? = nil) throws {
            dir = try TempDir()
            chmod(dir.path, 0o755)
            let expiration = ISO8601DateFormatter().string(from: Date().addingTimeInterval(3600))
            let text =
                body ?? """
                    #!/bin/sh
                    printf '%s\\n' "$@" > '\(dir.path)/args'
                    g=$(cat '\(dir.path)/generation')
                    printf '{"mode":"StsToken","access_key_id":"STS.FAKE%sx%s","access_key_secret":"secret-%s-%s","sts_token":"token-%s-%s","expiration":"\(expiration)"}\\n' \\
                      "$g" AAAAAAAAAAAA "$g" ssssssssssssssssssss "$g" tttttttttttttttttttttttttttttttttttttttttttttttttttttttttttt
                    """
            try text.write(toFile: dir.path + "/helper", atomically: true, encoding: .utf8)
            chmod(dir.path + "/helper", 0o755)
            try "1".write(toFile: dir.path + "/generation", atomically: true, encoding: .utf8)
        }

        func set(generation: Int) throws {
            try String(generation).write(toFile: counter, atomically: true, encoding: .utf8)
        }
    }

    @Test func mountServesRotatingCredentialsFromTheCommand() async throws {
        let helper = try Helper()
        defer { helper.dir.remove() }
        let daemon = try Daemon([
            "--provider", "process", "--command", helper.script + " --profile $HOME a*b",
        ])
        defer { daemon.stop() }
        try daemon.expectFirstGeneration(provider: "process")
        // argv, no shell: nothing was expanded.
        #expect(
            try String(contentsOfFile: helper.argsFile, encoding: .utf8) == "--profile\n$HOME\na*b\n")
        for n in 2...4 {
            try helper.set(generation: n)
            daemon.signal(SIGHUP)
            try waitUntil("generation \(n)") { try daemon.generation() == n }
            #expect(daemon.readAsNewGroup("access_key_id") == FakeCredentialServer.accessKeyId(n))
            #expect(daemon.readAsNewGroup("token") == FakeCredentialServer.token(n))
        }
        #expect(try daemon.status()["upstreamRequests"] as? Int == 4)
    }

    @Test func akModeNeedsNoTokenOrExpiration() async throws {
        let helper = try Helper(
            body:
                "#!/bin/sh\necho '{\"mode\":\"AK\",\"access_key_id\":\"LTAI5tProcessKey01\",\"access_key_secret\":\"process-secret\"}'\n"
        )
        defer { helper.dir.remove() }
        let credentials = try await ProcessProvider(argv: [helper.script], clock: SystemRefreshClock()).fetch()
        #expect(credentials.accessKeyId == "LTAI5tProcessKey01")
        #expect(credentials.securityToken == nil && credentials.expiration == nil)
    }

    @Test(arguments: [
        ("echo not json; echo secret-leak", "not the aliyun CLI External JSON"),
        (
            "echo '{\"mode\":\"StsToken\",\"access_key_id\":\"STS.abcdefghijkl\",\"access_key_secret\":\"secret-x\",\"expiration\":\"2999-01-01T00:00:00Z\"}'",
            "empty SecurityToken"
        ),
        (
            "echo '{\"mode\":\"StsToken\",\"access_key_id\":\"STS.abcdefghijkl\",\"access_key_secret\":\"secret-x\",\"sts_token\":\"token-x\",\"expiration\":\"2001-01-01T00:00:00Z\"}'",
            "already expired"
        ),
        (
            "echo '{\"mode\":\"StsToken\",\"access_key_id\":\"STS.abcdefghijkl\",\"access_key_secret\":\"secret-x\",\"sts_token\":\"token-x\"}'",
            "no Expiration"
        ),
        (
            "echo '{\"mode\":\"EcsRamRole\",\"access_key_id\":\"a\",\"access_key_secret\":\"secret-x\"}'",
            "expected AK or StsToken"
        ),
        (
            "echo '{\"mode\":\"AK\",\"access_key_id\":\"\",\"access_key_secret\":\"secret-x\"}'",
            "empty AccessKeyId"
        ),
        (
            "echo 'profile default not found' >&2; exit 3",
            "exited with status 3: profile default not found"
        ),
        ("kill -9 $$", "was killed by signal 9"),
        ("yes x | head -c 70000", "output larger than 64 KiB"),
    ])
    func rejectsBadAnswersWithOneLineAndNoSecret(script: String, expected: String) async throws {
        let helper = try Helper(body: "#!/bin/sh\n" + script + "\n")
        defer { helper.dir.remove() }
        do {
            _ = try await ProcessProvider(argv: [helper.script], clock: SystemRefreshClock()).fetch()
            Issue.record("accepted: \(script)")
        } catch let error as CredentialError {
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(!error.message.contains("secret-") && !error.message.contains("token-"))
            #expect(!error.message.contains("\n"))
        }
    }

    @Test func aCommandThatHangsIsKilledAtTheTimeout() async throws {
        let helper = try Helper(body: "#!/bin/sh\nsleep 30.123 &\nwait\n")
        defer { helper.dir.remove() }
        let started = Date()
        do {
            _ = try await ProcessProvider(argv: [helper.script], timeout: 1, clock: SystemRefreshClock()).fetch()
            Issue.record("a hanging command answered")
        } catch let error as CredentialError {
            #expect(error.message.contains("no answer within 1 s"), "\(error.message)")
        }
        let took = Date().timeIntervalSince(started)
        // Killed, not waited for: the helper's own `sleep` would have run 30 s.
        #expect(took < 30, "took \(took) s")
        print("process: a hanging command killed after \(String(format: "%.2f", took)) s (timeout 1 s)")
        // The whole process group went: no `sleep 30.123` left behind holding the pipe.
        let left = try runPgrep("sleep 30.123")
        #expect(left.isEmpty, "left behind: \(left)")
    }

    @Test func aMissingProgramSaysSo() async throws {
        do {
            _ = try await ProcessProvider(argv: ["/nonexistent/credential-helper"], clock: SystemRefreshClock()).fetch()
            Issue.record("ran a missing program")
        } catch let error as CredentialError {
            #expect(error.message.contains("cannot run"), "\(error.message)")
        }
    }

    @Test func commandFlagIsValidated() throws {
        #expect(try runCredfs(["mount", "/tmp/credfs-never", "--provider", "process"]).status == 64)
        #expect(
            try runCredfs(["mount", "/tmp/credfs-never", "--provider", "process", "--command", "  "])
                .status == 64)
        #expect(
            try runCredfs(["mount", "/tmp/credfs-never", "--provider", "demo", "--command", "x"]).status
                == 64)
        #expect(ProcessProvider.split("a  b\tc") == ["a", "b", "c"])
    }

    func runPgrep(_ pattern: String) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/pgrep")
        process.arguments = ["-f", pattern]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// The helper gets a minimal environment, and what it leaves running in its process
    /// group is killed once it is done (issue 10).
    @Test func theHelperGetsAMinimalEnvironmentAndLeavesNothingRunning() async throws {
        let dir = try TempDir()
        defer { dir.remove() }
        chmod(dir.path, 0o755)
        let expiration = ISO8601DateFormatter().string(from: Date().addingTimeInterval(3600))
        let script = """
            #!/bin/sh
            env | cut -d= -f1 | sort > '\(dir.path)/env'
            sleep 300 &
            echo $! > '\(dir.path)/orphan'
            printf '{"mode":"StsToken","access_key_id":"STS.FAKE1xAAAAAAAAAAAA","access_key_secret":"secret-1-ssssssssssssssssssss","sts_token":"token-1-tttt","expiration":"\(expiration)"}\\n'
            """
        try script.write(toFile: dir.path + "/helper", atomically: true, encoding: .utf8)
        chmod(dir.path + "/helper", 0o755)
        var environment = Host.hermeticEnvironment
        environment["SOME_DAEMON_SECRET"] = "must-not-reach-the-helper"
        environment["ALIBABA_CLOUD_PROFILE"] = "kept"
        let daemon = try Daemon(
            ["--provider", "process", "--command", dir.path + "/helper"], environment: environment)
        defer { daemon.stop() }
        try waitUntil("generation 1") { try daemon.generation() == 1 }
        let names = try String(contentsOfFile: dir.path + "/env", encoding: .utf8).split(separator: "\n").map(
            String.init)
        #expect(!names.contains("SOME_DAEMON_SECRET"))
        #expect(names.contains("ALIBABA_CLOUD_PROFILE") && names.contains("PATH"))
        let allowed: Set<String> = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "PWD", "SHLVL", "_", "OLDPWD"]
        let other = names.filter {
            !allowed.contains($0) && !$0.hasPrefix("ALIBABA_CLOUD_") && !$0.hasPrefix("ALIYUN_")
        }
        #expect(other.isEmpty, "unexpected variables: \(other)")
        let orphan = try #require(
            pid_t(try String(contentsOfFile: dir.path + "/orphan", encoding: .utf8).filter(\.isNumber)))
        try waitUntil("the helper's background child to be killed", timeout: 5) { kill(orphan, 0) != 0 }
    }
}
