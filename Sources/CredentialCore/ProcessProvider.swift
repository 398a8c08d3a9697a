import FoundationEssentials
import Glibc
import Posix

/// `process`: runs a command (argv, no shell) and reads the `aliyun` CLI "External" JSON
/// from its stdout:
/// `{"mode":"StsToken","access_key_id":…,"access_key_secret":…,"sts_token":…,"expiration":…}`
/// (`mode` `AK` needs neither token nor expiration). The command gets 60 s; then it and
/// its process group are killed. stdin is /dev/null; stdout is read up to 64 KiB; the
/// first line of stderr (bounded) goes into the error when the command fails. stdout is
/// never quoted in an error: it holds secrets.
public struct ProcessProvider: CredentialProvider {
    public let name = "process"
    public let argv: [String]
    let timeout: TimeInterval
    let clock: any RefreshClock

    public init(argv: [String], timeout: TimeInterval = 60, clock: any RefreshClock) {
        self.argv = argv
        self.timeout = timeout
        self.clock = clock
    }

    /// `--command` as given: split on whitespace, no quoting, no shell.
    public static func split(_ command: String) -> [String] {
        command.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
    }

    struct External: Decodable {
        var mode: String?
        var access_key_id: String?
        var access_key_secret: String?
        var sts_token: String?
        var expiration: Expiration?

        /// RFC 3339 text, or seconds since the epoch (checked by ``AnswerParser/validate``:
        /// a number outside 1970...9999, 1e308 or -1e19 included, is a rejected answer).
        enum Expiration: Decodable {
            case text(String)
            case epoch(Double)
            init(from decoder: any Decoder) throws {
                let container = try decoder.singleValueContainer()
                if let number = try? container.decode(Double.self) {
                    self = .epoch(number)
                } else {
                    self = .text(try container.decode(String.self))
                }
            }
            var expiry: AnswerParser.Expiry {
                switch self {
                case .text(let text): return .text(text)
                case .epoch(let seconds): return .epoch(seconds)
                }
            }
        }
    }

