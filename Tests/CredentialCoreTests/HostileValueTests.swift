import Foundation
import Testing

@testable import CredentialCore

/// Issue 10: credential values hold only bytes 0x21–0x7E; an Expiration is a real instant
/// between 1970 and 9999; files credfs reads are small regular files. Each hostile case is
/// a rejection with one line that never quotes the value, never a trap.
@Suite struct HostileValueTests {
    let now = Fixture.t0

    func flat(id: String = Fixture.accessKeyId, secret: String = Fixture.secret, token: String = Fixture.token)
        -> [UInt8]
    {
        let fields: [String: Any] = [
            "Code": "Success", "AccessKeyId": id, "AccessKeySecret": secret, "SecurityToken": token,
            "Expiration": "2024-05-21T10:39:29Z",
        ]
        return Array(try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys]))
    }

    func rejection(_ body: [UInt8]) -> String? {
        do {
            _ = try AnswerParser.parseFlat(status: 200, body: body, now: now)
            return nil
        } catch {
            return error.message
        }
    }

    static let badInsertions: [String] = [
        "\r", "\n", "\r\n", " ", "\t", "\u{0}", "\u{1}", "\u{1B}[31m", "\u{7F}", "é", "\u{2028}", "\u{FEFF}",
        "💥", "\u{85}", "\u{A0}",
    ]

    @Test(arguments: badInsertions)
    func aByteOutsidePrintableASCIIIsRejectedInEveryValue(insertion: String) {
        for field in ["AccessKeyId", "AccessKeySecret", "SecurityToken"] {
            let body: [UInt8]
            switch field {
            case "AccessKeyId": body = flat(id: "STS.ABC" + insertion + "DEF1234")
            case "AccessKeySecret": body = flat(secret: Fixture.secret + insertion)
            default: body = flat(token: insertion + Fixture.token)
            }
            let message = rejection(body)
            #expect(message == "\(field) holds a byte outside printable ASCII (0x21-0x7E)")
            #expect(message.map { !$0.contains("STS.ABC") && !$0.contains(Fixture.secret) } ?? false)
        }
    }

    @Test func everyPrintableASCIIByteIsAccepted() throws {
        let all = String(decoding: (0x21...0x7E).map { UInt8($0) }, as: UTF8.self)
        let c = try AnswerParser.parseFlat(status: 200, body: flat(id: all, secret: all, token: all), now: now)
        #expect(c.accessKeyId == all && c.accessKeySecret == all && c.securityToken == all)
    }

    @Test func theEnvironmentAndProcessSourcesApplyTheSameRule() {
        #expect(throws: CredentialError("AccessKeySecret holds a byte outside printable ASCII (0x21-0x7E)")) {
            try AnswerParser.validate(
                accessKeyId: "LTAI5tAbCdEfGhIjKlMn", accessKeySecret: "abc\ndef", securityToken: nil,
                expiration: nil, tokenRequired: false, now: now)
        }
        #expect(throws: CredentialError("SecurityToken holds a byte outside printable ASCII (0x21-0x7E)")) {
            try AnswerParser.validate(
                accessKeyId: "LTAI5tAbCdEfGhIjKlMn", accessKeySecret: "abc", securityToken: "a b",
                expiration: nil, tokenRequired: false, now: now)
        }
    }

    @Test(arguments: [
        "0000-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "1970-01-01T00:59:59+01:00",
        "9999-12-31T23:59:60Z", "9999-12-31T23:59:59-00:01", "9999-12-31T24:00:00Z", "2030-02-30T00:00:00Z",
        "2030-01-01T24:00:00Z", "2030-01-01T00:00:60Z", "2030-06-30T23:59:60Z", "10000-01-01T00:00:00Z",
        "2030-01-01T00:00:00.Z", "2030-01-01T00:00:00." + String(repeating: "9", count: 100) + "Z",
        "2030-01-01T00:00:00+99:99", "-001-01-01T00:00:00Z", "+2030-01-01T00:00:00Z", "2030-01-01T00:00:00Z\u{0}",
    ])
    func anExpirationThatIsNoRealInstantIsRejected(text: String) {
        #expect(Timestamp.parse(text) == nil)
    }

    @Test func theRangeEndsAreAccepted() throws {
        #expect(Timestamp.parse("1970-01-01T00:00:00Z") == Date(timeIntervalSince1970: 0))
        #expect(Timestamp.parse("1970-01-01T01:00:00+01:00") == Date(timeIntervalSince1970: 0))
        #expect(Timestamp.parse("9999-12-31T23:59:59Z") == Date(timeIntervalSince1970: Timestamp.latest))
        let late = try #require(Timestamp.parse("9999-12-31T23:59:59.999Z"))
        #expect(Timestamp.format(late) == "9999-12-31T23:59:59Z")
        #expect(Timestamp.parse("9999-12-31T22:59:59-01:00") == Date(timeIntervalSince1970: Timestamp.latest))
    }

    @Test(arguments: [
        1e19, -1e19, 1e308, -1e308, Double.nan, Double.infinity, -Double.infinity, -1, -0.5,
        Timestamp.latest + 1, Double(Int64.max), Double(Int64.min), Double.greatestFiniteMagnitude,
        Double.leastNonzeroMagnitude * -1,
    ])
    func anEpochNumberOutOfRangeIsRejected(seconds: Double) {
        #expect(Timestamp.epoch(seconds) == nil)
        #expect(throws: CredentialError("Expiration is not an epoch time between 1970 and 9999")) {
            try AnswerParser.validate(
                accessKeyId: "STS.abcdefghijkl", accessKeySecret: "s", securityToken: "t", expiry: .epoch(seconds),
                tokenRequired: true, now: Date(timeIntervalSince1970: 0))
        }
    }

    @Test func anEpochNumberInRangeIsAccepted() throws {
        #expect(Timestamp.epoch(0) == Date(timeIntervalSince1970: 0))
        #expect(Timestamp.epoch(Timestamp.latest + 0.5) == Date(timeIntervalSince1970: Timestamp.latest + 0.5))
        let c = try AnswerParser.validate(
            accessKeyId: "STS.abcdefghijkl", accessKeySecret: "s", securityToken: "t",
            expiry: .epoch(1_716_287_969.75), tokenRequired: true, now: now)
        #expect(c.expiration == Date(timeIntervalSince1970: 1_716_287_969))
    }

    /// `Timestamp.format` used `time_t(Double)`, which traps on NaN, ±inf and anything
    /// past Int64; it now clamps to the range parse accepts.
    @Test(arguments: [
        (Double.nan, "1970-01-01T00:00:00Z"), (Double.infinity, "9999-12-31T23:59:59Z"),
        (-Double.infinity, "1970-01-01T00:00:00Z"), (1e19, "9999-12-31T23:59:59Z"), (-1e19, "1970-01-01T00:00:00Z"),
        (1e308, "9999-12-31T23:59:59Z"), (67_767_976_233_316_800, "9999-12-31T23:59:59Z"),
        (-1, "1970-01-01T00:00:00Z"), (253_402_300_800, "9999-12-31T23:59:59Z"),
    ])
    func formatIsTotal(seconds: Double, expected: String) {
        #expect(Timestamp.format(Date(timeIntervalSince1970: seconds)) == expected)
    }

    @Test func aProcessHelpersHugeEpochIsARejectedAnswerNotATrap() throws {
        for number in ["1e19", "-1e19", "1e308", "1e400", "-1", "253402300800", "18446744073709551616"] {
            let json =
                "{\"mode\":\"StsToken\",\"access_key_id\":\"STS.abcdefghijkl\",\"access_key_secret\":\"s\",\"sts_token\":\"t\",\"expiration\":\(number)}"
            let result = ChildResult(stdout: Array(json.utf8))
            do {
                _ = try ProcessProvider.parse(result, command: "helper", now: now)
                Issue.record("\(number) was accepted")
            } catch {
                #expect(
                    error.message == "process helper: Expiration is not an epoch time between 1970 and 9999"
                        || error.message == "process helper: output is not the aliyun CLI External JSON",
                    "\(number): \(error.message)")
            }
        }
    }

    @Test func aProcessHelpersValueWithALineBreakIsRejected() {
        let json = "{\"mode\":\"AK\",\"access_key_id\":\"LTAI5tAbCdEf\\nGhIjKlMn\",\"access_key_secret\":\"s\"}"
        #expect(
            throws: CredentialError("process helper: AccessKeyId holds a byte outside printable ASCII (0x21-0x7E)")
        ) {
            try ProcessProvider.parse(ChildResult(stdout: Array(json.utf8)), command: "helper", now: now)
        }
    }

    @Test func anSTSAnswerWithAControlByteIsRejected() {
        let body =
            "{\"RequestId\":\"r\",\"Credentials\":{\"AccessKeyId\":\"STS.abcdefghijkl\",\"AccessKeySecret\":\"s\",\"SecurityToken\":\"t\\u0000\",\"Expiration\":\"2024-05-21T10:39:29Z\"}}"
        #expect(
            throws: CredentialError(
                "STS AssumeRole: SecurityToken holds a byte outside printable ASCII (0x21-0x7E)")
        ) {
            try STSAnswer.parse(action: "AssumeRole", status: 200, body: Array(body.utf8), now: now)
        }
    }
}

