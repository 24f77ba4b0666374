/// The duration grammar of flags and requests: a whole number with `d`, `h`, `m` or `s`
/// (`30d`, `12h`, `90m`, `3600s`), as Kafka's and InfluxDB's retention settings read.
public enum DurationText {
    /// Nil for anything else, for a negative number, and for more than about 292 years.
    public static func parse(_ text: String) -> Duration? {
        guard let unit = text.last, let n = Int64(text.dropLast()), n >= 0 else { return nil }
        let seconds: Int64
        switch unit {
        case "d": seconds = 86_400
        case "h": seconds = 3600
        case "m": seconds = 60
        case "s": seconds = 1
        default: return nil
        }
        let (total, overflow) = n.multipliedReportingOverflow(by: seconds)
        guard !overflow, total <= Int64.max / 1_000_000_000 else { return nil }
        return .seconds(total)
    }
}

/// The size grammar of flags and requests: whole bytes, or a whole number with `K`, `M`, `G` or
/// `T` (binary: `1K` is 1024 bytes), e.g. `10737418240`, `512M`, `10G`.
public enum ByteSizeText {
    /// Nil for anything else, a negative number, or an overflow.
    public static func parse(_ text: String) -> Int64? {
        if let n = Int64(text) { return n >= 0 ? n : nil }
        guard let unit = text.last?.uppercased(), let n = Int64(text.dropLast()), n >= 0 else { return nil }
        let shift: Int64
        switch unit {
        case "K": shift = 10
        case "M": shift = 20
        case "G": shift = 30
        case "T": shift = 40
        default: return nil
        }
        let (total, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
        return overflow ? nil : total
    }
}
