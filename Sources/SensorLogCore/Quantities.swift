/// The duration grammar of flags and requests: a whole number with `d`, `h`, `m` or `s`
/// (`30d`, `12h`, `90m`, `3600s`), as Kafka's and InfluxDB's retention settings read.
public enum DurationText {
    /// Nil for anything else, for a negative number, and for more than about 292 years.
    public static func parse(_ text: String) -> Duration? {
        guard let seconds = wholeNumber(text, units: ["d": 86_400, "h": 3600, "m": 60, "s": 1]),
              seconds <= Int64.max / 1_000_000_000 else { return nil }
        return .seconds(seconds)
    }
}

/// The size grammar of flags and requests: whole bytes, or a whole number with `K`, `M`, `G` or
/// `T` (binary: `1K` is 1024 bytes), e.g. `10737418240`, `512M`, `10G`.
public enum ByteSizeText {
    /// Nil for anything else, a negative number, or an overflow.
    public static func parse(_ text: String) -> Int64? {
        if let n = Int64(text) { return n >= 0 ? n : nil }
        return wholeNumber(text.uppercased(), units: ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40])
    }
}

/// A non-negative whole number followed by one of `units`, times that unit's factor; nil for
/// anything else or an overflow.
private func wholeNumber(_ text: String, units: [Character: Int64]) -> Int64? {
    guard let unit = text.last, let factor = units[unit], let n = Int64(text.dropLast()), n >= 0 else { return nil }
    let (total, overflow) = n.multipliedReportingOverflow(by: factor)
    return overflow ? nil : total
}