/// ``SmallFile``: the OIDC token file and the policy file.
@Suite struct SmallFileTests {
    func withDir(_ body: (String) throws -> Void) throws {
        var template = Array("/tmp/credfs-small-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw CredentialError("mkdtemp") }
        let dir = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try body(dir)
    }

    func failure(_ path: String) -> String? {
        do {
            _ = try SmallFile.read(path, what: "test file")
            return nil
        } catch {
            return error.message
        }
    }

    @Test func readsARegularFileWhole() throws {
        try withDir { dir throws in
            let path = dir + "/f"
            let bytes = (0..<SmallFile.maxBytes).map { UInt8(truncatingIfNeeded: $0) }
            _ = FileManager.default.createFile(atPath: path, contents: Data(bytes))
            #expect(try SmallFile.read(path, what: "test file") == bytes)
            _ = FileManager.default.createFile(atPath: path, contents: Data())
            #expect(try SmallFile.read(path, what: "test file") == [])
        }
    }

    @Test func aFileOver64KiBIsAnError() throws {
        try withDir { dir throws in
            let path = dir + "/big"
            _ = FileManager.default.createFile(atPath: path, contents: Data(count: SmallFile.maxBytes + 1))
            #expect(failure(path) == "the test file \(path) is larger than 64 KiB")
            // Sparse and huge: refused from fstat, nothing read.
            let fd = open(path, O_WRONLY)
            #expect(ftruncate(fd, 1 << 40) == 0)
            close(fd)
            #expect(failure(path) == "the test file \(path) is larger than 64 KiB")
        }
    }

    @Test func aFIFOADeviceOrADirectoryIsAnErrorNotAWait() throws {
        try withDir { dir throws in
            let fifo = dir + "/fifo"
            #expect(mkfifo(fifo, 0o600) == 0)
            let started = Date()
            #expect(failure(fifo) == "the test file \(fifo) is a FIFO, not a regular file")
            #expect(Date().timeIntervalSince(started) < 5)
            #expect(failure("/dev/zero") == "the test file /dev/zero is a character device, not a regular file")
            #expect(failure("/dev/null") == "the test file /dev/null is a character device, not a regular file")
            #expect(failure(dir) == "the test file \(dir) is a directory, not a regular file")
            #expect(failure(dir + "/missing") == "cannot open the test file \(dir)/missing: No such file or directory")
            #expect(failure("") == "test file: no path given")
        }
    }

    @Test func procfsFilesThatClaimSizeZeroAreReadBounded() throws {
        // /proc/self/maps says st_size 0 and holds more than 1 KiB (a test process maps
        // dozens of libraries): read whole under the 64 KiB limit, refused under a 1 KiB one,
        // where the read stops one byte past the limit whatever stat said.
        var st = stat()
        #expect(stat("/proc/self/maps", &st) == 0 && st.st_size == 0)
        let whole = try SmallFile.read("/proc/self/maps", what: "test file")
        #expect(whole.count > 1024)
        #expect(throws: CredentialError("the test file /proc/self/maps is larger than 1 KiB")) {
            try SmallFile.read("/proc/self/maps", what: "test file", limit: 1024)
        }
    }

    @Test func theOIDCTokenIsTrimmedAndAnEmptyOneIsAnError() throws {
        try withDir { dir throws in
            let path = dir + "/token"
            _ = FileManager.default.createFile(atPath: path, contents: Data(" \n eyJ.abc.def \r\n\t".utf8))
            #expect(try OIDCProvider.readToken(path) == "eyJ.abc.def")
            _ = FileManager.default.createFile(atPath: path, contents: Data(" \n\t".utf8))
            #expect(throws: CredentialError("the OIDC token file \(path) is empty")) {
                try OIDCProvider.readToken(path)
            }
            #expect(throws: CredentialError("the OIDC token file /dev/zero is a character device, not a regular file"))
            {
                try OIDCProvider.readToken("/dev/zero")
            }
        }
    }
}
