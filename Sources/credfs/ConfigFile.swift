import ArgumentParser
import CredentialCore
import FoundationEssentials
import Glibc

/// `credfs mount --config PATH`: `mount`'s options from a file (docs/packaging.md, "The
/// config file"). One `key = value` a line; `#` starts a comment line; keys are `mount`'s
/// long options without the dashes (`_` may stand for `-`), and `mountpoint`; a flag takes
/// `yes` or `no`. The file becomes arguments placed before the command line's, so a flag
/// given there wins (the last value of an option is the one taken).
///
/// Every key is checked against `mount`'s own definitions (the ones `--help` and the man
/// pages come from), so every option is expressible and no list is kept by hand.
enum ConfigFile {
    /// The file the packaged unit reads.
    static let defaultPath = "/etc/credfs/credfs.conf"
    static let maximumValue = 4096

    /// One `key = value` line.
    struct Setting: Equatable {
        var line: Int
        var key: String
        var value: String
    }

    /// What a key names: an option that takes a value, or a flag (yes/no).
    enum Kind: Equatable { case option, flag }

    /// The file that was read and its settings: to name the key and line of a value the
    /// argument parser refuses (``locate(_:)``).
    nonisolated(unsafe) static var loaded: (path: String, settings: [Setting], overridden: Set<String>)?

    /// `mount`'s long options that a file may set, by name, from the argument parser's
    /// description of `mount` (hidden options, `--help`, `--version` and `--config` left out).
    static let mountKeys: [String: Kind] = {
        var keys: [String: Kind] = [:]
        for argument in mountArguments() where argument.shouldDisplay {
            guard let kind = argument.kind == "option" ? Kind.option : argument.kind == "flag" ? .flag : nil
            else { continue }
            for name in argument.names ?? [] where name.kind == "long" {
                guard !["help", "version", "config"].contains(name.name) else { continue }
                keys[name.name] = kind
            }
        }
        return keys
    }()

    /// Short names of `mount`'s options that take a value (today none; `-f` is a flag).
    static let shortOptions: Set<String> = {
        var names: Set<String> = []
        for argument in mountArguments() where argument.kind == "option" {
            for name in argument.names ?? [] where name.kind == "short" { names.insert(name.name) }
        }
        return names
    }()

    struct ArgumentInfo: Decodable {
        struct Name: Decodable {
            var kind: String
            var name: String
        }
        var kind: String
        var names: [Name]?
        var shouldDisplay: Bool
    }

    /// The argument parser's own description of `mount` (what `--experimental-dump-help`
    /// prints and the man pages are made from).
    static func mountArguments() -> [ArgumentInfo] {
        struct Dump: Decodable {
            struct Command: Decodable { var arguments: [ArgumentInfo]? }
            var command: Command
        }
        var json = ""
        do {
            _ = try Credfs.parseAsRoot(["mount", "--experimental-dump-help"])
        } catch {
            json = Credfs.fullMessage(for: error)
        }
        return (try? JSONDecoder().decode(Dump.self, from: Data(json.utf8)))?.command.arguments ?? []
    }

