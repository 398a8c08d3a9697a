import Foundation
import Testing

@testable import CredentialCore

/// Property-based fuzzing of everything that turns outside bytes into credentials
/// (issue 10): `AnswerParser.parseFlat`, `STSAnswer.parse`, `ProcessProvider.parse` and
/// `Timestamp.parse`, fed seeded random and mutated inputs. Properties:
/// - nothing traps (a trap ends the test process);
/// - an accepted answer holds only bytes 0x21–0x7E and an Expiration in 1970...9999 after now;
/// - an accepted answer renders into every view: `credentials`, `config.json`, the URI
///   answer and the process output parse back as JSON to the same values (the last two
///   through credfs's own parsers, to equal credentials), `status` is JSON, and `env`,
///   sourced by `sh`, gives back exactly the values.
///
/// Seeded and bounded: `CREDFS_FUZZ_SEED` and `CREDFS_FUZZ_ITERATIONS` (default 3000 per
/// parser) change the run; `scripts/fuzz` runs it with many more.
@Suite struct AnswerPropertyTests {
    static let seed = UInt64(ProcessInfo.processInfo.environment["CREDFS_FUZZ_SEED"] ?? "") ?? 20_261_129
    static let iterations = Int(ProcessInfo.processInfo.environment["CREDFS_FUZZ_ITERATIONS"] ?? "") ?? 3000
    let now = Date(timeIntervalSince1970: 1_716_287_969)  // 2024-05-21T10:39:29Z

    @Test func flatAnswers() throws {
        var rng = SplitMix(seed: Self.seed)
        var checker = RenderChecker()
        for _ in 0..<Self.iterations {
            let body = Gen.answer(&rng, layout: .flat, now: now)
            let status = rng.chance(90) ? 200 : [403, 500, 404, 302][rng.below(4)]
            if let c = try? AnswerParser.parseFlat(status: status, body: body, now: now) {
                try checker.check(c, now: now)
            }
        }
        try checker.finish()
        print("flat answers: \(Self.iterations) inputs, \(checker.accepted) accepted, seed \(Self.seed)")
        #expect(checker.accepted > Self.iterations / 20, "the generator must reach the accepting paths")
    }

    @Test func stsAnswers() throws {
        var rng = SplitMix(seed: Self.seed &+ 1)
        var checker = RenderChecker()
        for _ in 0..<Self.iterations {
            let body = Gen.answer(&rng, layout: .sts, now: now)
            let status = rng.chance(90) ? 200 : [400, 403, 500][rng.below(3)]
            let c: Credentials
            do {
                c = try STSAnswer.parse(action: "AssumeRole", status: status, body: body, now: now)
            } catch {
                #expect(!error.message.contains("\n"))
                continue
            }
            try checker.check(c, now: now)
        }
        try checker.finish()
        print("STS answers: \(Self.iterations) inputs, \(checker.accepted) accepted, seed \(Self.seed)")
        #expect(checker.accepted > Self.iterations / 20)
    }

    @Test func processAnswers() throws {
        var rng = SplitMix(seed: Self.seed &+ 2)
        var checker = RenderChecker()
        for _ in 0..<Self.iterations {
            var result = ChildResult(stdout: Gen.answer(&rng, layout: .process, now: now))
            if rng.chance(5) { result.exitStatus = Int32(truncatingIfNeeded: rng.next()) }
            if rng.chance(3) { result.timedOut = true }
            if rng.chance(5) { result.stderrLine = Gen.value(&rng) }
            let c: Credentials
            do {
                c = try ProcessProvider.parse(result, command: "helper", now: now)
            } catch {
                #expect(!error.message.contains("\n"))
                continue
            }
            try checker.check(c, now: now)
        }
        try checker.finish()
        print("process answers: \(Self.iterations) inputs, \(checker.accepted) accepted, seed \(Self.seed)")
        #expect(checker.accepted > Self.iterations / 20)
    }

    @Test func timestamps() {
        var rng = SplitMix(seed: Self.seed &+ 3)
        var accepted = 0
        for _ in 0..<(Self.iterations * 10) {
            let text = Gen.timestamp(&rng, now: now)
            guard let date = Timestamp.parse(text) else { continue }
            accepted += 1
            let seconds = date.timeIntervalSince1970
            #expect(seconds >= Timestamp.earliest && seconds < Timestamp.latest + 1, "\(text)")
            // What credfs writes reads back as the same whole second.
            let written = Timestamp.format(date)
            #expect(Timestamp.parse(written) == Timestamp.wholeSeconds(date), "\(text) -> \(written)")
        }
        // format is total: any Double at all.
        for _ in 0..<(Self.iterations * 10) {
            let seconds = rng.chance(50) ? Double(bitPattern: rng.next()) : Double(rng.below(400_000_000_000))
            let text = Timestamp.format(Date(timeIntervalSince1970: seconds))
            #expect(Timestamp.parse(text) != nil, "\(seconds) -> \(text)")
            #expect(Timestamp.epoch(seconds) == nil || (seconds >= 0 && seconds < Timestamp.latest + 1))
        }
        print("timestamps: \(Self.iterations * 10) texts, \(accepted) accepted, seed \(Self.seed)")
        #expect(accepted > Self.iterations)
    }
}

