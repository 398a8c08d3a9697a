import Foundation
import Synchronization
import Testing

@testable import FuseBridge

/// The invalidation thread on its own: requests coalesce behind a delivery that waits in
/// the kernel, and a stop's grace ends on it.
@Suite struct InvalidatorTests {
    final class Recorder: Sendable {
        let deliveries = Mutex<[[String]]>([])
        let expired = Atomic<Int>(0)
        /// The first delivery waits until this is set (as one waits behind a lookup).
        let gate = Atomic<Bool>(false)
    }

    func poll(_ what: String, _ condition: () -> Bool) {
        let deadline = Date().addingTimeInterval(5)
        while !condition(), Date() < deadline { usleep(1_000) }
        #expect(condition(), "timed out waiting for \(what)")
    }

    @Test func requestsMadeDuringADeliveryGoOutTogetherOnce() {
        let invalidator = Invalidator()
        let recorder = Recorder()
        let started = invalidator.run(
            deliver: { names in
                recorder.deliveries.withLock { $0.append(names) }
                while !recorder.gate.load(ordering: .acquiring) { usleep(1_000) }
            }, expire: { recorder.expired.add(1, ordering: .relaxed) })
        #expect(started)
        let second = invalidator.run(deliver: { _ in }, expire: {})
        #expect(!second, "one thread per file system")
        invalidator.request(["credentials", "token"])
        poll("the first delivery") { recorder.deliveries.withLock { $0.count } == 1 }
        // While it waits: three more requests, overlapping.
        invalidator.request(["token"])
        invalidator.request(["credentials", "env"])
        invalidator.request(["token"])
        invalidator.request([])
        recorder.gate.store(true, ordering: .releasing)
        poll("the second delivery") { recorder.deliveries.withLock { $0.count } == 2 }
        #expect(recorder.deliveries.withLock { $0 } == [["credentials", "token"], ["token", "credentials", "env"]])

        #expect(invalidator.expire(after: .milliseconds(20)))
        poll("the deadline") { recorder.expired.load(ordering: .relaxed) == 1 }
        invalidator.finish()
        poll("the thread to end") { !invalidator.expire(after: .seconds(1)) }
        // The thread has ended (above): a request now has no one to deliver it.
        invalidator.request(["token"])
        #expect(recorder.deliveries.withLock { $0.count } == 2, "nothing is delivered after the end")
        #expect(recorder.expired.load(ordering: .relaxed) == 1)
    }

    @Test func aFinishedInvalidatorStartsNoThread() {
        let invalidator = Invalidator()
        invalidator.finish()
        let started = invalidator.run(deliver: { _ in }, expire: {})
        #expect(!started)
        #expect(!invalidator.expire(after: .milliseconds(1)))
    }

    @Test func theEpochIsUsedFromProtocol7_44() {
        let invalidator = Invalidator()
        #expect(!invalidator.usesEpoch, "unknown until the INIT")
        invalidator.kernelOffered(minor: 43)
        #expect(!invalidator.usesEpoch)
        invalidator.kernelOffered(minor: 44)
        #expect(invalidator.usesEpoch)
        invalidator.epochRefused()
        #expect(!invalidator.usesEpoch, "a kernel that refused it once gets entry invalidations")
    }
}

/// On this machine's kernel, through a real mount.
@Suite(
    .serialized,
    .enabled(if: geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0, "needs root and /dev/fuse to mount"))
struct InvalidationMountTests {
    /// Pending until `ready` (also used as a flag).
    final class Late: Sendable {
        let ready = Atomic<Bool>(false)
        var content: VirtualFile.Content {
            ready.load(ordering: .relaxed) ? .bytes(Array("late".utf8), mtime: Date()) : .pending(timeout: .seconds(30))
        }
    }

    /// A lookup parked in the server holds the directory's locks in the kernel (on this
    /// machine's kernel every other lookup in the directory waits for it too). An entry
    /// invalidation would wait for it; the epoch bump is delivered at once. The names it
    /// covers are looked up again at their next open (one LOOKUP and one OPEN: the new
    /// version's inode), and, the epoch being the connection's, every other cached name too.
    @Test func aParkedLookupHoldsNoInvalidation() async throws {
        let data = BridgeMountTests.Versioned()
        let other = BridgeMountTests.Versioned()
        let late = Late()
        let mount = BridgeMountTests()
        let (fs, dir) = try mount.mount([
            VirtualFile(
                name: "data", permissions: 0o444, caching: .versioned, peek: { data.content },
                open: { _ in data.content }),
            VirtualFile(
                name: "other", permissions: 0o444, caching: .versioned, peek: { other.content },
                open: { _ in other.content }),
            VirtualFile(name: "late", permissions: 0o444, peek: { late.content }, open: { _ in late.content }),
        ])
        #expect(mount.read(dir + "/data") == "one")
        #expect(mount.read(dir + "/other") == "one")
        let epoch = fs.invalidator.usesEpoch

        // A reader's lookup of `late` parks.
        let answered = Late()
        Thread.detachNewThread {
            var st = stat()
            _ = stat(dir + "/late", &st)
            answered.ready.store(true, ordering: .relaxed)
        }
        func poll(_ condition: () -> Bool) {
            let deadline = Date().addingTimeInterval(5)
            while !condition(), Date() < deadline { usleep(20) }
        }
        poll { fs.parkedCount == 1 }
        #expect(fs.parkedCount == 1)

        data.set(2, "two")
        let asked = ContinuousClock.now
        fs.invalidate(["data"])
        if epoch {
            poll { fs.invalidationCounts.deliveries == 1 }
            print("invalidation delivered \(ContinuousClock.now - asked) after invalidate() returned")
            #expect(fs.invalidationCounts.deliveries == 1 && fs.invalidationCounts.epochs == 1)
            #expect(fs.parkedCount == 1, "delivered while the lookup is still parked")
        }
        late.ready.store(true, ordering: .relaxed)
        fs.wake()
        poll { answered.ready.load(ordering: .relaxed) && fs.invalidationCounts.deliveries == 1 }
        let done = answered.ready.load(ordering: .relaxed)
        #expect(done, "the parked lookup was answered")
        #expect(fs.invalidationCounts.deliveries == 1)

        let before = fs.requestCounts
        #expect(mount.read(dir + "/data") == "two")
        let after = fs.requestCounts
        #expect(after.lookup - before.lookup == 1 && after.open - before.open == 1, "\(before) → \(after)")
        #expect(mount.read(dir + "/other") == "one")
        if epoch {
            #expect(fs.requestCounts.lookup - after.lookup == 1, "the epoch covers every cached name")
        }
        await mount.unmount(fs, dir)
    }
}