    /// The settings in `text`, or the first problem as `PATH line N: …`.
    static func parse(_ text: String, path: String, keys: [String: Kind] = mountKeys) -> Result<[Setting], Failure> {
        var settings: [Setting] = []
        var seen: [String: Int] = [:]
        func failure(_ line: Int, _ what: String) -> Result<[Setting], Failure> {
            .failure(Failure(message: "\(path) line \(line): \(what)", code: 64))
        }
        for (index, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let number = index + 1
            let line = Text.trimmed(raw)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                return failure(number, "expected key = value, got '\(FstabArguments.printable(line))'")
            }
            let name = Text.trimmed(line[..<equals])
            let value = Text.trimmed(line[line.index(after: equals)...])
            let key = String(name.map { $0 == "_" ? "-" : $0 })
            guard key == "mountpoint" || keys[key] != nil else {
                return failure(
                    number,
                    "unknown key '\(FstabArguments.printable(name))' (keys: mountpoint and the long options of credfs mount --help)"
                )
            }
            if let earlier = seen[key] {
                return failure(number, "\(key) is set twice (first on line \(earlier))")
            }
            seen[key] = number
            guard !value.isEmpty else { return failure(number, "\(key) needs a value") }
            guard value.utf8.count <= maximumValue else {
                return failure(number, "\(key): the value is longer than \(maximumValue) bytes")
            }
            guard value.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) else {
                return failure(number, "\(key): the value holds a control character")
            }
            if keys[key] == .flag {
                guard ["yes", "no", "true", "false"].contains(value) else {
                    return failure(number, "\(key) is yes or no, got '\(FstabArguments.printable(value))'")
                }
            }
            settings.append(Setting(line: number, key: key, value: value))
        }
        return .success(settings)
    }

    /// The settings as `mount` arguments: `--key=value` (so a value starting with `-`
    /// stays a value), `--flag` for yes, nothing for no; `mountpoint` as the positional
    /// argument unless the command line has one.
    static func arguments(_ settings: [Setting], keys: [String: Kind] = mountKeys, commandLineHasMountpoint: Bool)
        -> [String]
    {
        var arguments: [String] = []
        for setting in settings {
            if setting.key == "mountpoint" {
                if !commandLineHasMountpoint { arguments.append(setting.value) }
            } else if keys[setting.key] == .flag {
                if setting.value == "yes" || setting.value == "true" { arguments.append("--" + setting.key) }
            } else {
                arguments.append("--\(setting.key)=\(setting.value)")
            }
        }
        return arguments
    }

    /// The long options a `mount` command line gives (names without dashes), and whether
    /// it has a mount point.
    static func scan(_ arguments: [String], keys: [String: Kind] = mountKeys) -> (given: Set<String>, mountpoint: Bool)
    {
        var given: Set<String> = []
        var mountpoint = false
        var index = 0
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if argument == "--" {
                mountpoint = mountpoint || index < arguments.count
                break
            }
            if argument.hasPrefix("--") {
                let body = argument.dropFirst(2)
                let name = String(body.prefix { $0 != "=" })
                given.insert(name)
                if keys[name] == .option && !body.contains("=") { index += 1 }
            } else if argument.hasPrefix("-") && argument.count > 1 {
                if shortOptions.contains(String(argument.dropFirst().prefix(1))) && argument.count == 2 { index += 1 }
            } else {
                mountpoint = true
            }
        }
        return (given, mountpoint)
    }

    /// `mount … --config PATH …` → `mount <the file's arguments> …` without `--config`;
    /// any other command line is returned as it is. A file that cannot be read or holds a
    /// bad line: exit 64, one line naming the file, the line and the key.
    static func expand(_ arguments: [String]) -> Result<[String], Failure> {
        guard arguments.first == "mount" else { return .success(arguments) }
        var rest: [String] = []
        var path: String?
        var index = 1
        var options = true
        while index < arguments.count {
            let argument = arguments[index]
            index += 1
            if options && argument == "--" { options = false }
            if options && (argument == "--config" || argument.hasPrefix("--config=")) {
                guard path == nil else { return .failure(Failure(message: "--config is given twice", code: 64)) }
                if argument == "--config" {
                    guard index < arguments.count else {
                        return .failure(Failure(message: "--config needs a path", code: 64))
                    }
                    path = arguments[index]
                    index += 1
                } else {
                    path = String(argument.dropFirst("--config=".count))
                }
                continue
            }
            rest.append(argument)
        }
        guard let path else { return .success(arguments) }
        let text: String
        switch read(path) {
        case .success(let contents): text = contents
        case .failure(let failure): return .failure(failure)
        }
        let settings: [Setting]
        switch parse(text, path: path) {
        case .success(let parsed): settings = parsed
        case .failure(let failure): return .failure(failure)
        }
        let commandLine = scan(rest)
        loaded = (path, settings, commandLine.given)
        return .success(
            ["mount"] + Self.arguments(settings, commandLineHasMountpoint: commandLine.mountpoint) + rest)
    }

    /// The file's text: a regular file of at most 64 KiB (``SmallFile``), in UTF-8.
    static func read(_ path: String) -> Result<String, Failure> {
        do throws(CredentialError) {
            let bytes = try SmallFile.read(path, what: "config file")
            guard let text = String(validating: bytes, as: UTF8.self) else {
                return .failure(Failure(message: "the config file \(path) is not UTF-8 text", code: 64))
            }
            return .success(text)
        } catch {
            return .failure(Failure(message: error.message, code: 64))
        }
    }

    /// A refused value that came from the file: `PATH line N (key): message`, for the
    /// first option the message names that the file set and the command line did not.
    static func locate(_ message: String) -> String? {
        guard let loaded else { return nil }
        var best: (position: String.Index, setting: Setting)?
        for setting in loaded.settings where !loaded.overridden.contains(setting.key) && setting.key != "mountpoint" {
            // `--key` as a whole option name: not followed by more of a name.
            let found = message.ranges(of: "--" + setting.key).first { range in
                range.upperBound == message.endIndex
                    || !(message[range.upperBound].isLetter || message[range.upperBound].isNumber
                        || message[range.upperBound] == "-")
            }
            if let found, found.lowerBound < (best?.position ?? message.endIndex) {
                best = (found.lowerBound, setting)
            }
        }
        guard let best else { return nil }
        return "\(loaded.path) line \(best.setting.line) (\(best.setting.key)): \(message)"
    }
}