// MARK: - Checking accepted credentials against every view

/// Checks one accepted set against every rendering; `env` files are batched and checked
/// by one `sh` run in ``finish()``.
struct RenderChecker {
    var accepted = 0
    var envCases: [(env: [UInt8], credentials: Credentials)] = []

    mutating func check(_ c: Credentials, now: Date) throws {
        accepted += 1
        for value in [c.accessKeyId, c.accessKeySecret] + (c.securityToken.map { [$0] } ?? []) {
            #expect(!value.isEmpty && value.utf8.allSatisfy { $0 >= 0x21 && $0 <= 0x7E })
        }
        if let exp = c.expiration {
            #expect(exp > now && exp.timeIntervalSince1970 <= Timestamp.latest)
        }
        let expiration = c.expiration.map(Timestamp.format)

        let views = CredentialViews(c)
        let file = try #require(try JSONSerialization.jsonObject(with: Data(views.credentials)) as? [String: String])
        #expect(file["AccessKeyId"] == c.accessKeyId && file["AccessKeySecret"] == c.accessKeySecret)
        #expect(file["SecurityToken"] == c.securityToken && file["Expiration"] == expiration)

        let config = try #require(try JSONSerialization.jsonObject(with: Data(views.configJSON)) as? [String: Any])
        let profile = try #require((config["profiles"] as? [[String: String]])?.first)
        #expect(profile["access_key_id"] == c.accessKeyId && profile["access_key_secret"] == c.accessKeySecret)
        #expect(profile["sts_token"] == c.securityToken)

        #expect(views.accessKeyId == Array(c.accessKeyId.utf8))
        #expect(views.accessKeySecret == Array(c.accessKeySecret.utf8))
        #expect(views.expiration == expiration.map { Array($0.utf8) })

        // The URI answer and the process output read back through credfs's own parsers.
        if c.securityToken != nil, c.expiration != nil {
            let uri = try AnswerParser.parseFlat(status: 200, body: Render.uriAnswer(c), now: now)
            #expect(uri == c)
        }
        let process = try ProcessProvider.parse(
            ChildResult(stdout: Render.processOutput(c)), command: "round-trip", now: now)
        #expect(process == c)

        let status = StatusSnapshot.sample(maskedAccessKeyId: c.maskedAccessKeyId, expiration: c.expiration)
        #expect(try JSONSerialization.jsonObject(with: Data(Render.statusFile(status))) is [String: Any])

        envCases.append((views.env, c))
    }

    /// Sources every `env` in one `sh` and compares what the shell holds, byte for byte.
    mutating func finish() throws {
        guard !envCases.isEmpty else { return }
        var template = Array("/tmp/credfs-env-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw CredentialError("mkdtemp") }
        let dir = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var script = "set -e\n"
        for (index, item) in envCases.enumerated() {
            _ = FileManager.default.createFile(atPath: "\(dir)/env\(index)", contents: Data(item.env))
            script += """
                unset ALIBABA_CLOUD_SECURITY_TOKEN
                . "\(dir)/env\(index)"
                printf '%s\\001%s\\001%s\\001%s\\002' "$ALIBABA_CLOUD_ACCESS_KEY_ID" "$ALIBABA_CLOUD_ACCESS_KEY_SECRET" "${ALIBABA_CLOUD_SECURITY_TOKEN-<unset>}" \(index)

                """
        }
        FileManager.default.createFile(atPath: "\(dir)/all.sh", contents: Data(script.utf8))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["\(dir)/all.sh"]
        let out = dir + "/out"
        FileManager.default.createFile(atPath: out, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        try process.run()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let records = (FileManager.default.contents(atPath: out) ?? Data()).split(separator: 2)
        #expect(records.count == envCases.count)
        for (record, item) in zip(records, envCases) {
            let fields = record.split(separator: 1, omittingEmptySubsequences: false).map {
                String(decoding: $0, as: UTF8.self)
            }
            let c = item.credentials
            #expect(fields.count == 4)
            guard fields.count == 4 else { continue }
            #expect(fields[0] == c.accessKeyId, "env: AccessKeyId read back differs (case \(fields[3]))")
            #expect(fields[1] == c.accessKeySecret, "env: AccessKeySecret read back differs (case \(fields[3]))")
            #expect(fields[2] == (c.securityToken ?? "<unset>"), "env: token read back differs (case \(fields[3]))")
        }
        envCases = []
    }
}

extension StatusSnapshot {
    static func sample(maskedAccessKeyId: String, expiration: Date?) -> StatusSnapshot {
        let now = Date(timeIntervalSince1970: 1_716_287_969)
        var s = StatusSnapshot(
            machine: RefreshMachine(policy: RefreshPolicy(), now: now), provider: "fuzz", mountedAt: now,
            version: "0", now: now)
        s.maskedAccessKeyId = maskedAccessKeyId
        s.expiration = expiration
        return s
    }
}

// MARK: - Generators

/// SplitMix64: small, seedable, the same sequence on every machine.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
}

enum Gen {
    enum Layout { case flat, sts, process }

