/// `mount -t fuse.credfs credfs /mnt/.alibabacloud -o provider=uri,allow_other,uid=1000`:
/// mount(8) runs `mount.fuse.credfs SOURCE MOUNTPOINT -o OPTIONS` (or mount.fuse3 runs
/// `credfs SOURCE MOUNTPOINT -o OPTIONS`). This maps that onto `credfs mount` flags.
enum FstabArguments {
    static let subcommands: Set<String> = [
        "mount", "unmount", "status", "get", "doctor", "help", "upgrade", "supervise", "keeper",
    ]

    /// Options mount(8), fstab and systemd add that mean nothing to credfs.
    static let ignored: Set<String> = [
        "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group", "defaults",
        "rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
        "strictatime", "nodiratime", "diratime", "sync", "async", "default_permissions",
    ]

    /// The `credfs mount` options an fstab line may set (README, "fstab"): every option
    /// `credfs mount --help` lists, but `--foreground` (mount(8) would wait for ever), and
    /// no hidden one (`ready_fd`, `fuse_debug`), no `help` or `version` (they would exit 0
    /// without mounting, and mount(8) would report success). Spelt with `-`, as the flags.
    static let documented: Set<String> = [
        "provider", "uri", "demo-lifetime", "imds-endpoint", "role", "command", "role-arn", "source-provider",
        "external-id", "oidc-provider-arn", "oidc-token-file", "role-session-name", "duration", "policy",
        "policy-file", "sts-endpoint", "allow-other", "uid", "gid", "mode", "refresh-before", "initial-wait",
        "region", "serve-uri", "metrics", "log-level", "kernel-cache", "log-file", "config",
    ]

    /// True when `arguments` (argv, with argv[0]) look like a mount helper call.
    static func applies(to arguments: [String]) -> Bool {
        let name = arguments.first.map { $0.split(separator: "/").last.map(String.init) ?? $0 } ?? ""
        guard let first = arguments.dropFirst().first, !subcommands.contains(first),
            !first.hasPrefix("-")
        else {
            return false
        }
        return name.hasPrefix("mount.") || arguments.count >= 3
    }

    /// `[argv0, SOURCE, MOUNTPOINT, -o, OPTS, …]` → `[mount, MOUNTPOINT, --flag, value, …]`.
    /// Returns nil with a message for what it cannot map.
    static func translate(_ arguments: [String]) -> Result<[String], Failure> {
        var rest = Array(arguments.dropFirst())
        guard rest.count >= 2 else {
            return .failure(
                Failure(message: "usage: mount.fuse.credfs SOURCE MOUNTPOINT [-o OPTIONS]", code: 64))
        }
        rest.removeFirst()  // SOURCE: free text ("credfs")
        let mountpoint = rest.removeFirst()
        var flags: [String] = []
        var index = 0
        while index < rest.count {
            let arg = rest[index]
            index += 1
            switch arg {
            case "-o":
                guard index < rest.count else {
                    return .failure(Failure(message: "-o needs a value", code: 64))
                }
                let list = rest[index]
                index += 1
                switch mountFlags(options: list) {
                case .success(let more): flags += more
                case .failure(let failure): return .failure(failure)
                }
            case "-n", "-s", "-v", "-f":
                continue  // mount(8)'s own: no mtab, sloppy, verbose, fake
            case "-t", "-N":
                index += 1  // type, namespace: not ours
            default:
                return .failure(
                    Failure(message: "unexpected mount helper argument '\(printable(arg))'", code: 64))
            }
        }
        return .success(["mount", mountpoint] + flags)
    }

    /// One `-o` list → `credfs mount` flags: `key` → `--key`, `key=value` → `--key=value`
    /// (the `=` form, so a value that starts with `-` stays a value), `_` → `-` in keys.
    /// Empty items (`,,`) are skipped; mount(8)'s own options, `x-*`/`X-*` (systemd,
    /// util-linux), `comment=`, `fsname=` and `subtype=` are ignored. An empty key
    /// (`=`, `=x`), a key that is not `[a-z][a-z0-9_-]*`, or an empty value (`provider=`) is
    /// an error: exit 64, one line. A value cannot hold a comma (mount(8) splits on
    /// them): a session policy goes in through `policy_file=PATH`. A key that is not one of
    /// the ``documented`` options is an error too.
    static func mountFlags(options list: String) -> Result<[String], Failure> {
        var flags: [String] = []
        for item in list.split(separator: ",", omittingEmptySubsequences: true) {
            let key: Substring
            let value: Substring?
            if let equals = item.firstIndex(of: "=") {
                key = item[..<equals]
                value = item[item.index(after: equals)...]
            } else {
                key = item
                value = nil
            }
            let lowered = key.lowercased()
            if ignored.contains(lowered) || lowered.hasPrefix("x-") || lowered == "comment"
                || lowered == "fsname" || lowered == "subtype"
            {
                continue
            }
            guard !key.isEmpty else {
                return .failure(Failure(message: "-o: an option with an empty name ('=')", code: 64))
            }
            guard key.utf8.count <= 64,
                key.utf8.allSatisfy({
                    ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z"))
                        || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "_")
                        || $0 == UInt8(ascii: "-")
                }), let first = key.utf8.first, first >= UInt8(ascii: "a"), first <= UInt8(ascii: "z")
            else {
                return .failure(
                    Failure(
                        message:
                            "-o: option names are a lower-case letter, then letters, digits, '_' and '-' (got an option that is not)",
                        code: 64))
            }
            let name = String(key.map { $0 == "_" ? "-" : $0 })
            guard documented.contains(name) else {
                return .failure(
                    Failure(
                        message: "-o: \(key) is not an fstab option of credfs (the list: README, fstab)",
                        code: 64))
            }
            let flag = "--" + name
            if let value {
                guard !value.isEmpty else {
                    return .failure(Failure(message: "-o: \(key)= needs a value", code: 64))
                }
                flags.append(flag + "=" + value)
            } else {
                flags.append(flag)
            }
        }
        return .success(flags)
    }

    /// `text` for a one-line message: at most 64 characters, anything but printable ASCII
    /// shown as `?`.
    static func printable(_ text: String) -> String {
        let shown = text.utf8.prefix(64).map { $0 >= 0x20 && $0 < 0x7F ? Character(UnicodeScalar($0)) : "?" }
        return String(shown) + (text.utf8.count > 64 ? "…" : "")
    }
}
