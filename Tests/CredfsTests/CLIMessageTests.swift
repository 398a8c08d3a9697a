import CredentialCore
import Foundation
import Testing

/// What `--help` and the one-line errors say (issue 26): each names what is allowed.
@Suite(.stopsFakes, .serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct CLIMessageTests {
    static var environment: [String: String] {
        var environment = Host.hermeticEnvironment
        environment["ALIBABA_CLOUD_CREDENTIALS_URI"] = nil
        return environment
    }

    /// A bad argument: exit 64 and exactly one line on stderr, which is returned.
    func refusal(_ arguments: [String]) throws -> String {
        let result = try runCredfs(arguments, environment: Self.environment)
        #expect(result.status == 64, "\(arguments): exit \(result.status)")
        let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(lines.count == 1, "\(arguments): \(result.stderr)")
        #expect(result.stdout.isEmpty)
        return result.stderr
    }

    /// The `--help` paragraph of `flag` (its line and the indented lines after it).
    func help(of flag: String, command: String = "mount") throws -> String {
        let result = try runCredfs([command, "--help"], environment: Self.environment)
        #expect(result.status == 0)
        let lines = result.stdout.split(separator: "\n").map(String.init)
        guard let start = lines.firstIndex(where: { $0.hasPrefix("  \(flag) ") || $0 == "  \(flag)" }) else {
            Issue.record("no \(flag) in \(command) --help")
            return ""
        }
        var paragraph = [lines[start]]
        for line in lines[(start + 1)...] {
            if line.hasPrefix("  -") || !line.hasPrefix("   ") { break }
            paragraph.append(line)
        }
        return paragraph.joined(separator: " ").split(separator: " ").joined(separator: " ")
    }

    @Test func anUnknownProviderListsTheProviders() throws {
        let line = try refusal(["mount", "/tmp/credfs-never", "--provider", "nope"])
        let all = ProviderKind.allCases.map(\.rawValue).joined(separator: ", ")
        #expect(line.hasSuffix("Please provide one of the following: \(all)\n"), "\(line)")
    }

    @Test func sourceProviderListsOnlyTheSourcesItTakes() throws {
        let sources = ProviderKind.sources.map(\.rawValue)
        #expect(!sources.contains("auto") && !sources.contains("ram-role-arn"))
        let paragraph = try help(of: "--source-provider")
        #expect(paragraph.contains("(values: \(sources.joined(separator: ", ")))"), "\(paragraph)")
        #expect(!paragraph.contains("auto"), "\(paragraph)")
        for refused in ["auto", "ram-role-arn"] {
            let line = try refusal([
                "mount", "/tmp/credfs-never", "--provider", "ram-role-arn", "--source-provider", refused,
            ])
            #expect(line.contains("The value '\(refused)' is invalid for '--source-provider"), "\(line)")
            #expect(line.contains(sources.joined(separator: ", ")), "\(line)")
        }
    }

    @Test func statusOfAMountThatIsNotFreshSaysSo() async throws {
        let server = FakeCredentialServer()
        server.setBehaviour(.status(500))
        try await server.start()
        let daemon = try Daemon(["--provider", "uri", "--uri", server.url])
        defer { daemon.stop() }
        try waitUntil("a failed fetch") { try daemon.status()["lastError"] is String }
        let result = try runCredfs(["status", daemon.mountpoint])
        #expect(result.status == 1)
        #expect(result.stdout.contains("\"state\": \"pending\""))
        #expect(result.stderr == "credfs: the mount is pending, not fresh or refreshing\n")
    }

    @Test func fieldAndFormatTogetherAreRefused() throws {
        let line = try refusal(["get", "--provider", "demo", "--field", "token", "--format", "env"])
        #expect(line == "credfs: --field prints one field as it is: it takes no --format\n")
        // Each alone still works.
        let field = try runCredfs(["get", "--provider", "demo", "--field", "access_key_id"])
        #expect(field.status == 0 && field.stdout.hasPrefix("STS.DEMO"), "\(field.stdout)\(field.stderr)")
        let env = try runCredfs(["get", "--provider", "demo", "--format", "env"])
        #expect(env.status == 0 && env.stdout.hasPrefix("export ALIBABA_CLOUD_ACCESS_KEY_ID="))
        #expect(try help(of: "--format", command: "get").contains("Not with --field"))
    }

    @Test func aServeUriOffLoopbackIsRefusedAsSuch() throws {
        for address in ["10.0.0.1:80", "0.0.0.0:8900", "[::]:8900"] {
            let line = try refusal(["mount", "/tmp/credfs-never", "--serve-uri", address])
            #expect(
                line.hasSuffix(
                    "the credentials URI is served on a loopback address only: 127.0.0.0/8, [::1] or localhost\n"),
                "\(line)")
        }
        #expect(try refusal(["mount", "/tmp/credfs-never", "--serve-uri", "127.0.0.1:99999"]).contains("0 to 65535"))
        #expect(try help(of: "--serve-uri").contains("loopback address (127.0.0.0/8, [::1] or localhost)"))
    }

    @Test func refreshBeforeTakesDaysUpToSeven() throws {
        let line = try refusal(["mount", "/tmp/credfs-never", "--provider", "demo", "--refresh-before", "8d"])
        #expect(line == "credfs: --refresh-before must be more than 0 seconds and at most 7 days\n")
        #expect(try help(of: "--refresh-before").contains("at most 7d"))
        let daemon = try Daemon(["--provider", "demo", "--refresh-before", "7d"])
        defer { daemon.stop() }
        try waitUntil("credentials") { try daemon.generation() >= 1 }
    }

    @Test func anIPv6ServeUriIsLoggedInBrackets() throws {
        let daemon = try Daemon(["--provider", "demo", "--serve-uri", "[::1]:0"])
        defer { daemon.stop() }
        try waitUntil("the credentials URI") { daemon.log.contains("serving the credentials URI") }
        #expect(daemon.log.contains("address=http://[::1]:"), "\(daemon.log)")
    }

    @Test func doctorJSONHasAFixKeyInEveryCheck() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let result = try runCredfs(
            ["doctor", dir.path, "--json", "--imds-endpoint", "http://127.0.0.1:\(unusedLoopbackPort())"],
            environment: Self.environment)
        #expect(result.status == 1)
        let object = try JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        let checks = try #require(object?["checks"] as? [[String: Any]])
        #expect(!checks.isEmpty)
        for check in checks {
            let name = check["name"] as? String ?? "?"
            #expect(check.keys.sorted() == ["detail", "fix", "name", "ok", "skipped"], "\(name): \(check.keys)")
            // A string where it failed, null where there is nothing to fix.
            if check["ok"] as? Bool == false {
                #expect(check["fix"] is String, "\(name)")
            } else {
                #expect(check["fix"] is NSNull, "\(name)")
            }
        }
    }

    @Test func demoLifetimeStatesItsRange() throws {
        #expect(try help(of: "--demo-lifetime").contains("2 to 86400"))
        let line = try refusal(["mount", "/tmp/credfs-never", "--provider", "demo", "--demo-lifetime", "1"])
        #expect(line == "credfs: --demo-lifetime must be between 2 and 86400 seconds\n")
    }
}
