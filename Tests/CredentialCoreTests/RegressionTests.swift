import Foundation
import Testing

@testable import CredentialCore

/// Bugs found in review, each pinned by a test.
struct RegressionTests {
    @Test func aLeapSecondStaysInItsOwnMinute() throws {
        let leap = try #require(Timestamp.parse("2016-12-31T23:59:60Z"))
        #expect(Timestamp.format(leap) == "2016-12-31T23:59:59Z")
        let made = try #require(Timestamp.parse("2024-05-21T10:39:60Z"))
        #expect(Timestamp.format(made) == "2024-05-21T10:39:59Z")
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
