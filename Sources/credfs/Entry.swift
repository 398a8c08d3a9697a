import ArgumentParser
import Glibc
import Posix

/// The entry point. Kept out of `main.swift` on purpose: top-level code there is
/// main-actor isolated, and libfuse's threads must never call into it.
@main
enum Entry {
    static func main() async {
        signal(SIGPIPE, SIG_IGN)
        ResidentPages.limitHeapArenas(to: 2)
        var arguments = Array(CommandLine.arguments.dropFirst())
        if FstabArguments.applies(to: CommandLine.arguments) {
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
        subcommands: [Mount.self, Unmount.self, Status.self, Get.self, Doctor.self, Upgrade.self, Supervise.self]
    )
}
