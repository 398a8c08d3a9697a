import Foundation
import Testing

@testable import CredentialCore

@Suite struct ParserTests {
    /// 2024-05-21T09:39:29Z: an hour before the fixture's Expiration.
    let now = Fixture.t0

    /// A body with the fixture's secret values, with `overrides` replacing (or, for
    /// `NSNull`, removing) fields.
    func body(_ overrides: [String: Any] = [:]) -> [UInt8] {
        var fields: [String: Any] = [
            "Code": "Success",
            "AccessKeyId": Fixture.accessKeyId,
            "AccessKeySecret": Fixture.secret,
            "SecurityToken": Fixture.token,
            "Expiration": "2024-05-21T10:39:29Z",
            "LastUpdated": "2024-05-21T09:39:29Z",
        ]
        for (key, value) in overrides {
            if value is NSNull { fields[key] = nil } else { fields[key] = value }
        }
        return Array(try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]))
    }

    func rejection(status: Int = 200, _ body: [UInt8]) -> String? {
        do {
            _ = try AnswerParser.parseFlat(status: status, body: body, now: now)
            return nil
        } catch {
            // The message must never quote the secrets the body carried.
            #expect(!error.message.contains(Fixture.secret))
            #expect(!error.message.contains(Fixture.token))
            #expect(!error.message.contains("\n"))
            return error.message
        }
    }

    @Test func acceptsAGoodAnswer() throws {
        let c = try AnswerParser.parseFlat(status: 200, body: body(), now: now)
        #expect(c == Fixture.sts())
        #expect(c.accessKeyId == Fixture.accessKeyId)
        #expect(c.accessKeySecret == Fixture.secret)
        #expect(c.securityToken == Fixture.token)
        #expect(c.expiration == Fixture.expiration)
    }

    @Test func acceptsFractionalAndOffsetExpirations() throws {
        let fractional = try AnswerParser.parseFlat(
            status: 200, body: body(["Expiration": "2024-05-21T10:39:29.750Z"]), now: now)
        #expect(fractional.expiration == Fixture.expiration)
        let offset = try AnswerParser.parseFlat(
            status: 200, body: body(["Expiration": "2024-05-21T18:39:29+08:00"]), now: now)
        #expect(offset.expiration == Fixture.expiration)
    }

    @Test func acceptsABodyOfExactly64KiB() throws {
        var bytes = body()
        bytes.insert(
            contentsOf: [UInt8](repeating: UInt8(ascii: " "), count: 64 * 1024 - bytes.count), at: 1)
        #expect(bytes.count == 64 * 1024)
        let c = try AnswerParser.parseFlat(status: 200, body: bytes, now: now)
        #expect(c == Fixture.sts())
    }

    @Test func rejectsNon200() {
        #expect(rejection(status: 500, Array("internal error".utf8)) == "HTTP 500")
        #expect(rejection(status: 404, []) == "HTTP 404")
        // A non-200 carrying credentials is still refused, and quotes none of them.
        #expect(rejection(status: 503, body()) == "HTTP 503: Success: no Message")
    }

    @Test func rejectsNon200AndSurfacesCodeAndMessage() throws {
        let json = #"{"Code":"Forbidden.RAM","Message":"The role is not attached to this instance"}"#
        let message = try #require(rejection(status: 403, Array(json.utf8)))
        #expect(message == "HTTP 403: Forbidden.RAM: The role is not attached to this instance")
        #expect(message.contains("403"))
        #expect(message.contains("Forbidden.RAM"))
        #expect(message.contains("The role is not attached to this instance"))
    }

    @Test func rejectsNotJSON() {
        #expect(
            rejection(Array("<html>hello</html>".utf8))
                == "answer is not a JSON object with the credential fields")
        #expect(rejection([]) == "answer is not a JSON object with the credential fields")
    }

    @Test func rejectsAJSONArray() {
        #expect(
            rejection(Array("[1,2,3]".utf8)) == "answer is not a JSON object with the credential fields")
        #expect(
            rejection(Array("[\(String(decoding: body(), as: UTF8.self))]".utf8))
                == "answer is not a JSON object with the credential fields")
        #expect(
            rejection(Array("\"Success\"".utf8))
                == "answer is not a JSON object with the credential fields")
    }

    @Test func rejectsABodyOver64KiB() {
        var bytes = body()
        bytes.insert(
            contentsOf: [UInt8](repeating: UInt8(ascii: " "), count: 64 * 1024 + 1 - bytes.count), at: 1)
        #expect(bytes.count == 64 * 1024 + 1)
        #expect(rejection(bytes) == "answer larger than 64 KiB")
    }

    @Test func rejectsACodeOtherThanSuccessWithItsMessage() {
        let message = rejection(
            body(["Code": "InvalidSecurityToken.Expired", "Message": "Specified token expired"]))
        #expect(
            message == "upstream refused: Code InvalidSecurityToken.Expired: Specified token expired")
        #expect(rejection(body(["Code": "Failed"])) == "upstream refused: Code Failed: no Message")
        #expect(rejection(body(["Code": "success"])) == "upstream refused: Code success: no Message")
    }

    @Test func rejectsAMissingCode() {
        #expect(rejection(body(["Code": NSNull()])) == "upstream refused: no Code: no Message")
    }

    @Test func flattensAMultiLineUpstreamMessage() {
        let message = rejection(body(["Code": "Bad", "Message": "line one\nline two\r\nline three"]))
        #expect(message == "upstream refused: Code Bad: line one line two line three")
    }

    @Test func boundsALongUpstreamMessage() throws {
        let message = try #require(
            rejection(body(["Code": "Bad", "Message": String(repeating: "x", count: 5000)])))
        #expect(message.count == 301)
        #expect(message.hasSuffix("…"))
    }

    @Test func rejectsAnEmptyOrMissingAccessKeyId() {
        #expect(rejection(body(["AccessKeyId": ""])) == "empty AccessKeyId")
        #expect(rejection(body(["AccessKeyId": NSNull()])) == "empty AccessKeyId")
    }

    @Test func rejectsAnEmptyOrMissingAccessKeySecret() {
        #expect(rejection(body(["AccessKeySecret": ""])) == "empty AccessKeySecret")
        #expect(rejection(body(["AccessKeySecret": NSNull()])) == "empty AccessKeySecret")
    }

    @Test func rejectsAnEmptyOrMissingSecurityToken() {
        #expect(rejection(body(["SecurityToken": ""])) == "empty SecurityToken")
        #expect(rejection(body(["SecurityToken": NSNull()])) == "empty SecurityToken")
    }

    @Test func rejectsAMissingExpiration() {
        #expect(rejection(body(["Expiration": NSNull()])) == "no Expiration in the answer")
    }

    @Test(arguments: [
        "", "tomorrow", "2024-05-21T10:39:29", "2024-02-30T10:39:29Z", "2024-13-21T10:39:29Z",
    ])
    func rejectsABadExpiration(expiration: String) {
        #expect(
            rejection(body(["Expiration": expiration]))
                == "Expiration is not an RFC 3339 time between 1970 and 9999")
    }

    @Test func rejectsAWronglyTypedField() {
        #expect(
            rejection(body(["Expiration": 1_716_287_969]))
                == "answer is not a JSON object with the credential fields")
    }

    @Test func rejectsAPastExpiration() {
        #expect(
            rejection(body(["Expiration": "2024-05-21T08:00:00Z"]))
                == "answer already expired (Expiration 2024-05-21T08:00:00Z)")
        // Exactly now is not in the future either.
        #expect(
            rejection(body(["Expiration": Timestamp.format(now)]))
                == "answer already expired (Expiration 2024-05-21T09:39:29Z)")
        // A fraction past now is truncated to now: still expired.
        #expect(
            rejection(body(["Expiration": "2024-05-21T09:39:29.900Z"]))
                == "answer already expired (Expiration 2024-05-21T09:39:29Z)")
        // One second ahead is fine.
        #expect(rejection(body(["Expiration": "2024-05-21T09:39:30Z"])) == nil)
    }

    @Test func validateForAnAccessKeyPairNeedsNoTokenNorExpiration() throws {
        let c = try AnswerParser.validate(
            accessKeyId: "LTAI5tAbCdEfGhIjKlMn", accessKeySecret: "s", securityToken: "", expiration: nil,
            tokenRequired: false, now: now)
        #expect(c.securityToken == nil)
        #expect(c.expiration == nil)
        #expect(throws: CredentialError("answer already expired (Expiration 2024-05-21T08:00:00Z)")) {
            try AnswerParser.validate(
                accessKeyId: "LTAI5tAbCdEfGhIjKlMn", accessKeySecret: "s", securityToken: nil,
                expiration: "2024-05-21T08:00:00Z", tokenRequired: false, now: now)
        }
    }

    @Test func noRejectionQuotesTheSecretOrToken() {
        let bodies: [(Int, [UInt8])] = [
            (500, body()),
            (403, body(["Code": "Forbidden", "Message": "denied"])),
            (200, body(["Code": "Denied"])),
            (200, body(["Code": NSNull()])),
            (200, body(["AccessKeyId": ""])),
            (200, body(["Expiration": "not a time"])),
            (200, body(["Expiration": NSNull()])),
            (200, body(["Expiration": "2020-01-01T00:00:00Z"])),
            (200, body(["Expiration": 5])),
            (200, body(["AccessKeyId": 7])),
            (200, Array(String(decoding: body(), as: UTF8.self).dropLast().utf8)),  // truncated JSON
        ]
        for (status, bytes) in bodies {
            let message = rejection(status: status, bytes)
            #expect(message != nil)
        }
    }
}
