import Foundation

#if canImport(Glibc)
    import Glibc
#endif

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

    public init(argv: [String], timeout: TimeInterval = 60) {
        self.argv = argv
        self.timeout = timeout
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
        let result = try await withCheckedThrowingContinuation {
            (continuation: CheckedContinuation<ChildResult, any Error>) in
            let thread = Thread {
                do {
                    continuation.resume(returning: try ChildProcess.run(argv, timeout: timeout))
                } catch {
                    continuation.resume(throwing: error)
                }
            }
            thread.name = "credfs-process"
            thread.start()
        }
        return try Self.parse(result, command: argv.first ?? "", now: Date())
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

/// posix_spawn with pipes, its own process group, default signal dispositions and an
/// empty signal mask (the daemon ignores and blocks signals that a child must not inherit).
enum ChildProcess {
    /// A pipe whose ends are not inherited by other children (posix_spawn's dup2 clears
    /// the flag on the child's 1 and 2).
    static func cloexecPipe(_ fds: inout [Int32]) -> Bool {
        guard pipe(&fds) == 0 else { return false }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        return true
    }

    static func run(_ argv: [String], timeout: TimeInterval) throws(CredentialError) -> ChildResult {
        guard let program = argv.first, !program.isEmpty else {
            throw CredentialError("process: empty --command")
        }
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        guard cloexecPipe(&out) else {
            throw CredentialError("process: pipe: \(String(cString: strerror(errno)))")
        }
        guard cloexecPipe(&err) else {
            close(out[0])
            close(out[1])
            throw CredentialError("process: pipe: \(String(cString: strerror(errno)))")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, out[1], 1)
        posix_spawn_file_actions_adddup2(&actions, err[1], 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigfillset(&defaults)
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(
            &attributes, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP))

        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        let spawned = posix_spawnp(&pid, program, &actions, &attributes, cArgs, environ)
        close(out[1])
        close(err[1])
        guard spawned == 0 else {
            close(out[0])
            close(err[0])
            throw CredentialError("process \(program): cannot run: \(String(cString: strerror(spawned)))")
        }

        var result = ChildResult(timeout: timeout)
        var stderr: [UInt8] = []
        let deadline = Date(timeIntervalSinceNow: timeout)
        var open: [Int32] = [out[0], err[0]]
        var buffer = [UInt8](repeating: 0, count: 16384)
        while !open.isEmpty {
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 {
                result.timedOut = true
                break
            }
            var fds = open.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            let ready = poll(&fds, nfds_t(fds.count), Int32(min(remaining * 1000 + 1, 60_000)))
            if ready < 0, errno == EINTR { continue }
            if ready <= 0 { continue }
            for entry in fds where entry.revents != 0 {
                let n = read(entry.fd, &buffer, buffer.count)
                if n <= 0 {
                    if n < 0, errno == EINTR || errno == EAGAIN { continue }
                    close(entry.fd)
                    open.removeAll { $0 == entry.fd }
                    continue
                }
                if entry.fd == out[0] {
                    if result.stdout.count <= AnswerParser.maxBodyBytes { result.stdout += buffer[0..<n] }
                } else if stderr.count < 4096 {
                    stderr += buffer[0..<n]
                }
            }
        }
        for fd in open { close(fd) }
        // Both pipes closed (or time ran out): the child should be gone or going.
        var status: Int32 = 0
        while !result.timedOut {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid { break }
            if reaped < 0, errno != EINTR { break }
            if deadline.timeIntervalSinceNow <= 0 {
                result.timedOut = true
                break
            }
            usleep(5_000)
        }
        if result.timedOut {
            kill(-pid, SIGKILL)
            kill(pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        }
        // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (they are macros in C).
        let termSignal = status & 0x7F
        if termSignal == 0 {
            result.exitStatus = (status >> 8) & 0xFF
        } else {
            result.signal = termSignal
            result.exitStatus = -1
        }
        let line =
            String(decoding: stderr, as: UTF8.self).split(whereSeparator: \.isNewline).first.map(
                String.init) ?? ""
        result.stderrLine = line.count > 200 ? String(line.prefix(200)) + "…" : line
        return result
    }
}
