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

    /// RFC 3986 percent-encoding: ``STSAnswer/percentEncode(_:)``.
    public static func percentEncoded(_ text: String) -> String { STSAnswer.percentEncode(text) }
}
