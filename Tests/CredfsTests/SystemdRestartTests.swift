import Testing

@testable import credfs

/// How the server tells `systemctl restart` from `systemctl stop` (docs/hitless.md): the
/// texts systemd gives, parsed. The whole path runs under real systemd in scripts/test-boot.
@Suite struct SystemdRestartTests {
    @Test func unitFromCgroupV2() {
        #expect(SystemdRestart.unitName(cgroup: "0::/system.slice/credfs.service\n") == "credfs.service")
        #expect(
            SystemdRestart.unitName(cgroup: "0::/system.slice/system-credfs.slice/credfs@mnt.service\n")
                == "credfs@mnt.service")
    }

    @Test func unitFromCgroupV1() {
        let text = """
            12:memory:/system.slice/credfs.service
            1:name=systemd:/system.slice/credfs.service
            0::/
            """
        #expect(SystemdRestart.unitName(cgroup: text) == "credfs.service")
    }

    @Test func noServiceNoUnit() {
        #expect(SystemdRestart.unitName(cgroup: "0::/user.slice/user-0.slice/session-3.scope\n") == nil)
        #expect(SystemdRestart.unitName(cgroup: "0::/system.slice/mnt-x.mount\n") == nil)
        #expect(SystemdRestart.unitName(cgroup: "") == nil)
        #expect(SystemdRestart.unitName(cgroup: "garbage") == nil)
    }

    @Test func restartJobFound() {
        let jobs = """
            1234 credfs.service           restart running
            1240 credfs-consumer.service  start   waiting
            """
        #expect(SystemdRestart.hasRestartJob(jobs, unit: "credfs.service"))
        #expect(!SystemdRestart.hasRestartJob(jobs, unit: "credfs-consumer.service"))
        #expect(SystemdRestart.hasRestartJob("7 credfs.service try-restart running\n", unit: "credfs.service"))
    }

    @Test func stopIsNoRestart() {
        #expect(!SystemdRestart.hasRestartJob("1234 credfs.service stop running\n", unit: "credfs.service"))
        #expect(!SystemdRestart.hasRestartJob("", unit: "credfs.service"))
        #expect(!SystemdRestart.hasRestartJob("1234 other.service restart running\n", unit: "credfs.service"))
        #expect(!SystemdRestart.hasRestartJob("credfs.service restart", unit: "credfs.service"))
    }
}
