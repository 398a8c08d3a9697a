import Foundation
import Testing

@testable import credfs

/// `credfs mount --config PATH` (issue 25): the file's format, its errors, and the
/// precedence of the command line over it.
@Suite struct ConfigFileTests {
    func parse(_ text: String) -> Result<[ConfigFile.Setting], Failure> {
        ConfigFile.parse(text, path: "/etc/credfs/credfs.conf")
    }

    func error(_ text: String) -> String? {
        if case .failure(let failure) = parse(text) {
            #expect(failure.code == 64)
            #expect(!failure.message.contains("\n"))
            return failure.message
        }
        return nil
    }

    @Test func readsKeysValuesAndComments() throws {
        let text = """
            # credfs
              provider = uri\r
            uri=http://127.0.0.1:8080/path?a=b

            allow_other = yes
            kernel-cache = no
            command = /usr/bin/helper --flag value
            mountpoint = /mnt/x
            """
        let settings = try parse(text).get()
        #expect(settings.map(\.key) == ["provider", "uri", "allow-other", "kernel-cache", "command", "mountpoint"])
        #expect(settings.map(\.line) == [2, 3, 5, 6, 7, 8])
        #expect(settings[1].value == "http://127.0.0.1:8080/path?a=b")
        #expect(settings[4].value == "/usr/bin/helper --flag value")
        #expect(
            ConfigFile.arguments(settings, commandLineHasMountpoint: false) == [
                "--provider=uri", "--uri=http://127.0.0.1:8080/path?a=b", "--allow-other",
                "--command=/usr/bin/helper --flag value", "/mnt/x",
            ])
        // A mount point on the command line wins over the file's.
        #expect(!ConfigFile.arguments(settings, commandLineHasMountpoint: true).contains("/mnt/x"))
    }

    @Test func badContentNamesTheLineAndTheKey() {
        let path = "/etc/credfs/credfs.conf"
        #expect(
            error("provider = demo\nprovder = uri\n")
                == "\(path) line 2: unknown key 'provder' (keys: mountpoint and the long options of credfs mount --help)"
        )
        #expect(error("# x\nallow-other\n") == "\(path) line 2: expected key = value, got 'allow-other'")
        #expect(error("mode = 0440\n\nmode = 0400\n") == "\(path) line 3: mode is set twice (first on line 1)")
        #expect(error("uri =   \n") == "\(path) line 1: uri needs a value")
        #expect(error("allow-other = maybe\n") == "\(path) line 1: allow-other is yes or no, got 'maybe'")
        #expect(error("region = a\u{1B}[2Jb\n") == "\(path) line 1: region: the value holds a control character")
        #expect(error("ready-fd = 3\n")?.hasPrefix("\(path) line 1: unknown key 'ready-fd'") == true)
        #expect(error("config = /etc/other.conf\n")?.hasPrefix("\(path) line 1: unknown key 'config'") == true)
        #expect(error("= x\n")?.hasPrefix("\(path) line 1: unknown key ''") == true)
    }

    /// Every option `credfs mount --help` shows is a key (the file and --help come from one
    /// definition), and nothing hidden is.
    @Test func everyMountOptionIsAKey() {
        let help = Mount.helpMessage(columns: 400)
        var shown = Set<String>()
        for word in help.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "," || $0 == "/" })
        where word.hasPrefix("--") {
            shown.insert(String(word.dropFirst(2).prefix { $0.isLetter || $0.isNumber || $0 == "-" }))
        }
        shown.subtract(["help", "version", "config", ""])
        #expect(shown.count > 20)
        #expect(Set(ConfigFile.mountKeys.keys) == shown)
        #expect(ConfigFile.mountKeys["allow-other"] == .flag)
        #expect(ConfigFile.mountKeys["provider"] == .option)
    }

    @Test func scanFindsTheCommandLinesOptionsAndMountpoint() {
        #expect(ConfigFile.scan(["--provider", "demo", "--allow-other"]).mountpoint == false)
        #expect(ConfigFile.scan(["--provider", "demo", "-f"]).given == ["provider"])
        #expect(ConfigFile.scan(["--mode=0440", "/mnt/y"]).mountpoint == true)
        #expect(ConfigFile.scan(["--", "/mnt/y"]).mountpoint == true)
    }

    @Test func expandPutsTheFileBeforeTheCommandLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let file = dir.path + "/credfs.conf"
        try "provider = demo\nmode = 0440\nmountpoint = /mnt/file\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        let expanded = try ConfigFile.expand(["mount", "--config", file, "--mode", "0400"]).get()
        #expect(expanded == ["mount", "--provider=demo", "--mode=0440", "/mnt/file", "--mode", "0400"])
        let parsed = try #require(try Credfs.parseAsRoot(expanded) as? Mount)
        #expect(parsed.mode.value == 0o400)
        #expect(parsed.mountpoint == "/mnt/file")
        #expect(parsed.source.provider == .demo)
        let positional = try #require(
            try Credfs.parseAsRoot(try ConfigFile.expand(["mount", "/mnt/cli", "--config=\(file)"]).get()) as? Mount)
        #expect(positional.mountpoint == "/mnt/cli")
        #expect(positional.mode.value == 0o440)
        // Other commands and `mount` without --config are left alone.
        #expect(try ConfigFile.expand(["status", "--config", file]).get() == ["status", "--config", file])
        #expect(try ConfigFile.expand(["mount", "--", "--config"]).get() == ["mount", "--", "--config"])
    }
}

