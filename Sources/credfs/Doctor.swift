import ArgumentParser
import CredentialCore
import FoundationEssentials
import Glibc
import Posix

/// `credfs doctor`: checks what users get wrong and prints each problem with a one-line fix.
/// Exit 0 when all is well, 1 otherwise. Never prints a secret, nor the value of any
/// environment variable it names.
struct Doctor: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check a mount and this environment for what makes SDKs miss it; exit 0 when all is well.")

    @Argument(help: "The mount point.")
    var mountpoint: String = "/mnt/.alibabacloud"

    @Option(help: "Also check that this user can read the secret files.")
    var user: String?

    @Option(help: "ECS metadata service to probe (as the provider's --imds-endpoint).")
    var imdsEndpoint: String = ProviderFlags.defaultIMDSEndpoint

    @Flag(help: "Print the checks as one JSON object.")
    var json = false

    /// One check's verdict. `fix` is set exactly when it failed.
    struct Check: Encodable {
        var name: String
        var ok: Bool
        var detail: String
        var fix: String?
        /// Not applicable here (e.g. nothing to read the status from): neither ok nor a problem.
        var skipped = false

        static func pass(_ name: String, _ detail: String) -> Check { Check(name: name, ok: true, detail: detail) }
        static func fail(_ name: String, _ detail: String, fix: String) -> Check {
            Check(name: name, ok: false, detail: detail, fix: fix)
        }
        static func skip(_ name: String, _ detail: String) -> Check {
            Check(name: name, ok: true, detail: detail, skipped: true)
        }

        enum CodingKeys: String, CodingKey { case name, ok, detail, fix, skipped }

        /// Every key in every check, `fix` null when there is nothing to fix
        /// (docs/operations.md).
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(ok, forKey: .ok)
            try container.encode(detail, forKey: .detail)
            try container.encode(fix, forKey: .fix)
            try container.encode(skipped, forKey: .skipped)
        }
    }

    /// What the status file says (no secret in it).
    struct StatusFile: Decodable {
        var state: String
        var secondsRemaining: Int?
        var clockSkewSeconds: Int?
        var lastError: String?
    }

    func run() async throws {
        let path = MountPoint.resolve(mountpoint)
        let environment = ProcessInfo.processInfo.environment
        var checks: [Check] = []
        let status = Self.mountCheck(path, into: &checks)
        checks.append(Self.remainingCheck(status))
        checks.append(Self.skewCheck(status))
        if let user { checks.append(Self.userCheck(user, path: path)) }
        checks.append(Self.accessKeyVariableCheck(environment))
        checks.append(await Self.metadataCheck(environment, endpoint: imdsEndpoint))
        if MountPoint.mountType(at: path) == "fuse.credfs" {
            checks.append(Self.namespaceCheck(path))
        } else {
            checks.append(.skip("namespace", "no mount to look for"))
        }
        print(json ? Self.renderJSON(checks) : Self.renderText(checks), terminator: "")
        // Exit 1, the report above being the message.
        if checks.contains(where: { !$0.ok }) { throw Failure(message: "problems found", reported: true) }
    }

    // MARK: the checks

    static func mountCheck(_ path: String, into checks: inout [Check]) -> StatusFile? {
        let start = "start it: credfs mount \(path) (or systemctl start credfs)"
        guard MountPoint.mountType(at: path) == "fuse.credfs" else {
            checks.append(.fail("mount", "no credfs mount at \(path)", fix: start))
            return nil
        }
        let data: [UInt8]
        do {
            data = try SmallFile.read(path + "/status", what: "status file")
        } catch {
            checks.append(
                .fail(
                    "mount", "the mount at \(path) does not answer (\(error))",
                    fix: "clear the dead mount and start again: umount -l \(path); credfs mount \(path)"))
            return nil
        }
        guard let status = try? JSONDecoder().decode(StatusFile.self, from: Data(data)) else {
            checks.append(.fail("mount", "the status file at \(path) is not credfs status JSON", fix: start))
            return nil
        }
        switch status.state {
        case "fresh", "refreshing":
            checks.append(.pass("mount", "live at \(path), state \(status.state)"))
        default:
            let why = status.lastError.map { ": \(bounded($0))" } ?? ""
            checks.append(
                .fail(
                    "mount", "state \(status.state)\(why)",
                    fix:
                        "make the credential source answer (see lastError in \(path)/status), then: kill -HUP the daemon"
                ))
        }
        return status
    }

    static func remainingCheck(_ status: StatusFile?) -> Check {
        guard let status else { return .skip("lifetime", "no status to read") }
        guard let remaining = status.secondsRemaining else {
            return .pass("lifetime", "the credentials never expire")
        }
        guard remaining >= 900 else {
            return .fail(
                "lifetime",
                "credentials served with \(remaining) s left: under 15 min the Python SDK treats them as stale and fetches on every call",
                fix:
                    "let refreshes succeed (status lastError), or mount with --refresh-before 20m on sets of an hour or more"
            )
        }
        return .pass("lifetime", "\(remaining) s left")
    }

    static func skewCheck(_ status: StatusFile?) -> Check {
        guard let status else { return .skip("clock", "no status to read") }
        guard let skew = status.clockSkewSeconds else {
            return .skip("clock", "no upstream Date seen yet (not every source has one)")
        }
        guard abs(skew) <= 60 else {
            let direction = skew > 0 ? "behind" : "ahead of"
            return .fail(
                "clock", "the local clock is \(abs(skew)) s \(direction) the cloud's",
                fix: "synchronise the clock: systemctl enable --now systemd-timesyncd (or chronyd)")
        }
        return .pass("clock", "within \(abs(skew)) s of the cloud's")
    }

    static func userCheck(_ name: String, path: String) -> Check {
        guard let entry = getpwnam(name) else {
            return .fail("user", "no user named \(name)", fix: "pass an existing user to --user")
        }
        let uid = entry.pointee.pw_uid
        let gid = entry.pointee.pw_gid
        var groups = [gid_t](repeating: 0, count: 256)
        var count: Int32 = Int32(groups.count)
        if getgrouplist(entry.pointee.pw_name, gid, &groups, &count) < 0 { count = 0 }
        let member = Set(groups.prefix(Int(max(0, min(count, Int32(groups.count))))) + [gid])
        // Someone else than the mounting user gets in only with allow_other.
        if let owner = mountOwner(path), owner != uid, uid != 0, !mountOptions(path).contains("allow_other") {
            return .fail(
                "user", "\(name) cannot enter \(path): the mount was made without allow_other",
                fix: "mount with --allow-other (fstab: allow_other) and --uid $(id -u \(name))")
        }
        var st = stat()
        guard stat(path + "/credentials", &st) == 0 else {
            return .skip("user", "cannot stat \(path)/credentials (\(Errno.last))")
        }
        let mode = st.st_mode
        let readable: Bool
        if uid == 0 {
            readable = true
        } else if st.st_uid == uid {
            readable = mode & 0o400 != 0
        } else if member.contains(st.st_gid) {
            readable = mode & 0o040 != 0
        } else {
            readable = mode & 0o004 != 0
        }
        guard readable else {
            return .fail(
                "user",
                "\(name) cannot read the secret files (owner \(st.st_uid), group \(st.st_gid), mode \(String(mode & 0o777, radix: 8)))",
                fix: "mount with --uid $(id -u \(name)) (or --gid GROUP --mode 0440) and --allow-other")
        }
        return .pass("user", "\(name) can read the secret files")
    }

    static func accessKeyVariableCheck(_ environment: [String: String]) -> Check {
        let variables = ProviderEnvironment(environment)
        let set = [CloudVariable.accessKeyId, CloudVariable.accessKeySecret].filter { variables.value($0) != nil }
        guard set.isEmpty else {
            return .fail(
                "environment",
                "\(set.joined(separator: " and ")) set: the SDKs' default chain uses it before the mount",
                fix: "unset \(set.joined(separator: " ")) in the workload's environment")
        }
        return .pass("environment", "no AccessKey variables that would shadow the mount")
    }

    static func metadataCheck(_ environment: [String: String], endpoint: String) async -> Check {
        let disabled = CloudVariable.ecsMetadataDisabled
        if ProviderEnvironment(environment).ecsMetadataDisabled {
            return .pass("metadata", "\(disabled) is true: SDKs skip the node role")
        }
        guard await MetadataProbe.answers(endpoint: endpoint) else {
            return .pass("metadata", "no metadata service answers within 1 s")
        }
        return .fail(
            "metadata",
            "the ECS metadata service answers and \(disabled) is not true: SDKs pick the node's role before a credentials URI",
            fix: "export \(disabled)=true in the workload's environment")
    }

    static func namespaceCheck(_ path: String) -> Check {
        // PID 1's mounts, read whole: on a node they run far past the 4 KiB that
        // `String(contentsOfFile:)` would return of a procfs file.
        guard let mounts = MountPoint.mounts(in: "/proc/1/mountinfo") else {
            return .skip("namespace", "cannot read PID 1's mounts (run as root to check)")
        }
        let visible = mounts.contains { $0.path == path && $0.type == "fuse.credfs" }
        guard visible else {
            return .fail(
                "namespace",
                "\(path) is not a credfs mount in PID 1's mount namespace: services and containers started from the host do not see it",
                fix:
                    "mount from the host's namespace (systemd unit without PrivateMounts=; Kubernetes: mountPropagation Bidirectional)"
            )
        }
        return .pass("namespace", "visible in PID 1's mount namespace")
    }

    // MARK: helpers

    /// The `user_id=` FUSE option of the mount at `path`.
    static func mountOwner(_ path: String) -> uid_t? {
        for option in mountOptions(path) where option.hasPrefix("user_id=") {
            return uid_t(option.dropFirst("user_id=".count))
        }
        return nil
    }

    /// The options of the topmost mount at `path` (per-mount and superblock).
    static func mountOptions(_ path: String) -> [String] {
        MountPoint.mounts()?.last { $0.path == path }?.options ?? []
    }

    /// Upstream text is already redacted by the daemon; keep it to one short line here too.
    static func bounded(_ text: String) -> String {
        let line = text.split(whereSeparator: \.isNewline).first.map(String.init) ?? ""
        return line.count > 200 ? String(line.prefix(200)) + "…" : line
    }

    static func renderText(_ checks: [Check]) -> String {
        var out = ""
        for check in checks {
            let mark = check.skipped ? "skip" : check.ok ? "ok  " : "FAIL"
            out += "\(mark) \(check.name): \(check.detail)\n"
            if let fix = check.fix { out += "     fix: \(fix)\n" }
        }
        let problems = checks.filter { !$0.ok }.count
        out += problems == 0 ? "all well\n" : "\(problems) problem\(problems == 1 ? "" : "s")\n"
        return out
    }

    static func renderJSON(_ checks: [Check]) -> String {
        struct Report: Encodable {
            var ok: Bool
            var checks: [Check]
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(Report(ok: !checks.contains { !$0.ok }, checks: checks))) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self) + "\n"
    }
}
