import FoundationEssentials
import Glibc

/// One set of Alibaba Cloud credentials as an upstream handed them out.
///
/// `expiration` is held in whole seconds (fractions are dropped when parsing), so the
/// instant credfs stops serving a set is exactly the instant its files name.
public struct Credentials: Sendable, Equatable {
    public var accessKeyId: String
    public var accessKeySecret: String
    /// The STS SecurityToken; `nil` for a long-lived AccessKey pair.
    public var securityToken: String?
    /// When the set stops being valid; `nil` when it never expires.
    public var expiration: Date?

    public init(
        accessKeyId: String, accessKeySecret: String, securityToken: String?, expiration: Date?
    ) {
        self.accessKeyId = accessKeyId
        self.accessKeySecret = accessKeySecret
        self.securityToken = securityToken
        self.expiration = expiration.map(Timestamp.wholeSeconds)
    }

    /// Whether the set is still valid at `now` (sets without an expiration always are).
    public func isValid(at now: Date) -> Bool {
        guard let expiration else { return true }
        return now < expiration
    }

    /// The AccessKeyId as Alibaba's documentation masks it: `STS.N*********7`.
    public var maskedAccessKeyId: String { Self.mask(accessKeyId) }

    /// Keeps the first five and the last character, with a fixed run of stars so the
    /// length is not revealed either. Short ids are masked whole.
    public static func mask(_ id: String) -> String {
        let chars = Array(id)
        guard chars.count >= 12 else { return "***" }
        return String(chars.prefix(5)) + "*********" + String(chars.suffix(1))
    }
}

/// A one-line error from a credential source or from validation. Never holds a secret.
public struct CredentialError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The longest message of one source (a chain of sources keeps up to ``Redact/maxLength``).
    public static let maxLength = 300
    public var message: String
    public init(_ message: String, limit: Int = CredentialError.maxLength) {
        // One line, bounded: upstream messages are copied in, and must not flood a log.
        self.message = Self.line(message, limit: limit)
    }
    public var description: String { message }

    /// `text` on one line, cut after `limit` characters (with `…`).
    public static func line(_ text: String, limit: Int) -> String {
        let flat = text.split(whereSeparator: \.isNewline).joined(separator: " ")
        return flat.count > max(limit, 0) ? String(flat.prefix(max(limit, 0))) + "…" : flat
    }
}

/// UTC timestamps in the one format credfs writes: `2024-05-21T10:39:29Z`.
///
/// Every instant credfs accepts from outside lies in ``earliest``...``latest``
/// (1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z, docs/security.md, "Answers"): ``parse(_:)`` and
/// ``epoch(_:)`` return nil for anything else, and ``format(_:)`` is total (it clamps to
/// that range, so no Date, however odd, can trap it).
public enum Timestamp {
    /// 1970-01-01T00:00:00Z, in seconds since the epoch.
    public static let earliest: Double = 0
    /// 9999-12-31T23:59:59Z, in seconds since the epoch.
    public static let latest: Double = 253_402_300_799

    public static func wholeSeconds(_ date: Date) -> Date {
        Date(timeIntervalSince1970: (date.timeIntervalSince1970).rounded(.down))
    }

    /// A helper's epoch number (seconds since 1970, fractions allowed) as a Date: nil when
    /// it is not finite or not between 1970 and 9999.
    public static func epoch(_ seconds: Double) -> Date? {
        guard seconds.isFinite, seconds >= earliest, seconds < latest + 1 else { return nil }
        return Date(timeIntervalSince1970: seconds)
    }

    /// `yyyy-MM-ddTHH:mm:ssZ`, UTC, whole seconds (fractions are dropped). Total: a date
    /// before 1970 (or NaN) renders as 1970-01-01T00:00:00Z, one after 9999 as
    /// 9999-12-31T23:59:59Z; neither ever comes from an accepted answer.
    public static func format(_ date: Date) -> String {
        let raw = date.timeIntervalSince1970.rounded(.down)
        // `!(raw >= earliest)` also catches NaN; the clamp keeps time_t(_:) and the year
        // arithmetic below far from anything that could trap.
        let seconds = !(raw >= earliest) ? earliest : min(raw, latest)
        var t = time_t(seconds)
        var parts = tm()
        guard gmtime_r(&t, &parts) != nil else { return "1970-01-01T00:00:00Z" }
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))Z"
    }

    /// Parses RFC 3339 (`2024-05-21T10:39:29Z`, `…29.123Z`, `…29+08:00`); nil otherwise.
    ///
    /// Only real instants between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59Z (after the
    /// offset is applied) are accepted: no Feb 30, no 24:00, and no leap second (`:60`,
    /// which POSIX time cannot hold and no Alibaba Cloud service sends).
    public static func parse(_ text: String) -> Date? {
        let b = Array(text.utf8)
        // The longest valid form is 25 characters plus the fraction; 64 is plenty and
        // keeps the work bounded whatever an upstream sends.
        guard b.count <= 64 else { return nil }
        var i = 0
        func digits(_ n: Int) -> Int? {
            guard i + n <= b.count else { return nil }
            var v = 0
            for k in 0..<n {
                let c = b[i + k]
                guard c >= 0x30, c <= 0x39 else { return nil }
                v = v * 10 + Int(c - 0x30)
            }
            i += n
            return v
        }
        func expect(_ set: [UInt8]) -> Bool {
            guard i < b.count, set.contains(b[i]) else { return false }
            i += 1
            return true
        }
        guard let year = digits(4), expect([0x2D]), let month = digits(2), expect([0x2D]),
            let day = digits(2), expect([0x54, 0x74, 0x20]),  // T, t or space
            let hour = digits(2), expect([0x3A]), let minute = digits(2), expect([0x3A]),
            let second = digits(2)
        else { return nil }
        var fraction = 0.0
        if i < b.count, b[i] == 0x2E {  // '.'
            i += 1
            var scale = 0.1
            let start = i
            while i < b.count, b[i] >= 0x30, b[i] <= 0x39 {
                fraction += Double(b[i] - 0x30) * scale
                scale /= 10
                i += 1
            }
            guard i > start else { return nil }
        }
        var offset = 0
        if expect([0x5A, 0x7A]) {  // Z or z
            offset = 0
        } else if i < b.count, b[i] == 0x2B || b[i] == 0x2D {
            let sign = b[i] == 0x2D ? -1 : 1
            i += 1
            guard let oh = digits(2), expect([0x3A]), let om = digits(2), oh < 24, om < 60 else {
                return nil
            }
            offset = sign * (oh * 3600 + om * 60)
        } else {
            return nil
        }
        guard i == b.count, (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60,
            second < 60
        else { return nil }
        var parts = tm()
        parts.tm_year = Int32(year - 1900)
        parts.tm_mon = Int32(month - 1)
        parts.tm_mday = Int32(day)
        parts.tm_hour = Int32(hour)
        parts.tm_min = Int32(minute)
        parts.tm_sec = Int32(second)
        let epoch = timegm(&parts)
        // timegm normalises out-of-range days (Feb 30): reject those.
        guard parts.tm_mday == Int32(day), parts.tm_mon == Int32(month - 1)
        else { return nil }
        let instant = Double(epoch) - Double(offset)
        // Whole seconds decide the range: 9999-12-31T23:59:59.9Z is still in it.
        guard instant >= earliest, instant <= latest else { return nil }
        return Date(timeIntervalSince1970: instant + fraction)
    }
}