    /// Bytes that have broken parsers and shells before.
    static let nasty: [String] = [
        "'", "\"", "\\", "$", "`", "$(id)", "${HOME}", "\\n", "%s", "'\\''", ";", "|", "&", "*", "?", "~", "#",
        "!", "<", ">", "{", "}", "[", "]", "=", ",", "\r", "\n", " ", "\t", "\u{0}", "\u{7F}", "é", "\u{2028}",
        "\u{FEFF}", "💥", "\u{1B}", "\u{85}",
    ]

    /// A credential-ish value: mostly printable ASCII (quotes and shell metacharacters
    /// included), sometimes with a hostile byte.
    static func value(_ r: inout SplitMix) -> String {
        var s = ""
        let length = r.chance(10) ? r.below(3000) : 1 + r.below(40)
        for _ in 0..<length {
            if r.chance(8) {
                let piece = r.pick(nasty)
                if r.chance(85), piece.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) || r.chance(5) {
                    s += piece
                }
            } else {
                s.unicodeScalars.append(UnicodeScalar(UInt8(0x21 + r.below(94))))
            }
        }
        if r.chance(3) { s = "" }
        return s
    }

    /// An RFC 3339-ish time: usually near `now` (either side), sometimes at or past the
    /// range ends, with random fields that may be out of range, offsets and fractions.
    static func timestamp(_ r: inout SplitMix, now: Date) -> String {
        func two(_ v: Int) -> String { v < 10 && v >= 0 ? "0\(v)" : "\(v)" }
        func four(_ v: Int) -> String {
            let s = String(v)
            return s.count >= 4 ? s : String(repeating: "0", count: 4 - s.count) + s
        }
        if r.chance(5) {
            return r.pick([
                "", "null", "9999-12-31T23:59:59Z", "1970-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
                "9999-12-31T23:59:60Z", "2030-02-30T00:00:00Z", "2030-01-01T24:00:00Z",
            ])
        }
        let base = now.timeIntervalSince1970 + Double(r.below(200_000)) - 50_000
        var text = Timestamp.format(Date(timeIntervalSince1970: base))
        if r.chance(40) {
            // Random fields: year 0...9999 (near the ends often), any month/day/hour/minute/second.
            let year = r.pick([r.below(10000), 1969, 1970, 9999, 2024 + r.below(10), 0])
            let month = r.chance(80) ? 1 + r.below(12) : r.below(100)
            let day = r.chance(80) ? 1 + r.below(31) : r.below(100)
            let hour = r.chance(80) ? r.below(24) : r.below(100)
            let minute = r.chance(80) ? r.below(60) : r.below(100)
            let second = r.chance(80) ? r.below(60) : r.below(100)
            text = "\(four(year))-\(two(month))-\(two(day))T\(two(hour)):\(two(minute)):\(two(second))Z"
        }
        if r.chance(30) {
            text.removeLast()
            if r.chance(30) {
                text += "." + String((0..<(1 + r.below(12))).map { _ in Character(String(r.below(10))) })
            }
            if r.chance(70) {
                text +=
                    "\(r.chance(50) ? "+" : "-")\(two(r.below(r.chance(90) ? 24 : 100))):\(two(r.below(r.chance(90) ? 60 : 100)))"
            } else {
                text += r.pick(["Z", "z", "", "UTC", "ZZ", " "])
            }
        }
        if r.chance(10) { text = mutate(Array(text.utf8), &r).map { String(decoding: $0, as: UTF8.self) } ?? text }
        return text
    }

    /// A JSON string literal, usually well escaped, sometimes with raw bytes (invalid JSON).
    static func json(_ s: String, _ r: inout SplitMix) -> String {
        guard !r.chance(3) else { return "\"" + s + "\"" }
        return Render.jsonString(s)
    }