/// The config file through the real binary: exit 64 with one line, and a mount that takes
/// its options from the file with the command line winning.
@Suite(.serialized, .enabled(if: Host.canMount, Host.canMountReason), .timeLimit(.minutes(2)))
struct ConfigFileMountTests {
    @Test func badFileExits64WithOneLine() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let file = dir.path + "/credfs.conf"
        let mountpoint = dir.path + "/never"
        let cases: [(String, String)] = [
            ("provider = demo\nmode = 0999\n", "\(file) line 2 (mode): "),
            ("provider = demo\ninitial-wait = 3h\n", "\(file) line 2 (initial-wait): "),
            ("provider = demo\n\nfoo = 1\n", "\(file) line 3: unknown key 'foo'"),
            ("provider = nope\n", "\(file) line 1 (provider): "),
        ]
        for (text, prefix) in cases {
            try text.write(toFile: file, atomically: true, encoding: .utf8)
            let result = try runCredfs(["mount", mountpoint, "--config", file], environment: Host.hermeticEnvironment)
            #expect(result.status == 64, "\(text): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
            #expect(result.stderr.hasPrefix("credfs: " + prefix), "\(result.stderr)")
            #expect(!FileManager.default.fileExists(atPath: mountpoint))
        }
        let missing = try runCredfs(["mount", mountpoint, "--config", dir.path + "/absent"])
        #expect(missing.status == 64)
        #expect(missing.stderr.hasPrefix("credfs: cannot open the config file \(dir.path)/absent: "))
    }

    @Test func commandLineOverridesTheFile() throws {
        let dir = try TempDir()
        let mountpoint = dir.path + "/from-file"
        defer {
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            dir.remove()
        }
        let file = dir.path + "/credfs.conf"
        try "mountpoint = \(mountpoint)\nprovider = demo\nmode = 0440\nregion = cn-file\n".write(
            toFile: file, atomically: true, encoding: .utf8)
        // Should the file's mount point be lost, the mount would go to the default path: a
        // mount made there by this test is undone.
        let defaultPath = "/mnt/.alibabacloud"
        let defaultWasMounted = isMounted(defaultPath)
        defer {
            if !defaultWasMounted && isMounted(defaultPath) { _ = try? runCredfs(["unmount", defaultPath]) }
        }
        let result = try runCredfs(["mount", "--config", file, "--mode", "0400"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(isMounted(mountpoint))
        var st = stat()
        #expect(stat(mountpoint + "/credentials", &st) == 0)
        #expect(st.st_mode & 0o777 == 0o400)
        let status = try runCredfs(["status", mountpoint])
        #expect(status.stdout.contains("\"provider\": \"demo\""), "\(status.stdout)")
        #expect(readFile(mountpoint + "/config.json").text?.contains("cn-file") == true)
        let unmount = try runCredfs(["unmount", mountpoint])
        #expect(unmount.status == 0)
        try waitUntil("unmounted") { !isMounted(mountpoint) }
    }

    /// The VERSION file's version in `--version`, `status` and the metrics' build_info.
    @Test func oneVersionEverywhere() throws {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let file = try String(contentsOf: repository.appendingPathComponent("VERSION"), encoding: .utf8)
        let version = String(file.split(separator: "\n").first ?? "")
        #expect(!version.isEmpty)
        #expect(try runCredfs(["--version"]).stdout == version + "\n")
        let dir = try TempDir()
        let mountpoint = dir.path + "/mnt"
        defer {
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            dir.remove()
        }
        let port = unusedLoopbackPort()
        try "provider = demo\nmetrics = 127.0.0.1:\(port)\n".write(
            toFile: dir.path + "/credfs.conf", atomically: true, encoding: .utf8)
        let mounted = try runCredfs(["mount", mountpoint, "--config", dir.path + "/credfs.conf"])
        #expect(mounted.status == 0, "\(mounted.stderr)")
        #expect(readFile(mountpoint + "/status").text?.contains("\"version\": \"\(version)\"") == true)
        let metrics = try runProcess(
            "/usr/bin/curl", ["-s", "-S", "--max-time", "5", "http://127.0.0.1:\(port)/metrics"])
        #expect(metrics.stdout.contains("credfs_build_info{version=\"\(version)\"} 1\n"), "\(metrics.stdout)")
        #expect(try runCredfs(["unmount", mountpoint]).status == 0)
    }
}
