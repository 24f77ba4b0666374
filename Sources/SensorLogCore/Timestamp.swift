/// Timestamps at the edges: ISO-8601 text and epoch numbers in, ISO-8601 out. Inside, a timestamp
/// is always `Int64` nanoseconds since the Unix epoch, UTC.
public enum Timestamp {
    /// Parses ISO-8601 / RFC 3339 date-times: `YYYY-MM-DDTHH:MM:SS`, optional fraction of 1 to 9
    /// digits, then `Z` or an offset `±HH:MM` (`±HHMM`, `±HH` too). `t`, `z` and a space for `T`
    /// are accepted.
    /// - Returns: nanoseconds since the epoch, or nil when the text is not such a date-time or
    ///   falls outside what `Int64` nanoseconds can hold (1677-09-21 to 2262-04-11).
    public static func parseISO8601(_ text: String) -> Int64? {
        var copy = text
        return copy.withUTF8 { parseISO8601(UnsafeRawBufferPointer($0)) }
    }

    /// See `parseISO8601(_:)`.
    public static func parseISO8601(_ s: UnsafeRawBufferPointer) -> Int64? {
        var i = 0
        func digits(_ n: Int) -> Int64? {
            guard i + n <= s.count else { return nil }
            var v: Int64 = 0
            for k in 0..<n {
                let c = s[i + k]
                guard c >= 48 && c <= 57 else { return nil }
                v = v * 10 + Int64(c - 48)
            }
            i += n
            return v
        }
        func expect(_ c: UInt8) -> Bool {
            guard i < s.count, s[i] == c else { return false }
            i += 1
            return true
        }
        guard let year = digits(4), expect(UInt8(ascii: "-")), let month = digits(2), expect(UInt8(ascii: "-")),
              let day = digits(2)
        else { return nil }
        guard i < s.count, s[i] == UInt8(ascii: "T") || s[i] == UInt8(ascii: "t") || s[i] == UInt8(ascii: " ") else { return nil }
        i += 1
        guard let hour = digits(2), expect(UInt8(ascii: ":")), let minute = digits(2), expect(UInt8(ascii: ":")),
              let second = digits(2)
        else { return nil }
        var nanos: Int64 = 0
        if i < s.count, s[i] == UInt8(ascii: ".") || s[i] == UInt8(ascii: ",") {
            i += 1
            var n = 0
            while i < s.count, s[i] >= 48, s[i] <= 57 {
                guard n < 9 else { return nil }
                nanos = nanos * 10 + Int64(s[i] - 48)
                n += 1
                i += 1
            }
            guard n > 0 else { return nil }
            for _ in n..<9 { nanos *= 10 }
        }
        var offsetSeconds: Int64 = 0
        guard i < s.count else { return nil }  // a zone is required: no local times
        if s[i] == UInt8(ascii: "Z") || s[i] == UInt8(ascii: "z") {
            i += 1
        } else if s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") {
            let sign: Int64 = s[i] == UInt8(ascii: "-") ? -1 : 1
            i += 1
            guard let oh = digits(2) else { return nil }
            var om: Int64 = 0
            if i < s.count {
                _ = expect(UInt8(ascii: ":"))
                guard let m = digits(2) else { return nil }
                om = m
            }
            guard oh <= 23, om <= 59 else { return nil }
            offsetSeconds = sign * (oh * 3600 + om * 60)
        } else {
            return nil
        }
        guard i == s.count else { return nil }
        guard (1...12).contains(month), day >= 1, day <= daysInMonth(year: year, month: month),
              hour <= 23, minute <= 59, second <= 59
        else { return nil }
        let days = daysFromCivil(year: year, month: month, day: day)
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
        // Before 1970 with a fraction, as (seconds + 1) minus the rest: the lowest second of the
        // range (1677-09-21T00:12:43.145224192Z) overflows as seconds * 10^9 though it is in range.
        let (whole, fraction) = seconds < 0 && nanos > 0 ? (seconds + 1, nanos - 1_000_000_000) : (seconds, nanos)
        let (scaled, overflow1) = whole.multipliedReportingOverflow(by: 1_000_000_000)
        guard !overflow1 else { return nil }
        let (total, overflow2) = scaled.addingReportingOverflow(fraction)
        return overflow2 ? nil : total
    }

    /// A timestamp given as ISO-8601 or as an integer: nanoseconds since the epoch (what query
    /// parameters and the line protocol use).
    public static func parse(_ text: String) -> Int64? {
        if let first = text.utf8.first, first == UInt8(ascii: "-") || (first >= 48 && first <= 57),
           text.utf8.dropFirst().allSatisfy({ $0 >= 48 && $0 <= 57 })
        {
            return Int64(text)
        }
        return parseISO8601(text)
    }

    /// `2026-11-24T10:00:00Z`, or with nine fractional digits (`…00.123456789Z`) when the
    /// timestamp is not a whole second.
    public static func formatISO8601(_ nanoseconds: Int64) -> String {
        var seconds = nanoseconds / 1_000_000_000
        var nanos = nanoseconds % 1_000_000_000
        if nanos < 0 {
            nanos += 1_000_000_000
            seconds -= 1
        }
        var days = seconds / 86_400
        var rest = seconds % 86_400
        if rest < 0 {
            rest += 86_400
            days -= 1
        }
        let (y, m, d) = civilFromDays(days)
        // Written digit by digit into one buffer: the aggregator formats several per row.
        var out = [UInt8](repeating: 0, count: 30)
        var n = 0
        func put(_ v: Int64, _ width: Int) {
            var v = v
            var i = width - 1
            while i >= 0 {
                out[n + i] = UInt8(48 + v % 10)
                v /= 10
                i -= 1
            }
            n += width
        }
        func char(_ c: UInt8) {
            out[n] = c
            n += 1
        }
        guard (0...9999).contains(y) else { return String(y) + "-" + String(m) + "-" + String(d) + "T" + String(rest) + "s" + String(nanos) + "nsZ" }
        put(y, 4); char(45); put(m, 2); char(45); put(d, 2); char(84)
        put(rest / 3600, 2); char(58); put(rest / 60 % 60, 2); char(58); put(rest % 60, 2)
        if nanos != 0 {
            char(46)
            put(nanos, 9)
        }
        char(90)
        return String(decoding: out[0..<n], as: UTF8.self)
    }

    /// The start of the UTC hour holding `nanoseconds`, as `YYYY-MM-DDTHH:00:00Z`.
    public static func hourBucket(_ nanoseconds: Int64) -> String {
        formatISO8601(hourStart(nanoseconds))
    }

    /// The start of the UTC hour holding `nanoseconds`, in nanoseconds. The first hour of the
    /// Int64 range starts before it (at 1677-09-21T00:00:00Z): `Int64.min` stands for its start.
    public static func hourStart(_ nanoseconds: Int64) -> Int64 {
        let hour: Int64 = 3_600_000_000_000
        var start = nanoseconds / hour * hour
        if nanoseconds < 0 && start != nanoseconds {
            let (earlier, overflow) = start.subtractingReportingOverflow(hour)
            start = overflow ? .min : earlier
        }
        return start
    }

    /// The exclusive upper bound, as a bucket string, of the hours that start before `to`: `~`
    /// (after every bucket) when the next hour starts past the Int64 range.
    public static func hourBucketBound(_ to: Int64) -> String {
        let start = hourStart(to)
        guard start != to else { return hourBucket(start) }
        let (next, overflow) = start.addingReportingOverflow(3_600_000_000_000)
        return overflow ? "~" : hourBucket(next)
    }

    private static func pad(_ v: Int64, _ width: Int) -> String {
        let s = String(v)
        return s.count >= width ? s : String(repeating: "0", count: width - s.count) + s
    }

    static func isLeap(_ y: Int64) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    static func daysInMonth(year: Int64, month: Int64) -> Int64 {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int64, month: Int64, day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civilFromDays(_ z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }
}
