#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Time as behaviour reads it: the wall clock (append times, receive times, segment age, the
/// `too_old` floor) and a monotonic clock (intervals: commit spacing, rate limits). Injected
/// wherever time decides behaviour, so tests move time instead of sleeping.
public protocol TimeSource: Sendable {
    /// Nanoseconds since the Unix epoch, UTC.
    var wallNanoseconds: Int64 { get }
    /// Nanoseconds since an arbitrary start; never goes back.
    var monotonicNanoseconds: Int64 { get }
}

/// The system's clocks.
public struct SystemTime: TimeSource {
    public init() {}

    public var wallNanoseconds: Int64 { WallClock.nowNanoseconds() }

    public var monotonicNanoseconds: Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}

/// The one wall clock: nanoseconds since the Unix epoch, UTC. Append times, receive times and
/// segment ages all come from here, through `SystemTime` where a test may replace it.
public enum WallClock {
    public static func nowNanoseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }
}
