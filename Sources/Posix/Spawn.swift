import CPosix
import Glibc

/// Starting a child process: the one way credfs does it (the process provider, the daemon
/// re-executing itself, `fusermount3`). posix_spawn, never fork(): credfs runs Swift
/// threads. The child starts with default signal dispositions and an empty signal mask,
/// and with no descriptor but the ones it is given.
public struct Spawn {
    /// Where a child's standard stream goes.
    public enum Stream {
        case null
        case inherit
        case descriptor(Int32)
    }

    public var executable: String
    public var arguments: [String]
    /// nil: this process's environment.
    public var environment: [String]?
    public var stdin: Stream = .null
    public var stdout: Stream = .null
    public var stderr: Stream = .inherit
    /// More descriptors for the child: child fd ← parent fd.
    public var descriptors: [(child: Int32, parent: Int32)] = []
    /// Runs the file open at `descriptor` instead of looking ``executable`` up by path (fexecve
    /// in effect): the child sees it at `slot`, execs `/proc/self/fd/SLOT`, and a script's
    /// interpreter reads it there. What runs is the file opened, whatever its path names now.
    public var executableFile: (descriptor: Int32, slot: Int32)?
    /// A session of its own (a daemon), or else optionally a process group of its own.
    public var newSession = false
    public var newProcessGroup = false

    public init(executable: String, arguments: [String]) {
        self.executable = executable
        self.arguments = arguments
    }

    /// Starts the child; returns its pid, or the errno that stopped it.
    public func start() -> Result<pid_t, SpawnError> {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (fd, stream) in [(Int32(0), stdin), (1, stdout), (2, stderr)] {
            switch stream {
            case .null: posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0)
            case .inherit: break
            case .descriptor(let parent): posix_spawn_file_actions_adddup2(&actions, parent, fd)
            }
        }
        // dup2 clears close-on-exec on the child's copy; everything else the parent holds
        // must be close-on-exec already (credfs opens all its descriptors so).
        for (child, parent) in descriptors { posix_spawn_file_actions_adddup2(&actions, parent, child) }
        if let file = executableFile { posix_spawn_file_actions_adddup2(&actions, file.descriptor, file.slot) }
        let path = executableFile.map { "/proc/self/fd/\($0.slot)" } ?? executable

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var all = sigset_t()
        sigfillset(&all)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setsigmask(&attributes, &none)
        var flags = Int32(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)
        if newSession {
            flags |= 0x80  // POSIX_SPAWN_SETSID (glibc 2.26)
        } else if newProcessGroup {
            posix_spawnattr_setpgroup(&attributes, 0)
            flags |= Int32(POSIX_SPAWN_SETPGROUP)
        }
        posix_spawnattr_setflags(&attributes, Int16(truncatingIfNeeded: flags))

        let argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var envp = (environment ?? []).map { strdup($0) } + [nil]
        defer { envp.forEach { free($0) } }
        var pid = pid_t()
        let started = envp.withUnsafeMutableBufferPointer { given in
            let env = environment == nil ? credfs_environ() : given.baseAddress
            return path.contains("/")
                ? posix_spawn(&pid, path, &actions, &attributes, argv, env)
                : posix_spawnp(&pid, path, &actions, &attributes, argv, env)
        }
        guard started == 0 else { return .failure(SpawnError(code: started)) }
        return .success(pid)
    }

    /// Waits for `pid` to end; returns its wait status.
    public static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { return -1 }
        }
        return status
    }

    /// True once `pid` has ended, without reaping it (its pid stays taken until ``wait(_:)``).
    public static func hasExited(_ pid: pid_t) -> Bool {
        var info = siginfo_t()
        while waitid(P_PID, id_t(pid), &info, WEXITED | WNOHANG | WNOWAIT) < 0 {
            if errno != EINTR { return true }
        }
        return info.si_signo == SIGCHLD
    }

    /// Runs to completion; true when it exited 0.
    public func run() -> Bool {
        guard case .success(let pid) = start() else { return false }
        return Self.wait(pid) == 0
    }

    /// A pipe whose ends are close-on-exec from the start: no other child inherits them.
    public static func pipe() -> (read: Int32, write: Int32)? {
        var fds: [Int32] = [-1, -1]
        guard credfs_pipe_cloexec(&fds) == 0 else { return nil }
        return (fds[0], fds[1])
    }
}

public struct SpawnError: Error, CustomStringConvertible {
    public let code: Int32
    public var description: String { Errno.describe(code) }
}

/// A wait status, spelled out (WIFEXITED and friends are macros in C).
public struct ExitStatus: Sendable, Equatable {
    public let raw: Int32
    public init(_ raw: Int32) { self.raw = raw }
    /// The signal that ended the process, or 0.
    public var signal: Int32 { raw & 0x7F }
    /// The exit code, when it exited.
    public var code: Int32 { signal == 0 ? (raw >> 8) & 0xFF : -1 }
}
