import Foundation
import Testing

@testable import credfs

/// The fstab helper (issue 10): junk options are an exit 64 with one line, or ignored,
/// never a trap; `policy_file=` carries a policy JSON, which holds commas.
@Suite struct FstabHardeningTests {
    func translate(_ options: String) -> Result<[String], Failure> {
        FstabArguments.translate(["mount.fuse.credfs", "credfs", "/mnt/x", "-o", options])
    }

    func error(_ options: String) -> String? {
        if case .failure(let failure) = translate(options) {
            #expect(failure.code == 64)
            #expect(!failure.message.contains("\n"))
            return failure.message
        }
        return nil
    }

    func flags(_ options: String) -> [String]? {
        if case .success(let arguments) = translate(options) { return Array(arguments.dropFirst(2)) }
        return nil
    }

    @Test func junkIsAClearError() {
        #expect(error("=") == "-o: an option with an empty name ('=')")
        #expect(error("=x") == "-o: an option with an empty name ('=')")
        #expect(error("provider=demo,=") == "-o: an option with an empty name ('=')")
        #expect(error("provider=") == "-o: provider= needs a value")
        #expect(error("uid=") == "-o: uid= needs a value")
        for junk in [
            "Provider=demo", "pro vider=x", "prov\nider=x", "-provider=x", "--provider=x", "_provider=x", "1x", "é=1",
            "a.b=1", "a/b",
        ] {
            #expect(
                error(junk)
                    == "-o: option names are a lower-case letter, then letters, digits, '_' and '-' (got an option that is not)",
                "\(junk)")
        }
        #expect(error(String(repeating: "a", count: 65)) != nil)
    }

    @Test func emptyItemsAndForeignOptionsAreIgnored() {
        #expect(flags(",,,") == [])
        #expect(flags("") == [])
        #expect(flags(",provider=demo,,allow_other,") == ["--provider=demo", "--allow-other"])
        #expect(
            flags(
                "X-mount.mkdir,x-systemd.automount,X-mount.owner=root,x-systemd.requires=a=b,comment=systemd.x,_netdev,nofail,rw,defaults"
            )
                == [])
        #expect(flags("fsname=credfs,subtype=credfs,NOFAIL,RW") == [])
    }

    @Test func valuesGoInTheEqualsFormSoADashStaysAValue() {
        #expect(flags("uid=-1") == ["--uid=-1"])
        #expect(flags("command=/bin/helper") == ["--command=/bin/helper"])
        #expect(flags("refresh_before=5m,log_level=debug") == ["--refresh-before=5m", "--log-level=debug"])
        #expect(flags("uri=http://127.0.0.1:8080/?a=b") == ["--uri=http://127.0.0.1:8080/?a=b"])
    }

    @Test func aPolicyFileOption() throws {
        #expect(
            flags("provider=ram-role-arn,policy_file=/etc/credfs/policy.json") == [
                "--provider=ram-role-arn", "--policy-file=/etc/credfs/policy.json",
            ])
    }

    @Test func otherArgumentsAreClearErrors() {
        #expect(
            FstabArguments.translate(["mount.fuse.credfs", "credfs", "/mnt/x", "-o"]).failureMessage
                == "-o needs a value")
        #expect(
            FstabArguments.translate(["mount.fuse.credfs", "credfs", "/mnt/x", "--bogus\nline"]).failureMessage
                == "unexpected mount helper argument '--bogus?line'")
        #expect(FstabArguments.translate(["mount.fuse.credfs", "credfs", "/mnt/x", "-t"]).failureMessage == nil)
        #expect(FstabArguments.translate(["mount.fuse.credfs"]).failureMessage != nil)
        #expect(FstabArguments.translate(["mount.fuse.credfs", "x"]).failureMessage != nil)
    }

    /// Only the documented keys pass (issue 20): a hidden flag (`foreground`, `ready_fd`,
    /// `fuse_debug`) would make mount(8) wait for ever or hand credfs a descriptor, and
    /// `help`/`version` would exit 0 without mounting (mount(8) would report success).
    @Test func onlyTheDocumentedKeysPass() {
        for key in ["foreground", "ready_fd=3", "fuse_debug", "help", "version", "f", "bogus", "supervise"] {
            let name = key.split(separator: "=").first.map(String.init) ?? key
            #expect(error(key) == "-o: \(name) is not an fstab option of credfs (the list: README, fstab)", "\(key)")
        }
        #expect(flags("kernel_cache,serve_uri=127.0.0.1:1,log_file=/var/log/credfs.log") != nil)
    }

    /// The keys are `credfs mount --help`'s options, less `--foreground`, `--help` and
    /// `--version`: a new mount option is added here, or this fails.
    @Test func theDocumentedKeysAreTheMountHelpsOptions() throws {
        let help = try runCredfs(["mount", "--help"])
        var options: Set<String> = []
        for line in help.stdout.split(separator: "\n") {
            let trimmed = line.drop { $0 == " " }
            guard trimmed.hasPrefix("-") else { continue }
            for token in trimmed.split(whereSeparator: { $0 == " " || $0 == "," }) {
                guard token.hasPrefix("-") else { break }
                if token.hasPrefix("--") { options.insert(String(token.dropFirst(2))) }
            }
        }
        #expect(options.isSuperset(of: ["provider", "foreground", "help", "version"]), "\(help.stdout)")
        #expect(FstabArguments.documented == options.subtracting(["foreground", "help", "version"]))
    }

    /// Seeded random option strings: translate never traps; every result is an exit 64
    /// with one line, or flags of the form `--name[=value]` that ArgumentParser can parse
    /// (or reject) without a trap.
    @Test func randomOptionStringsNeverTrap() throws {
        let seed = UInt64(ProcessInfo.processInfo.environment["CREDFS_FUZZ_SEED"] ?? "") ?? 20_261_129
        let iterations = Int(ProcessInfo.processInfo.environment["CREDFS_FUZZ_ITERATIONS"] ?? "") ?? 3000
        var state = seed
        func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        let pieces = [
            "provider", "=", ",", "demo", "uid", "1000", "allow_other", "mode", "0444", "x-", "X-mount.mkdir", "-", "_",
            "policy_file", "/tmp/p", "", " ", "\n", "é", "\u{0}", "==", ",,", "-o", "--", "help", "version", "uri",
            "http://127.0.0.1:1/", "refresh_before", "99999999999999999999", "-1", "nan", "inf", "'", "\"", "$(id)",
        ]
        var errors = 0
        var parsed = 0
        for _ in 0..<iterations {
            var options = ""
            for _ in 0..<Int(next() % 8) { options += pieces[Int(next() % UInt64(pieces.count))] }
            var arguments = ["mount.fuse.credfs", "credfs", "/nonexistent/credfs-fuzz"]
            for _ in 0..<Int(next() % 3) { arguments += ["-o", options] }
            if next() % 10 == 0 { arguments.append(pieces[Int(next() % UInt64(pieces.count))]) }
            switch FstabArguments.translate(arguments) {
            case .failure(let failure):
                errors += 1
                #expect(failure.code == 64 && !failure.message.contains("\n"), "\(arguments)")
            case .success(let translated):
                #expect(translated.first == "mount")
                for flag in translated.dropFirst(2) {
                    #expect(flag.hasPrefix("--") && !flag.hasPrefix("---"), "\(arguments) -> \(flag)")
                }
                // ArgumentParser validates a sample (bad ones throw): no trap, no mount.
                if translated.contains("--help") || translated.contains("--version") || parsed >= 100 { continue }
                _ = try? Credfs.parseAsRoot(translated)
                parsed += 1
            }
        }
        print("fstab options: \(iterations) argument lists, \(errors) refused, \(parsed) parsed, seed \(seed)")
    }

    /// End to end: the binary called as a mount helper exits 64 with one line.
    @Test(arguments: ["=", "provider=", "Pro=x", "x\ny", "version", "help", "foreground", "ready_fd=3", "fuse_debug"])
    func theHelperExits64WithOneLine(options: String) throws {
        let result = try runCredfs(["credfs", "/nonexistent/credfs-fuzz", "-o", options])
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix("credfs: -o: "))
        #expect(result.stderr.split(separator: "\n").count == 1)
    }

    @Test func thePolicyFileFlagReadsABoundedRegularFile() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let policy = dir.path + "/policy.json"
        FileManager.default.createFile(
            atPath: policy,
            contents: Data(
                "{\"Version\":\"1\",\"Statement\":[{\"Effect\":\"Allow\",\"Action\":\"oss:Get*\",\"Resource\":\"*\"}]}\n"
                    .utf8))
        let options = try ProviderOptions.parse([
            "--provider", "ram-role-arn", "--role-arn", "acs:ram::1:role/r", "--policy-file", policy,
        ])
        #expect(try options.policyFromFile.get()?.hasPrefix("{\"Version\":\"1\"") == true)

        for (path, message) in [
            ("/dev/zero", "the policy file /dev/zero is a character device, not a regular file"),
            (dir.path, "the policy file \(dir.path) is a directory, not a regular file"),
        ] {
            let result = try runCredfs(["get", "--provider", "demo", "--policy-file", path])
            #expect(result.status == 64, "\(result.stderr)")
            #expect(result.stderr.contains(message), "\(result.stderr)")
        }
        let both = try runCredfs(["get", "--provider", "demo", "--policy", "{}", "--policy-file", policy])
        #expect(both.status == 64 && both.stderr.contains("--policy and --policy-file cannot both be given"))
    }
}

extension Result where Failure == credfs.Failure {
    var failureMessage: String? {
        if case .failure(let failure) = self { return failure.message }
        return nil
    }
}
