import Foundation
import Testing

@testable import CredentialCore

/// Bugs found in review, each pinned by a test.
struct RegressionTests {
    /// A leap second (`:60`) is not an instant POSIX time can hold, and no Alibaba Cloud
    /// service sends one: it is rejected (issue 10), real (2016-12-31) or made up.
    @Test func aLeapSecondIsRejected() {
        #expect(Timestamp.parse("2016-12-31T23:59:60Z") == nil)
        #expect(Timestamp.parse("2024-05-21T10:39:60Z") == nil)
        #expect(Timestamp.parse("9999-12-31T23:59:60Z") == nil)
    }

    @Test func aLargeErrorPageStillNamesTheHTTPStatus() {
        let page = [UInt8](repeating: UInt8(ascii: "x"), count: AnswerParser.maxBodyBytes + 1)
        #expect(throws: CredentialError("HTTP 502")) {
            try AnswerParser.parseFlat(status: 502, body: page, now: Date())
        }
        #expect(throws: CredentialError("answer larger than 64 KiB")) {
            try AnswerParser.parseFlat(status: 200, body: page, now: Date())
        }
    }
}

/// Generation pinning (docs/contract.md, "What a reader may rely on") on explicit times.
struct GenerationPinsTests {
    let t0 = Date(timeIntervalSince1970: 1_700_000_000)

    func rendered(_ generation: Int, expiresIn seconds: TimeInterval, at now: Date) -> RenderedGeneration {
        let credentials = Credentials(
            accessKeyId: "STS.PIN\(generation)xxxxxxxx", accessKeySecret: "s\(generation)",
            securityToken: "t\(generation)", expiration: now.addingTimeInterval(seconds))
        return RenderedGeneration(
            published: Published(credentials: credentials, generation: generation, fetchedAt: now),
            views: CredentialViews(credentials))
    }

    func read(
        _ pins: GenerationPins, group: Int32, uid: UInt32 = 0, _ current: RenderedGeneration,
        at now: Date, pin: Bool = true
    ) -> Int {
        pins.generation(
            for: GenerationPins.Reader(group: group, uid: uid), current: current, pin: pin, now: now
        ).published.generation
    }

    @Test func aGroupKeepsItsFirstGenerationForTenSecondsNotSliding() {
        let pins = GenerationPins()
        let g1 = rendered(1, expiresIn: 3600, at: t0)
        let g2 = rendered(2, expiresIn: 3600, at: t0)
        #expect(read(pins, group: 7, g1, at: t0) == 1)
        #expect(read(pins, group: 7, g2, at: t0 + 5) == 1)
        #expect(read(pins, group: 7, g2, at: t0 + 9.9) == 1)
        // Not sliding: the pin from t0 ends at t0 + 10 however often the group read.
        #expect(read(pins, group: 7, g2, at: t0 + 10) == 2)
        // Another group is pinned on its own.
        #expect(read(pins, group: 8, g2, at: t0 + 1) == 2)
    }

    @Test func anExpiredPinIsNotServed() {
        let pins = GenerationPins()
        let short = rendered(1, expiresIn: 2, at: t0)
        let next = rendered(2, expiresIn: 3600, at: t0 + 1)
        #expect(read(pins, group: 7, short, at: t0) == 1)
        #expect(read(pins, group: 7, next, at: t0 + 1) == 1)
        #expect(read(pins, group: 7, next, at: t0 + 2) == 2)
    }

    @Test func aReadThatMustNotPinFollowsAPinButMakesNone() {
        let pins = GenerationPins()
        let g1 = rendered(1, expiresIn: 3600, at: t0)
        let g2 = rendered(2, expiresIn: 3600, at: t0)
        // `expiration` (world-readable) first: no pin, so a later secret read is current.
        #expect(read(pins, group: 7, g1, at: t0, pin: false) == 1)
        #expect(pins.count == 0)
        #expect(read(pins, group: 7, g2, at: t0 + 1) == 2)
        // After a secret read, `expiration` follows the pin.
        #expect(read(pins, group: 7, rendered(3, expiresIn: 3600, at: t0), at: t0 + 2, pin: false) == 2)
    }

    @Test func theTableIsBounded() {
        let pins = GenerationPins(capacity: 100, perUserCapacity: 100)
        let g1 = rendered(1, expiresIn: 3600, at: t0)
        for group in 0..<1000 {
            _ = read(pins, group: Int32(group), g1, at: t0 + Double(group) / 1000)
        }
        #expect(pins.count <= 100)
        // The newest groups are still pinned; the oldest were evicted.
        let g2 = rendered(2, expiresIn: 3600, at: t0)
        #expect(read(pins, group: 999, g2, at: t0 + 2) == 1)
        #expect(read(pins, group: 0, g2, at: t0 + 2) == 2)
    }

    @Test func pinsPastTheirWindowAreSweptWhenAPinIsMade() {
        // Groups that never come back: their pins (and the generation each holds) go at the
        // next pin made at least a second later, not when the user's quota fills.
        let pins = GenerationPins()
        let g1 = rendered(1, expiresIn: 3600, at: t0)
        for group in 0..<200 { _ = read(pins, group: Int32(group), g1, at: t0) }
        #expect(pins.count == 200)
        let g2 = rendered(2, expiresIn: 3600, at: t0)
        // Within the window nothing is swept.
        _ = read(pins, group: 500, g2, at: t0 + 5)
        #expect(pins.count == 201)
        // Past it, the next pin made sweeps the 200 (the one from t0 + 5 still holds).
        _ = read(pins, group: 501, g2, at: t0 + 11)
        #expect(pins.count == 2)
        #expect(read(pins, group: 500, g2, at: t0 + 12) == 2)
    }

    @Test func aFloodFromOneUserEvictsNoOtherUsersPin() {
        let pins = GenerationPins(capacity: 4096, perUserCapacity: 1024)
        let g1 = rendered(1, expiresIn: 3600, at: t0)
        let g2 = rendered(2, expiresIn: 3600, at: t0)
        #expect(read(pins, group: 42, uid: 0, g1, at: t0) == 1)
        for group in 0..<5000 {
            _ = read(pins, group: Int32(1000 + group), uid: 1000, g2, at: t0 + 0.1 + Double(group) / 1e5)
        }
        #expect(pins.count <= 4096)
        // The script of uid 0 still reads generation 1 within its window.
        #expect(read(pins, group: 42, uid: 0, g2, at: t0 + 1) == 1)
    }
}
