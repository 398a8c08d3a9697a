/// Small text helpers that full Foundation used to provide (credfs's modules import only
/// FoundationEssentials).
public enum Text {
    /// `text` without leading and trailing whitespace and newlines.
    public static func trimmed<S: StringProtocol>(_ text: S) -> String {
        guard let first = text.firstIndex(where: { !$0.isWhitespace }),
            let last = text.lastIndex(where: { !$0.isWhitespace })
        else { return "" }
        return String(text[first...last])
    }

    /// `%XX` with upper-case hex digits.
    public static func percentByte(_ byte: UInt8) -> String {
        let digits = Array("0123456789ABCDEF")
        return "%" + String(digits[Int(byte >> 4)]) + String(digits[Int(byte & 0x0F)])
    }

    /// RFC 3986 percent-encoding: unreserved characters (`A-Z a-z 0-9 - _ . ~`) stay,
    /// every other byte of the UTF-8 is `%XX`.
    public static func percentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"),
                UInt8(ascii: "."), UInt8(ascii: "~"):
                out.unicodeScalars.append(UnicodeScalar(byte))
            default:
                out += percentByte(byte)
            }
        }
        return out
    }
}
