import Foundation

/// The test suite's own RPC signature (version 1.0) verifier: SHA-1, HMAC and the
/// percent-encoding written here from their specifications (FIPS 180-4, RFC 2104, RFC 3986
/// via Foundation), sharing no code with the provider's signer (swift-crypto and
/// `STSAnswer.percentEncode`). The fake STS checks every AssumeRole with it; the signer
/// tests check it against Python's `hmac` so the checker itself is known good.
enum ReferenceRPCSigner {
    /// SHA-1 (FIPS 180-4), byte-wise and slow, which is fine for a fake.
    static func sha1(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [0x6745_2301, 0xEFCD_AB89, 0x98BA_DCFE, 0x1032_5476, 0xC3D2_E1F0]
        var padded = message
        let bits = UInt64(message.count) * 8
        padded.append(0x80)
        while padded.count % 64 != 56 { padded.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { padded.append(UInt8(truncatingIfNeeded: bits >> shift)) }
        func rotl(_ x: UInt32, _ n: UInt32) -> UInt32 { (x << n) | (x >> (32 - n)) }
        for block in stride(from: 0, to: padded.count, by: 64) {
            var w = [UInt32](repeating: 0, count: 80)
            for i in 0..<16 {
                let j = block + 4 * i
                w[i] =
                    UInt32(padded[j]) << 24 | UInt32(padded[j + 1]) << 16 | UInt32(padded[j + 2]) << 8
                    | UInt32(padded[j + 3])
            }
            for i in 16..<80 { w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1) }
            var (a, b, c, d, e) = (h[0], h[1], h[2], h[3], h[4])
            for i in 0..<80 {
                let f: UInt32
                let k: UInt32
                switch i {
                case 0..<20: (f, k) = ((b & c) | (~b & d), 0x5A82_7999)
                case 20..<40: (f, k) = (b ^ c ^ d, 0x6ED9_EBA1)
                case 40..<60: (f, k) = ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC)
                default: (f, k) = (b ^ c ^ d, 0xCA62_C1D6)
                }
                let t = rotl(a, 5) &+ f &+ e &+ k &+ w[i]
                (e, d, c, b, a) = (d, c, rotl(b, 30), a, t)
            }
            h[0] &+= a
            h[1] &+= b
            h[2] &+= c
            h[3] &+= d
            h[4] &+= e
        }
        return h.flatMap { word in stride(from: 24, through: 0, by: -8).map { UInt8(truncatingIfNeeded: word >> $0) } }
    }

    /// HMAC-SHA1 (RFC 2104), block size 64.
    static func hmacSHA1(key: [UInt8], message: [UInt8]) -> [UInt8] {
        var k = key.count > 64 ? sha1(key) : key
        k += [UInt8](repeating: 0, count: 64 - k.count)
        let inner = sha1(k.map { $0 ^ 0x36 } + message)
        return sha1(k.map { $0 ^ 0x5C } + inner)
    }

    static func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    /// RFC 3986: only unreserved characters stay.
    static let unreserved = CharacterSet(
        charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")

    static func encode(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: unreserved)!
    }

    /// `GET&%2F&` + encode(sorted `k=v` pairs, `Signature` left out).
    static func stringToSign(_ parameters: [String: String]) -> String {
        let canonical = parameters.filter { $0.key != "Signature" }
            .sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
            .map { encode($0.key) + "=" + encode($0.value) }
            .joined(separator: "&")
        return "GET&" + encode("/") + "&" + encode(canonical)
    }

    static func signature(_ parameters: [String: String], secret: String) -> String {
        let mac = hmacSHA1(key: Array((secret + "&").utf8), message: Array(stringToSign(parameters).utf8))
        return Data(mac).base64EncodedString()
    }
}

/// Runs `python3 -c program arguments…` and returns its stdout, trimmed.
func runPython(_ program: String, _ arguments: [String]) throws -> String {
    let process = Process()
    let local = "/usr/bin/python3"
    if FileManager.default.isExecutableFile(atPath: local) {
        process.executableURL = URL(fileURLWithPath: local)
        process.arguments = ["-c", program] + arguments
    } else {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", "-c", program] + arguments
    }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else {
        throw HarnessError(description: "python3 exited \(process.terminationStatus)")
    }
    return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}
