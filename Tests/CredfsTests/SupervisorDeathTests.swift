import CPosixIPC
import Foundation
import Testing

@testable import credfs

/// A server whose main thread died while another thread is held in the kernel (a FUSE
/// entry invalidation waiting for a lookup that only a successor can answer) never fires
/// its pidfd; the supervisor must still see it as dead (docs/hitless.md). A process whose
/// main thread exits while another thread lives is the same shape.
@Suite struct SupervisorDeathTests {
    static let source = """
        #include <pthread.h>
        #include <unistd.h>
        static void *stay(void *arg) { (void)arg; for (;;) pause(); return 0; }
        int main(void) {
            pthread_t thread;
            pthread_create(&thread, 0, stay, 0);
            pthread_exit(0);
        }
        """

    @Test func mainThreadGoneIsSeenWhileAnotherThreadLives() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let file = dir.path + "/leader.c"
        try Self.source.write(toFile: file, atomically: true, encoding: .utf8)
        let program = dir.path + "/leader"
        let compiled = try runProcess("/usr/bin/cc", ["-o", program, file, "-lpthread"])
        try #require(compiled.status == 0, "\(compiled.stderr)")

        let living = Process()
        living.executableURL = URL(fileURLWithPath: "/bin/sleep")
        living.arguments = ["30"]
        try living.run()
        defer { living.terminate() }

        let leader = Process()
        leader.executableURL = URL(fileURLWithPath: program)
        try leader.run()
        defer { kill(leader.processIdentifier, SIGKILL) }
        try waitUntil("the main thread to exit", timeout: 5) {
            Supervisor.mainThreadGone(leader.processIdentifier)
        }
        // Its pidfd does not fire: the process has not ended.
        let pidfd = credfs_pidfd_open(leader.processIdentifier)
        #expect(pidfd >= 0)
        var poller = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
        #expect(poll(&poller, 1, 0) == 0)
        close(pidfd)
        #expect(!Supervisor.mainThreadGone(living.processIdentifier))
        #expect(!Supervisor.mainThreadGone(getpid()))
        #expect(!Supervisor.mainThreadGone(0))
    }
}