    public func fetch() async throws -> Credentials {
        let argv = self.argv
        let timeout = self.timeout
        let environment = Self.environment(ProcessInfo.processInfo.environment)
        // The child is watched from a thread of its own: never from Swift's small pool.
        let result = try await withCheckedThrowingContinuation {
            (continuation: CheckedContinuation<ChildResult, any Error>) in
            let started = startThread(name: "credfs-process") {
                do {
                    continuation.resume(
                        returning: try ChildProcess.run(argv, environment: environment, timeout: timeout))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            if !started { continuation.resume(throwing: CredentialError("process: cannot start a thread")) }
        }
        return try Self.parse(result, command: argv.first ?? "", now: clock.now())
    }

    /// The helper's environment, and all of it: PATH (this process's, or the standard
    /// one), HOME, LANG, LC_ALL, TZ, the proxy variables and every `ALIBABA_CLOUD_*` and
    /// `ALIYUN_*` variable. Nothing else of the daemon's environment reaches it.
    public static func environment(_ from: [String: String]) -> [String] {
        var kept = ["PATH": from["PATH"] ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        for (key, value) in from {
            let proxy = ["http_proxy", "https_proxy", "no_proxy"].contains(key.lowercased())
            if ["HOME", "LANG", "LC_ALL", "TZ"].contains(key) || proxy || key.hasPrefix(CloudVariable.prefix)
                || key.hasPrefix("ALIYUN_")
            {
                kept[key] = value
            }
        }
        return kept.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
    }

    static func parse(_ result: ChildResult, command: String, now: Date) throws(CredentialError)
        -> Credentials
    {
        let what = "process \(command)"
        if result.timedOut {
            throw CredentialError("\(what): no answer within \(Int(result.timeout)) s; killed")
        }
        guard result.exitStatus == 0 else {
            let detail = result.stderrLine.isEmpty ? "" : ": \(result.stderrLine)"
            throw CredentialError("\(what) \(result.exitDescription)\(detail)")
        }
        guard result.stdout.count <= AnswerParser.maxBodyBytes else {
            throw CredentialError("\(what): output larger than 64 KiB")
        }
        guard let answer = try? JSONDecoder().decode(External.self, from: Data(result.stdout)) else {
            throw CredentialError("\(what): output is not the aliyun CLI External JSON")
        }
        let mode = answer.mode ?? ""
        guard mode == "AK" || mode == "StsToken" else {
            throw CredentialError(
                "\(what): mode \(mode.isEmpty ? "missing" : "'\(mode.prefix(32))'"), expected AK or StsToken"
            )
        }
        do {
            return try AnswerParser.validate(
                accessKeyId: answer.access_key_id, accessKeySecret: answer.access_key_secret,
                securityToken: mode == "AK" ? nil : answer.sts_token,
                expiry: answer.expiration?.expiry,
                tokenRequired: mode == "StsToken", now: now)
        } catch {
            throw CredentialError("\(what): \(error.message)")
        }
    }
}

/// What one run of the command gave.
struct ChildResult: Sendable {
    var exitStatus: Int32 = 0
    var signal: Int32 = 0
    var timedOut = false
    var timeout: TimeInterval = 0
    var stdout: [UInt8] = []
    var stderrLine = ""

    var exitDescription: String {
        signal != 0 ? "was killed by signal \(signal)" : "exited with status \(exitStatus)"
    }
}

/// Runs the helper: its own process group, stdin /dev/null, stdout and stderr on pipes
/// that no other child inherits. Whatever it leaves running in its group is killed when it
/// is done, and the whole group at the timeout.
enum ChildProcess {
    static func run(_ argv: [String], environment: [String], timeout: TimeInterval) throws(CredentialError)
        -> ChildResult
    {
        guard let program = argv.first, !program.isEmpty else {
            throw CredentialError("process: empty --command")
        }
        guard let out = Spawn.pipe() else {
            throw CredentialError("process: pipe: \(Errno.last)")
        }
        guard let err = Spawn.pipe() else {
            close(out.read)
            close(out.write)
            throw CredentialError("process: pipe: \(Errno.last)")
        }
        var spawn = Spawn(executable: program, arguments: argv)
        spawn.environment = environment
        spawn.stdout = .descriptor(out.write)
        spawn.stderr = .descriptor(err.write)
        spawn.newProcessGroup = true
        let started = spawn.start()
        close(out.write)
        close(err.write)
        guard case .success(let pid) = started else {
            close(out.read)
            close(err.read)
            if case .failure(let error) = started {
                throw CredentialError("process \(program): cannot run: \(error)")
            }
            throw CredentialError("process \(program): cannot run")
        }

        var result = ChildResult(timeout: timeout)
        var stderr: [UInt8] = []
        let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int64(min(max(timeout, 0), 86_400) * 1000)))
        var open: [Int32] = [out.read, err.read]
        var buffer = [UInt8](repeating: 0, count: 16384)
        // Read until both pipes close or the helper has exited (a child it left in the
        // background may hold the pipes open: it is killed below, not waited for).
        var exited = false
        while !open.isEmpty {
            let remaining = deadline - ContinuousClock.now
            if remaining <= .zero {
                result.timedOut = true
                break
            }
            let ms = Int32(clamping: remaining.components.seconds * 1000 + 1)
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), exited ? 0 : min(ms, 50))
            if ready <= 0 {
                if exited { break }
                exited = Spawn.hasExited(pid)
                continue
            }
            for entry in fds where entry.revents != 0 {
                let n = read(entry.fd, &buffer, buffer.count)
                if n <= 0 {
                    if n < 0, errno == EINTR || errno == EAGAIN { continue }
                    close(entry.fd)
                    open.removeAll { $0 == entry.fd }
                    continue
                }
                if entry.fd == out.read {
                    if result.stdout.count <= AnswerParser.maxBodyBytes { result.stdout += buffer[0..<n] }
                } else if stderr.count < 4096 {
                    stderr += buffer[0..<n]
                }
            }
        }
        for fd in open { close(fd) }
        // Both pipes closed (or time ran out): the child should be gone or going. It is
        // left unreaped until its group is killed, so its pid (the group's id) cannot be
        // reused by another process meanwhile.
        while !result.timedOut, !Spawn.hasExited(pid) {
            if ContinuousClock.now >= deadline {
                result.timedOut = true
                break
            }
            usleep(5_000)
        }
        // Nothing the helper started outlives it: its whole group goes.
        kill(-pid, SIGKILL)
        let status = Spawn.wait(pid)
        let exit = ExitStatus(status)
        result.signal = exit.signal
        result.exitStatus = exit.code
        let line =
            String(decoding: stderr, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(
                String.init) ?? ""
        result.stderrLine = line.count > 200 ? String(line.prefix(200)) + "…" : line
        return result
    }
}
