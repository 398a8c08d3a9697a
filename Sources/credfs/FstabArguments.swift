/// `mount -t fuse.credfs credfs /mnt/.alibabacloud -o provider=uri,allow_other,uid=1000`:
/// mount(8) runs `mount.fuse.credfs SOURCE MOUNTPOINT -o OPTIONS` (or mount.fuse3 runs
/// `credfs SOURCE MOUNTPOINT -o OPTIONS`). This maps that onto `credfs mount` flags.
enum FstabArguments {
    static let subcommands: Set<String> = ["mount", "unmount", "status", "get", "help", "upgrade", "supervise"]

    /// Options mount(8), fstab and systemd add that mean nothing to credfs.
    static let ignored: Set<String> = [
        "_netdev", "nofail", "auto", "noauto", "user", "users", "nouser", "owner", "group", "defaults",
        "rw", "ro", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
        "strictatime", "nodiratime", "diratime", "sync", "async", "default_permissions",
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
                let options = rest[index]
                index += 1
                for option in options.split(separator: ",").map(String.init) where !option.isEmpty {
                    let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
                    let key = parts[0]
                    if ignored.contains(key) || key.hasPrefix("x-") || key == "comment" || key == "fsname"
                        || key == "subtype"
                    {
                        continue
                    }
                    flags.append("--" + key.replacingOccurrences(of: "_", with: "-"))
                    if parts.count == 2 { flags.append(parts[1]) }
                }
            case "-n", "-s", "-v", "-f":
                continue  // mount(8)'s own: no mtab, sloppy, verbose, fake
            case "-t", "-N":
                index += 1  // type, namespace: not ours
            default:
                return .failure(Failure(message: "unexpected mount helper argument '\(arg)'", code: 64))
            }
        }
        return .success(["mount", mountpoint] + flags)
    }
}
