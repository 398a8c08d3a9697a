import Foundation
import Testing

@testable import CredentialCore

@Suite struct TimestampTests {
    @Test func parsesUTC() {
        #expect(Timestamp.parse("2024-05-21T10:39:29Z") == Date(timeIntervalSince1970: 1_716_287_969))
        #expect(Timestamp.parse("1970-01-01T00:00:00Z") == Date(timeIntervalSince1970: 0))
        #expect(Timestamp.parse("1999-12-31T23:59:59Z") == Date(timeIntervalSince1970: 946_684_799))
        #expect(Timestamp.parse("2024-02-29T00:00:00Z") == Date(timeIntervalSince1970: 1_709_164_800))
    }

    @Test func formatsUTCWholeSeconds() {
        #expect(Timestamp.format(Date(timeIntervalSince1970: 1_716_287_969)) == "2024-05-21T10:39:29Z")
        #expect(
            Timestamp.format(Date(timeIntervalSince1970: 1_716_287_969.999)) == "2024-05-21T10:39:29Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00Z")
        #expect(Timestamp.format(Date(timeIntervalSince1970: 946_684_799)) == "1999-12-31T23:59:59Z")
        #expect(
            Timestamp.format(Date(timeIntervalSince1970: 253_402_300_799)) == "9999-12-31T23:59:59Z")
    }

    @Test(arguments: [
        "2024-05-21T10:39:29Z", "1970-01-01T00:00:00Z", "2000-02-29T12:00:00Z", "2038-01-19T03:14:08Z",
        "2099-12-31T23:59:59Z",
    ])
    func roundTrips(text: String) throws {
        let date = try #require(Timestamp.parse(text))
        #expect(Timestamp.format(date) == text)
        #expect(Timestamp.parse(Timestamp.format(date)) == date)
    }

    @Test func roundTripsWholeSecondDates() {
        for seconds in stride(from: 0.0, to: 4_000_000_000, by: 86_399 * 37 + 13) {
            let date = Date(timeIntervalSince1970: seconds)
            #expect(Timestamp.parse(Timestamp.format(date)) == date)
        }
    }

    @Test func offsetsAreAppliedToUTC() {
        let utc = Date(timeIntervalSince1970: 1_716_287_969)
        #expect(Timestamp.parse("2024-05-21T18:39:29+08:00") == utc)
        #expect(Timestamp.parse("2024-05-21T05:09:29-05:30") == utc)
        #expect(Timestamp.parse("2024-05-21T10:39:29+00:00") == utc)
        #expect(Timestamp.parse("2024-05-21T10:39:29-00:00") == utc)
        // An offset that moves the instant across midnight (and a month boundary).
        #expect(Timestamp.parse("2024-06-01T02:00:00+09:00") == Timestamp.parse("2024-05-31T17:00:00Z"))
    }

    @Test func fractionalSecondsAreKeptByParseAndDroppedByFormat() throws {
        let base = 1_716_287_969.0
        let a = try #require(Timestamp.parse("2024-05-21T10:39:29.750Z"))
        #expect(abs(a.timeIntervalSince1970 - (base + 0.75)) < 1e-6)
        let b = try #require(Timestamp.parse("2024-05-21T18:39:29.5+08:00"))
        #expect(abs(b.timeIntervalSince1970 - (base + 0.5)) < 1e-6)
        let c = try #require(Timestamp.parse("2024-05-21T10:39:29.123456789Z"))
        #expect(abs(c.timeIntervalSince1970 - (base + 0.123456789)) < 1e-6)
        #expect(Timestamp.format(a) == "2024-05-21T10:39:29Z")
        #expect(Timestamp.wholeSeconds(a) == Date(timeIntervalSince1970: base))
        #expect(Timestamp.wholeSeconds(c) == Date(timeIntervalSince1970: base))
    }

    @Test func acceptsRFC3339Variants() {
        let utc = Date(timeIntervalSince1970: 1_716_287_969)
        #expect(Timestamp.parse("2024-05-21t10:39:29z") == utc)
        #expect(Timestamp.parse("2024-05-21 10:39:29Z") == utc)
    }

    @Test(arguments: [
        "", "garbage", "2024-05-21", "2024-05-21T10:39:29",  // missing zone
        "2024-05-21T10:39Z", "2024-05-21T10:39:29ZZ", "2024-05-21T10:39:29Z ", " 2024-05-21T10:39:29Z",
        "2024-02-30T00:00:00Z",  // Feb 30
        "2023-02-29T00:00:00Z",  // not a leap year
        "2024-04-31T00:00:00Z", "2024-13-01T00:00:00Z",  // month 13
        "2024-00-10T00:00:00Z", "2024-05-00T00:00:00Z", "2024-05-32T00:00:00Z", "2024-05-21T24:00:00Z",
        "2024-05-21T10:60:00Z", "2024-05-21T10:39:29.Z",  // a dot without digits
        "2024-05-21T10:39:29+0800", "2024-05-21T10:39:29+08", "2024-05-21T10:39:29+24:00",
        "2024-05-21T10:39:29+08:60", "24-05-21T10:39:29Z", "2024/05/21T10:39:29Z",
        "2024-5-21T10:39:29Z",
        "2024-05-21T10:39:29UTC", "1716287969", "２０２４-05-21T10:39:29Z",
    ])
    func rejects(text: String) {
        #expect(Timestamp.parse(text) == nil)
    }
}
