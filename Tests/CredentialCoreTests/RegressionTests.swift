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

/// Generation pinning (SPEC section 2 item 4) on explicit times.
struct GenerationPinsTests {
    func published(_ generation: Int, expiresIn seconds: TimeInterval, at now: Date) -> Published {
        Published(
            credentials: Credentials(
                accessKeyId: "STS.PIN\(generation)xxxxxxxx", accessKeySecret: "s\(generation)",
                securityToken: "t\(generation)", expiration: now.addingTimeInterval(seconds)),
            generation: generation, fetchedAt: now)
    }

    @Test func aGroupKeepsItsFirstGenerationForTenSecondsNotSliding() {
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        let pins = GenerationPins()
        let g1 = published(1, expiresIn: 3600, at: t0)
        let g2 = published(2, expiresIn: 3600, at: t0)
        #expect(pins.generation(for: 7, current: g1, now: t0).generation == 1)
        #expect(pins.generation(for: 7, current: g2, now: t0 + 5).generation == 1)
        #expect(pins.generation(for: 7, current: g2, now: t0 + 9.9).generation == 1)
        // Not sliding: the pin from t0 ends at t0 + 10 however often the group read.
        #expect(pins.generation(for: 7, current: g2, now: t0 + 10).generation == 2)
        // Another group is pinned on its own.
        #expect(pins.generation(for: 8, current: g2, now: t0 + 1).generation == 2)
    }

    @Test func anExpiredPinIsNotServed() {
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        let pins = GenerationPins()
        let short = published(1, expiresIn: 2, at: t0)
        let next = published(2, expiresIn: 3600, at: t0 + 1)
        #expect(pins.generation(for: 7, current: short, now: t0).generation == 1)
        #expect(pins.generation(for: 7, current: next, now: t0 + 1).generation == 1)
        #expect(pins.generation(for: 7, current: next, now: t0 + 2).generation == 2)
    }

    @Test func theTableIsBounded() {
        let t0 = Date(timeIntervalSince1970: 1_700_000_000)
        let pins = GenerationPins(capacity: 100)
        let g1 = published(1, expiresIn: 3600, at: t0)
        for group in 0..<1000 {
            _ = pins.generation(for: Int32(group), current: g1, now: t0 + Double(group) / 1000)
        }
        #expect(pins.count <= 100)
        // The newest groups are still pinned; the oldest were evicted.
        let g2 = published(2, expiresIn: 3600, at: t0)
        #expect(pins.generation(for: 999, current: g2, now: t0 + 2).generation == 1)
        #expect(pins.generation(for: 0, current: g2, now: t0 + 2).generation == 2)
    }
}
