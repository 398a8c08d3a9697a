import FoundationEssentials
import Synchronization

/// The HTTP `Date` header (RFC 7231 section 7.1.1.1): `Sun, 06 Nov 1994 08:49:37 GMT`.
///
/// Only the preferred IMF-fixdate form is accepted (every server credfs talks to sends
/// it); the obsolete RFC 850 and asctime forms give nil. Pure and total: any input either
/// parses to a real instant or gives nil, never traps.
public enum HTTPDate {
    static let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    /// Parses `Sun, 06 Nov 1994 08:49:37 GMT` (surrounding spaces allowed); nil otherwise.
    public static func parse(_ text: String) -> Date? {
        var bytes = Array(text.utf8)
        while bytes.last == 0x20 || bytes.last == 0x09 { bytes.removeLast() }
        let start = bytes.firstIndex { $0 != 0x20 && $0 != 0x09 } ?? bytes.count
        let b = Array(bytes[start...])
        // "Sun, 06 Nov 1994 08:49:37 GMT" is exactly 29 bytes.
        guard b.count == 29 else { return nil }
        func word(_ at: Int, _ count: Int) -> String { String(decoding: b[at..<(at + count)], as: UTF8.self) }
        func number(_ at: Int, _ count: Int) -> Int? {
            var value = 0
            for byte in b[at..<(at + count)] {
                guard byte >= 0x30, byte <= 0x39 else { return nil }
                value = value * 10 + Int(byte - 0x30)
            }
            return value
        }
        guard days.contains(word(0, 3)), word(3, 2) == ", ", b[7] == 0x20, b[11] == 0x20, b[16] == 0x20,
            b[19] == 0x3A, b[22] == 0x3A, b[25] == 0x20, word(26, 3) == "GMT",
            let day = number(5, 2), let monthIndex = months.firstIndex(of: word(8, 3)),
            let year = number(12, 4), let hour = number(17, 2), let minute = number(20, 2),
            let second = number(23, 2)
        else { return nil }
        let month = monthIndex + 1
        // Leap seconds (60) are folded into the next second, as the rest of credfs does.
        guard year >= 1970, day >= 1, day <= daysIn(month: month, year: year), hour <= 23, minute <= 59,
            second <= 60
        else { return nil }
        let dayCount = daysSinceEpoch(year: year, month: month, day: day)
        let seconds = ((dayCount * 24 + hour) * 60 + minute) * 60 + second
        return Date(timeIntervalSince1970: TimeInterval(seconds))
    }

    /// Formats an instant as IMF-fixdate (for fakes and tests).
    public static func format(_ date: Date) -> String {
        let total = Int(date.timeIntervalSince1970.rounded(.down))
        let dayCount = total >= 0 ? total / 86_400 : (total - 86_399) / 86_400
        let rest = total - dayCount * 86_400
        let (year, month, day) = civil(fromDays: dayCount)
        let weekday = ((dayCount % 7) + 7 + 3) % 7  // 1970-01-01 was a Thursday (index 3)
        func pad(_ v: Int, _ width: Int = 2) -> String {
            let s = String(v)
            return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
        }
        return "\(Self.days[weekday]), \(pad(day)) \(months[month - 1]) \(pad(year, 4)) "
            + "\(pad(rest / 3600)):\(pad(rest / 60 % 60)):\(pad(rest % 60)) GMT"
    }

    static func isLeap(_ year: Int) -> Bool { (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysSinceEpoch(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays days: Int) -> (year: Int, month: Int, day: Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

/// Collects the `Date` headers of the upstream answers one refresh receives, so the
/// refresher can tell how far the local clock is from the cloud's without every provider
/// passing them along. ``HTTPFetcher`` reports into ``current`` (a task-local the
/// refresher sets around each fetch); outside a refresh nothing is recorded.
public final class ServerClockProbe: Sendable {
    @TaskLocal public static var current: ServerClockProbe?

    /// The last answer's `(server Date, local time when it arrived)`.
    private let last = Mutex<(server: Date, local: Date)?>(nil)
    /// The refresher's clock: the local time an answer arrived at.
    let clock: any RefreshClock

    public init(clock: any RefreshClock) { self.clock = clock }

    public func record(serverDate: Date, localNow: Date) {
        last.withLock { $0 = (serverDate, localNow) }
    }

    /// Reports into the probe of the current refresh, if any, at its clock's time.
    public static func report(_ serverDate: Date?) {
        guard let serverDate, let probe = current else { return }
        probe.record(serverDate: serverDate, localNow: probe.clock.now())
    }

    /// Server minus local time of the last answer (positive: the local clock is behind).
    /// A `Date` header truncates to the second, so the server's clock was half a second
    /// past it on average.
    public var skew: TimeInterval? {
        last.withLock { last in last.map { $0.server.timeIntervalSince($0.local) + 0.5 } }
    }
}
