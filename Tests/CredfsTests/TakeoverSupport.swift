import CFuse3
import Foundation
import Synchronization
import Testing

@testable import credfs

// What the takeover suites share (HitlessTests, HitlessStateTests, TakeoverStateTests,
// ResendTests, ControlPlaneTests, SupervisorRuleTests, PolicyFileTests, ListenerAbuseTests).

/// A mount made without -f: supervisor plus server.
final class Supervised {
    let dir: TempDir
    let mountpoint: String
    let supervisor: pid_t

    init(_ arguments: [String], environment: [String: String]? = nil) throws {
        dir = try TempDir()
        mountpoint = dir.path + "/mnt"
        let result = try runCredfs(["mount", mountpoint] + arguments, environment: environment)
        guard result.status == 0 else {
            dir.remove()
            throw HarnessError(description: "mount failed: \(result.stderr)")
        }
        var found: pid_t = 0
        if let pid = daemonPID(mountpoint: mountpoint) { found = parentPID(of: pid) ?? 0 }
        supervisor = found
    }

    func path(_ name: String) -> String { mountpoint + "/" + name }

    func status() throws -> [String: Any] {
        let read = readFile(path("status"))
        guard let bytes = read.bytes,
            let object = try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
        else { throw HarnessError(description: "status unreadable: errno \(read.error)") }
        return object
    }

    func serverPID() throws -> pid_t { pid_t(try status()["pid"] as? Int ?? -1) }

    func device() -> UInt {
        var st = stat()
        return stat(mountpoint, &st) == 0 ? UInt(st.st_dev) : 0
    }

    var stopped = false

    /// `credfs unmount`; then the supervisor must be gone and nothing mounted.
    func stop() throws {
        if stopped {
            dir.remove()
            return
        }
        stopped = true
        defer {
            if isMounted(mountpoint) { umount2(mountpoint, Int32(MNT_DETACH)) }
            if supervisor > 0, kill(supervisor, 0) == 0 { kill(supervisor, SIGKILL) }
            dir.remove()
        }
        let result = try runCredfs(["unmount", mountpoint])
        #expect(result.status == 0, "\(result.stderr)")
        try waitUntil("the supervisor to exit", timeout: 5) { supervisor <= 0 || !isAlive(supervisor) }
        try waitUntil("the server to exit", timeout: 5) { daemonPID(mountpoint: mountpoint) == nil }
        #expect(!isMounted(mountpoint))
    }
}

/// Readers doing open + read + close of `credentials` without pause; every failure and
/// the longest single read are kept.
final class Readers: @unchecked Sendable {
    struct Tally {
        var reads = 0
        var failures: [String] = []
        var longest: TimeInterval = 0
        var keys: Set<String> = []
    }
    let tally = Mutex(Tally())
    let running = Atomic<Bool>(true)
    var threads: [Thread] = []
    let finished = Atomic<Int>(0)

    init(path: String, count: Int) {
        for _ in 0..<count {
            let thread = Thread { [self] in
                while running.load(ordering: .relaxed) {
                    let start = Date()
                    let read = readFile(path)
                    let took = Date().timeIntervalSince(start)
                    let text = read.text ?? ""
                    let key = Self.accessKeyId(in: text)
                    tally.withLock { t in
                        t.reads += 1
                        t.longest = max(t.longest, took)
                        if read.bytes == nil {
                            t.failures.append("errno \(read.error)")
                        } else if key == nil || !text.hasSuffix("}\n") {
                            t.failures.append("bad content (\(text.utf8.count) bytes)")
                        } else if let key {
                            t.keys.insert(key)
                        }
                    }
                }
                finished.add(1, ordering: .relaxed)
            }
            threads.append(thread)
            thread.start()
        }
    }

    static func accessKeyId(in text: String) -> String? {
        guard let range = text.range(of: "\"AccessKeyId\": \"") else { return nil }
        let rest = text[range.upperBound...]
        guard let end = rest.firstIndex(of: "\"") else { return nil }
        return String(rest[..<end])
    }

    func reads() -> Int { tally.withLock { $0.reads } }

    func stop() throws -> Tally {
        running.store(false, ordering: .relaxed)
        try waitUntil("the readers to finish", timeout: 10) { finished.load(ordering: .relaxed) == threads.count }
        return tally.withLock { $0 }
    }
}

/// Timings the takeover suites report on stderr (never assert).
enum Timings {
    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
    }

    static func report(_ line: String) {
        FileHandle.standardError.write(Data("hitless: \(line)\n".utf8))
    }
}

/// The states a supervisor holds for its server (its `state.N` memfds).
enum SupervisorStore {
    /// The states the supervisor holds now (each `state.N` memfd it keeps), parsed. Read
    /// through `/proc/PID/fd`, as root; the test never prints them (they hold secrets).
    static func states(supervisor: pid_t) -> [[String: Any]] {
        let dir = "/proc/\(supervisor)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
        var states: [[String: Any]] = []
        for entry in entries {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + entry),
                target.hasPrefix("/memfd:credfs-state")
            else { continue }
            guard let bytes = readFile(dir + "/" + entry).bytes,
                let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any]
            else { continue }
            states.append(object)
        }
        return states
    }

    /// Waits until every state the supervisor holds satisfies `condition`, so a kill now
    /// hands the successor such a state (the server pushes a few ms after each change).
    static func waitFor(
        _ what: String, supervisor: pid_t, _ condition: @escaping ([String: Any]) -> Bool
    ) throws {
        try waitUntil("a carried state with \(what)") {
            let states = states(supervisor: supervisor)
            return !states.isEmpty && states.allSatisfy(condition)
        }
    }
}
