/// Taking secrets out of text that came from outside (an upstream `Message`, an STS error,
/// a helper's stderr) before credfs keeps it in `status`, `STATUS=` or the log.
public enum Redact {
    /// The longest text kept: room for every step of the `auto` chain (each step's own
    /// error cut to ``AutoProvider/stepLength``).
    public static let maxLength = 600
    /// Secrets shorter than this are not searched for (they would match ordinary words).
    static let minimumSecret = 6

    /// `text` on one line, bounded, with every one of `secrets` (as given, percent-encoded
    /// once or twice, and a cut-off quote of its first 8 characters) and every URL query
    /// replaced by `(redacted)`.
    public static func text(_ text: String, secrets: [String]) -> String {
        var out = text.split(whereSeparator: { $0.isNewline }).joined(separator: " ")
        let known = Set(secrets.filter { $0.utf8.count >= minimumSecret })
            .sorted { $0.utf8.count > $1.utf8.count }
        for secret in known {
            let once = STSAnswer.percentEncode(secret)
            for form in [secret, once, STSAnswer.percentEncode(once)] {
                out = out.replacing(form, with: "(redacted)")
            }
            if secret.utf8.count > 8 {
                out = out.replacing(String(secret.prefix(8)), with: "(redacted)")
            }
        }
        return CredentialError.line(withoutQueries(out), limit: maxLength)
    }

    /// Every `?query` (up to a space, quote or bracket) becomes `?(redacted)`: a URL query
    /// may carry a signature, a key id or a token.
    static func withoutQueries(_ text: String) -> String {
        var out = ""
        var skipping = false
        for character in text {
            if skipping {
                if character == " " || character == "\"" || character == "'" || character == ")"
                    || character == ">" || character == "]"
                {
                    skipping = false
                    out.append(character)
                }
                continue
            }
            out.append(character)
            if character == "?" {
                out += "(redacted)"
                skipping = true
            }
        }
        return out
    }
}

extension Credentials {
    /// What must never appear in kept text: the secret, the token and the unmasked key id.
    public var secrets: [String] { [accessKeySecret, securityToken ?? "", accessKeyId] }
}
