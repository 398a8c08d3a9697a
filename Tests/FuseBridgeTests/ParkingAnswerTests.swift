import Glibc
import Synchronization
import Testing

@testable import FuseBridge

/// Requests for content that is not there yet, without a mount: what parks, what a wake
/// answers, the epoch rule, deadlines, the bound and the stop.
@Suite struct ParkingAnswerTests {
    static let wait = VirtualFile.Content.pending(timeout: .seconds(600))

    /// A pending lookup parks (no answer now); a wake once content is there answers it with
    /// the entry, through the reply layer.
    @Test func aPendingLookupParksUntilAWake() throws {
        let source = Source(Self.wait)
        let bridge = TestBridge([source.file("v", caching: .versioned)])
        #expect(bridge.lookup("v", request: 11).isParked)
        #expect(bridge.fs.parkedCount == 1 && bridge.fs.requestCounts.parked == 1)
        #expect(bridge.sent(to: 11).isEmpty)
        source.set(Source.text("here", version: 1))
        bridge.fs.wake()
        let sent = bridge.sent(to: 11)
        #expect(sent.count == 1)
        #expect(sent.first?.entry?.inode == VersionTable.inode(file: 0, version: 1))
        #expect(bridge.fs.parkedCount == 0)
    }

    /// A pending open parks too; the wake opens it with the content then (its snapshot).
    @Test func aPendingOpenParksUntilAWake() throws {
        let source = Source(Self.wait)
        let bridge = TestBridge([source.file("p")])
        #expect(bridge.open(2, request: 12).isParked)
        source.set(Source.text("late"))
        bridge.fs.wake()
        let fh = try #require(bridge.sent(to: 12).first?.opened).fh
        #expect(bridge.read(2, fh: fh).text == "late")
    }

    /// A wake while content is still pending parks the request again, keeping its first
    /// deadline: waiting never lasts longer than the file's timeout in all.
    @Test func aWakeWhileStillPendingParksAgainWithTheFirstDeadline() throws {
        let bridge = TestBridge([Source(.pending(timeout: .seconds(30))).file("p")])
        let before = ContinuousClock.now
        #expect(bridge.lookup("p", request: 13).isParked)
        let after = ContinuousClock.now
        bridge.fs.wake()
        bridge.fs.wake()
        #expect(bridge.sent(to: 13).isEmpty)
        #expect(bridge.fs.parkedCount == 1)
        #expect(bridge.fs.parking.takeDue(now: before + .seconds(29)).due.isEmpty)
        let due = bridge.fs.parking.takeDue(now: after + .seconds(30)).due
        #expect(due.count == 1)
        #expect(due.first?.kind == .lookup(name: Array("p".utf8), caller: TestBridge.reader))
    }

    /// The epoch rule: a wake that comes after a request saw "pending" but before it parked
    /// is not lost; the request looks again and is answered at once.
    @Test func aWakeBetweenTheLookAndTheParkIsNotLost() throws {
        let woken = Atomic<Bool>(false)
        let bridge = Mutex<FuseFileSystem?>(nil)
        let test = TestBridge([
            VirtualFile(
                name: "race", permissions: 0o444, caching: .versioned,
                peek: {
                    if woken.load(ordering: .relaxed) { return Source.text("now", version: 1) }
                    // The publisher's content lands and it wakes, after this look.
                    woken.store(true, ordering: .relaxed)
                    bridge.withLock { $0 }?.wake()
                    return Self.wait
                }, open: { _ in Source.text("now", version: 1) })
        ])
        bridge.withLock { $0 = test.fs }
        let entry = try #require(test.lookup("race", request: 14).entry)
        #expect(entry.inode == VersionTable.inode(file: 0, version: 1))
        #expect(test.fs.parkedCount == 0)
        #expect(test.sent(to: 14).isEmpty, "answered directly, not parked")
    }

    @Test func theEpochMovesOnEveryWakeAndStop() {
        let parking = Parking()
        let entry = Parking.Entry(
            request: TestBridge.request(1), deadline: .now + .seconds(60),
            kind: .open(inode: 2, caller: TestBridge.reader))
        let seen = parking.epoch
        _ = parking.takeAll()
        #expect(parking.epoch == seen &+ 1)
        #expect(parking.park(entry, seen: seen) == .lookAgain)
        #expect(parking.park(entry, seen: parking.epoch) == .parked)
        #expect(parking.stop().count == 1)
        #expect(parking.park(entry, seen: parking.epoch) == .refused)
    }