    /// A field value: usually the right type, sometimes another.
    static func field(_ text: String, _ r: inout SplitMix) -> String {
        switch r.below(100) {
        case 0..<90: return json(text, &r)
        case 90..<92: return "null"
        case 92..<94: return String(r.below(1000))
        case 94..<96: return "[" + json(text, &r) + "]"
        case 96..<98: return "{}"
        default: return "true"
        }
    }

    static func answer(_ r: inout SplitMix, layout: Layout, now: Date) -> [UInt8] {
        let id = r.chance(80) ? "STS." + value(&r) : value(&r)
        let secret = value(&r)
        let token = value(&r)
        var expiration = field(timestamp(&r, now: now), &r)
        if layout == .process, r.chance(30) {
            // A helper's epoch number: usually sane, sometimes 1e19, -1e19, 1e308, fractions.
            let sane = now.timeIntervalSince1970 + Double(r.below(100_000)) - 10_000
            expiration =
                r.chance(70)
                ? String(sane)
                : r.pick([
                    "1e19", "-1e19", "1e308", "-1", "0", "253402300800", "253402300799.5", "1e400", "-0",
                    "18446744073709551616", "9223372036854775807", "1.7976931348623157e308", "5e-324",
                ])
        }
        var fields: [(String, String)]
        switch layout {
        case .flat:
            fields = [
                ("Code", r.chance(90) ? "\"Success\"" : field(value(&r), &r)), ("AccessKeyId", field(id, &r)),
                ("AccessKeySecret", field(secret, &r)), ("SecurityToken", field(token, &r)), ("Expiration", expiration),
                ("LastUpdated", "\"2024-05-21T09:39:29Z\""),
            ]
            if r.chance(10) { fields.append(("Message", field(value(&r), &r))) }
        case .sts:
            let creds: [(String, String)] = [
                ("AccessKeyId", field(id, &r)), ("AccessKeySecret", field(secret, &r)),
                ("SecurityToken", field(token, &r)), ("Expiration", expiration),
            ]
            let inner = "{" + shuffled(drop(creds, &r), &r).map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
            fields = [
                ("RequestId", "\"6894B13B-6D71-4EF5-88FA-F32781734A7F\""),
                ("Credentials", r.chance(95) ? inner : "null"),
            ]
            if r.chance(10) { fields += [("Code", field(value(&r), &r)), ("Message", field(value(&r), &r))] }
        case .process:
            let mode = r.chance(70) ? "StsToken" : r.chance(70) ? "AK" : value(&r)
            fields = [
                ("mode", field(mode, &r)), ("access_key_id", field(id, &r)), ("access_key_secret", field(secret, &r)),
                ("sts_token", field(token, &r)), ("expiration", expiration),
            ]
        }
        let object = "{" + shuffled(drop(fields, &r), &r).map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
        var bytes = Array(object.utf8)
        if r.chance(10), let mutated = mutate(bytes, &r) { bytes = mutated }
        if r.chance(1) { bytes = (0..<r.below(200)).map { _ in UInt8(truncatingIfNeeded: r.next()) } }
        if r.chance(1) { bytes += [UInt8](repeating: 0x20, count: AnswerParser.maxBodyBytes) }
        return bytes
    }

    static func drop(_ fields: [(String, String)], _ r: inout SplitMix) -> [(String, String)] {
        var kept = fields.filter { _ in !r.chance(3) }
        if r.chance(3), let first = fields.first { kept.append(first) }  // a duplicate key
        return kept
    }

    static func shuffled(_ fields: [(String, String)], _ r: inout SplitMix) -> [(String, String)] {
        r.chance(20) ? fields.shuffled(using: &r) : fields
    }

    /// Byte-level mutations, as a coverage-blind fuzzer would make them.
    static func mutate(_ input: [UInt8], _ r: inout SplitMix) -> [UInt8]? {
        var bytes = input
        for _ in 0..<(1 + r.below(4)) {
            guard !bytes.isEmpty else { return bytes }
            let at = r.below(bytes.count)
            switch r.below(6) {
            case 0: bytes[at] = UInt8(truncatingIfNeeded: r.next())
            case 1: bytes.remove(at: at)
            case 2: bytes.insert(r.pick(Array("\"\\{}[]:,0-+.eE\u{0}\n".utf8)), at: at)
            case 3: bytes = Array(bytes[0..<at])
            case 4: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + r.below(16))], at: at)
            default: bytes[at] ^= 1 << UInt8(r.below(8))
            }
        }
        return bytes
    }
}
