import Foundation
import Posix
import Synchronization
import Testing

@testable import CredentialCore

/// Closures shared between threads must not get deeper with use (see ``Hook``): a FUSE
/// worker calls them on every request, for the life of the daemon.
@Suite struct HookTests {
    /// The address of a local of the caller's frame: how deep the stack is at that call.
    @inline(never)
    static func stackAddress() -> Int {
        var local = 0
        return withUnsafeMutablePointer(to: &local) { Int(bitPattern: $0) }
    }

    @Test func aHookIsCalledAtTheSameDepthAfterManyUses() throws {
        let hook = Hook<@Sendable () -> Int>({ Self.stackAddress() })
        let call = try #require(hook.function)
        let first = call()
        for _ in 0..<10_000 { _ = hook.function?() }
        let again = try #require(hook.function)
        let last = again()
        // Each re-wrapping thunk would add a frame: 10,000 uses would be ~600 KB deeper.
        #expect(abs(first - last) < 1024, "called \(first - last) bytes deeper after 10,000 uses")
    }

    @Test func statusReadsDoNotDeepenTheServingFactsCall() {
        let refresher = Refresher(
            provider: ScriptedProvider { Fixture.sts() }, clock: VirtualClock(Fixture.t0), random: { 0 },
            logger: .quiet)
        let views = CredentialViewSource(
            refresher: refresher, initialWait: 0, mountedAt: Fixture.t0, version: "9.9.9")
        let depths = Mutex<[Int]>([])
        views.reportServing {
            let depth = Self.stackAddress()
            depths.withLock { $0.append(depth) }
            return ServingFacts(
                pid: 1, restarts: 0, carriedState: "none", mode: "default", parkedRequests: 0, openRequests: 0)
        }
        for _ in 0..<10_000 { _ = views.status() }
        let seen = depths.withLock { $0 }
        #expect(seen.count == 10_000)
        if let first = seen.first, let last = seen.last {
            #expect(abs(first - last) < 1024, "status's call went \(first - last) bytes deeper over 10,000 reads")
        }
    }

    /// The pattern itself stays out of the sources: no `Mutex` whose value is a function
    /// type (bare, optional, or in a tuple).
    @Test func noMutexHoldsAFunctionInTheSources() throws {
        let sources = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources")
        let files = try #require(FileManager.default.enumerator(atPath: sources.path))
            .compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") }
        #expect(files.count > 20)
        let pattern = try Regex(#"Mutex<[^>\n]*->"#)
        var offenders: [String] = []
        for file in files {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated()
            where line.contains(pattern) {
                offenders.append("\(file):\(number + 1)")
            }
        }
        #expect(offenders.isEmpty, "a closure held directly in a Mutex: \(offenders)")
    }
}