    /// A request whose time is up is EIO: at once if its timeout is zero, from the timer or
    /// a wake once its deadline has passed.
    @Test func aRequestPastItsDeadlineIsEIO() {
        let bridge = TestBridge([Source(.pending(timeout: .zero)).file("p")])
        #expect(bridge.lookup("p").errno == EIO)
        #expect(bridge.open(2).errno == EIO)
        let late = Parking.Entry(
            request: TestBridge.request(15), deadline: .now - .seconds(1),
            kind: .lookup(name: Array("p".utf8), caller: TestBridge.reader))
        bridge.fs.resume(late)
        #expect(bridge.sent(to: 15).first?.errno == EIO)
        #expect(bridge.fs.parkedCount == 0)
    }

    /// The timer takes exactly the requests whose deadline has come, and reports the next.
    @Test func theTimerTakesOnlyWhatIsDue() {
        let parking = Parking()
        let start = ContinuousClock.now
        for (n, seconds) in [(1, 10), (2, 20), (3, 30)] {
            let entry = Parking.Entry(
                request: TestBridge.request(UInt(n)), deadline: start + .seconds(seconds),
                kind: .open(inode: 2, caller: TestBridge.reader))
            #expect(parking.park(entry, seen: parking.epoch) == .parked)
        }
        let first = parking.takeDue(now: start + .seconds(20))
        #expect(first.due.map { UInt(bitPattern: $0.request) } == [1, 2])
        #expect(first.next == start + .seconds(30) && !first.stopped)
        #expect(parking.count == 1)
        _ = parking.stop()
        #expect(parking.takeDue(now: start).stopped)
    }

    /// Parking is bounded: past its capacity a request is EIO at once.
    @Test func parkingIsBounded() {
        let bridge = TestBridge([Source(Self.wait).file("p")])
        for n in 0..<Parking.capacity {
            #expect(bridge.lookup("p", request: UInt(100 + n)).isParked)
        }
        #expect(bridge.lookup("p", request: 99).errno == EIO)
        #expect(bridge.open(2, request: 98).errno == EIO)
        #expect(bridge.fs.parkedCount == Parking.capacity)
        _ = bridge.fs.parking.stop()
    }

    /// A stop answers every parked request EIO, and a request after it is EIO at once.
    @Test func aStopAnswersParkedRequestsEIO() {
        let bridge = TestBridge([Source(Self.wait).file("p")])
        #expect(bridge.lookup("p", request: 21).isParked)
        #expect(bridge.open(2, request: 22).isParked)
        bridge.fs.stop()
        #expect(bridge.sent(to: 21).map(\.errno) == [EIO])
        #expect(bridge.sent(to: 22).map(\.errno) == [EIO])
        #expect(bridge.lookup("p", request: 23).errno == EIO)
        #expect(bridge.fs.parkedCount == 0)
    }

    /// Content that turns absent or failing while a request waits answers it so.
    @Test func aWakeAnswersWhatTheContentBecame() {
        let source = Source(Self.wait)
        let bridge = TestBridge([source.file("p")])
        #expect(bridge.lookup("p", request: 31).isParked)
        #expect(bridge.open(2, request: 32).isParked)
        source.set(.failure(EACCES))
        bridge.fs.wake()
        #expect(bridge.sent(to: 31).first?.entry?.inode == 2, "a failure is the open's to answer")
        #expect(bridge.sent(to: 32).first?.errno == EACCES)
        #expect(bridge.lookup("p", request: 33).entry != nil)
        source.set(Self.wait)
        #expect(bridge.lookup("p", request: 34).isParked)
        source.set(.absent)
        bridge.fs.wake()
        #expect(bridge.sent(to: 34).first?.errno == ENOENT)
    }

    /// At the loop's end parked requests are EIO, but a process handing over to a successor
    /// leaves them unanswered: the successor's RESEND gives them to it.
    @Test func parkedRequestsAreLeftToASuccessor() {
        let ending = TestBridge([Source(Self.wait).file("p")])
        #expect(ending.lookup("p", request: 41).isParked)
        ending.fs.endParking()
        #expect(ending.sent(to: 41).map(\.errno) == [EIO])
        let handing = TestBridge([Source(Self.wait).file("p")])
        #expect(handing.lookup("p", request: 42).isParked)
        handing.fs.state.withLock { $0.handingOver = true }
        handing.fs.endParking()
        #expect(handing.sent(to: 42).isEmpty)
        #expect(handing.fs.parkedCount == 0)
        #expect(handing.lookup("p", request: 43).errno == EIO, "nothing parks after the end")
    }
}
