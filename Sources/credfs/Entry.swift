import ArgumentParser
import Glibc
import Posix

/// The entry point. Kept out of `main.swift` on purpose: top-level code there is
/// main-actor isolated, and libfuse's threads must never call into it.
@main
enum Entry {
    static func main() async {
        TakeoverTrace.mark("main")
        signal(SIGPIPE, SIG_IGN)
        ResidentPages.limitHeapArenas(to: 2)
        var arguments = Array(CommandLine.arguments.dropFirst())
        // Every user reads argv (/proc/PID/cmdline): the values that may hold a secret are
        // overwritten in place now that they are copied (docs/security.md).
        SecretArguments.scrub()
        // A server the supervisor started: its arguments come from a memfd, not argv.
        switch ServerLaunch.take() {
        case .success(let launch):
            ServerLaunch.current = launch
            if let launch {
                arguments = launch.arguments
                // Exec'd through /proc/self/fd/5, the process would be named "5".
                nameCurrentThread("credfs")
            }
        case .failure(let failure):
            Output.error("credfs: \(failure.message)")
            exit(1)
        }
        if ServerLaunch.current == nil, FstabArguments.applies(to: CommandLine.arguments) {
            switch FstabArguments.translate(CommandLine.arguments) {
            case .success(let translated): arguments = translated
            case .failure(let failure):
                Output.error("credfs: \(failure.message)")
                exit(64)
            }
        }
        switch ConfigFile.expand(arguments) {
        case .success(let expanded): arguments = expanded
        case .failure(let failure):
            Output.error("credfs: \(failure.message)")
            exit(64)
        }
        Invocation.arguments = arguments
        if let supervise = Supervise.fastPath(arguments) {
            do { try supervise.run() } catch { exit(1) }
        }
        do {
            var command = try Credfs.parseAsRoot(arguments)
            if var command = command as? AsyncParsableCommand {
                try await command.run()
            } else {
                try command.run()
            }
            exit(0)
        } catch {
            let code = Credfs.exitCode(for: error)
            if code == .success {
                // --help and --version
                print(Credfs.fullMessage(for: error))
                exit(0)
            }
            if let failure = error as? Failure {
                if !failure.reported {
                    Output.error("credfs: \(failure.message)")
                }
                exit(failure.code)
            }
            // An exit code alone (an ExitCode thrown) has said what it had to already; a
            // value from a config file names its line and key.
            if let message = Messages.oneLine(Credfs.message(for: error)) {
                Output.error("credfs: \(ConfigFile.locate(message) ?? message)")
            }
            exit(code.rawValue)
        }
    }
}

/// Overwrites, in this process's own argument area, the values of the flags that can hold a
/// secret (``ProviderOptions/secretFlags``): `--uri VALUE`, `--uri=VALUE`, and `uri=VALUE` in an
/// fstab `-o` list. What /proc/PID/cmdline shows from then on is `*` in their place. (In
/// the moment before, it showed them: the flags' file and environment forms avoid that.)
enum SecretArguments {
    static func scrub() { scrub(CommandLine.unsafeArgv, count: Int(CommandLine.argc)) }

    /// Scrubs `argv[1..<count]` in place.
    static func scrub(_ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>, count: Int) {
        let flags = ProviderOptions.secretFlags
        var secretNext = false
        var optionsNext = false
        for index in 1..<max(1, count) {
            guard let argument = argv[index] else { continue }
            let text = String(cString: argument)
            let length = Int(strlen(argument))
            defer {
                secretNext = flags.contains { text == "--" + $0 }
                optionsNext = text == "-o"
            }
            if secretNext {
                blank(argument, from: 0, to: length)
            } else if let flag = flags.first(where: { text.hasPrefix("--" + $0 + "=") }) {
                blank(argument, from: flag.utf8.count + 3, to: length)
            } else if optionsNext || text.hasPrefix("-o") {
                // An fstab list: `key=value` items separated by commas, `_` or `-` in keys.
                var start = text.hasPrefix("-o") && !optionsNext ? 2 : 0
                let bytes = Array(text.utf8)
                for item in bytes[start...].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
                    let key = String(
                        decoding: item.prefix { $0 != UInt8(ascii: "=") }.map {
                            $0 == UInt8(ascii: "_") ? UInt8(ascii: "-") : $0
                        }, as: UTF8.self)
                    if flags.contains(key), item.count > key.utf8.count {
                        blank(argument, from: start + key.utf8.count + 1, to: start + item.count)
                    }
                    start += item.count + 1
                }
            }
        }
    }

    private static func blank(_ argument: UnsafeMutablePointer<CChar>, from start: Int, to end: Int) {
        guard start < end else { return }
        for i in start..<end { argument[i] = CChar(UInt8(ascii: "*")) }
    }
}

/// The arguments credfs runs with (after any mount-helper translation).
enum Invocation {
    nonisolated(unsafe) static var arguments: [String] = []
}

/// A runtime failure: one line on stderr, exit 1 (or the given code).
struct Failure: Error {
    var message: String
    var code: Int32 = 1
    /// Already passed on (through the readiness pipe): exit without printing it again.
    var reported = false
}

struct Credfs: AsyncParsableCommand {
    /// From the repository's VERSION file (Sources/credfs/VERSION links to it), first line.
    static let version =
        String(decoding: PackageResources.VERSION, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(
            String.init) ?? "unknown"
    static let configuration = CommandConfiguration(
        commandName: "credfs",
        abstract: "Alibaba Cloud STS credentials as read-only files, kept fresh in the background.",
        version: version,
        subcommands: [
            Mount.self, Unmount.self, Status.self, Get.self, Doctor.self, Upgrade.self, Supervise.self, Keeper.self,
        ]
    )
}
