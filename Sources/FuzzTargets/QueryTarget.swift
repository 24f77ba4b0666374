import Foundation
import SensorLogCore

import LogStore

/// What the HTTP API reads from a query string and a path, through the functions its routes call
/// (QueryRoutes.swift, GroupRoutes.swift): `from`/`to` (`Timestamp.parse`), the aggregates cursor
/// (an ISO-8601 hour and a sensor id, `|` between), the readings cursor and `limit` (integers),
/// group names (`ConsumerGroups.isValidName`), the percent-decoded sensor id of a path.
enum QueryTarget {
    /// The input as the text of a parameter. Anything parses or is refused without a trap; what
    /// parses is within bounds and round-trips: a timestamp formats to ISO-8601 that parses to it
    /// and its decimal form parses to it; the aggregates cursor the API gives for it parses back;
    /// a valid group name names a file inside `groups/`. The first 8 bytes as a timestamp: its
    /// ISO-8601 text parses back to it, over the whole Int64 range.
    @Sendable static func run(_ input: UnsafeRawBufferPointer) {
        let text = String(decoding: input, as: UTF8.self)
        if let t = Timestamp.parse(text) {
            roundTrip(t)
            check(Timestamp.parse(String(t)) == t, "timestamp \(t) in decimal parses differently")
        }
        if let t = Timestamp.parseISO8601(text) { roundTrip(t) }
        if input.count >= 8 {
            roundTrip(input.loadUnaligned(as: Int64.self))
        }
        // The readings cursor and limit: integers, refused below their bounds.
        if let offset = Int64(text), offset >= 0 { check(Int64(String(offset)) == offset, "cursor does not round-trip") }
        // The aggregates cursor: what the route accepts, it splits back into the hour and the id.
        let parts = text.split(separator: "|", maxSplits: 1).map(String.init)
        if parts.count == 2, let hour = Timestamp.parseISO8601(parts[0]) {
            roundTrip(hour)
            check((parts[0] + "|" + parts[1]).split(separator: "|", maxSplits: 1).map(String.init) == parts, "cursor does not split back")
        }
        if ConsumerGroups.isValidName(text) {
            check(!text.contains("/") && text != "." && text != ".." && !text.isEmpty, "valid group name '\(text)' leaves groups/")
            let path = DataLayout("/d").group(text).path
            check(path == "/d/groups/" + text + ".json", "group \(text) names \(path)")
        }
        _ = text.removingPercentEncoding
    }

    /// `formatISO8601` and `hourBucket` give text that `parseISO8601` reads back exactly, the
    /// aggregates cursor built from a timestamp's hour is one the API accepts, and the bound of
    /// `to` (AggregateStore) is the next hour's bucket, or unbounded only past the Int64 range.
    static func roundTrip(_ t: Int64) {
        let text = Timestamp.formatISO8601(t)
        check(Timestamp.parseISO8601(text) == t, "timestamp \(t) formats to \(text), which parses to \(String(describing: Timestamp.parseISO8601(text)))")
        check(Timestamp.parse(text) == t, "timestamp \(t): parse and parseISO8601 differ on \(text)")
        let hour = Timestamp.hourBucket(t)
        let start = Timestamp.hourStart(t)
        check(start <= t && t - start < 3_600_000_000_000, "hourStart(\(t)) = \(start) is not the start of its hour")
        check(Timestamp.parseISO8601(hour) == start, "hourBucket(\(t)) = \(hour) does not parse to hourStart \(start)")
        // The exclusive bound of `to = t`: the hours starting before t, and no other.
        let bound = Timestamp.hourBucketBound(t)
        if start == t {
            check(bound == hour, "hourBucketBound(\(t)) = \(bound) for a timestamp on the hour")
        } else if bound != "~" {
            // The next hour (after the first, partial one of the range, whose start is Int64.min).
            let next = Timestamp.hourStart(start + 3_600_000_000_000)
            check(next > t && Timestamp.parseISO8601(bound) == next, "hourBucketBound(\(t)) = \(bound) is not the next hour")
            check(hour < bound, "hourBucketBound(\(t)) = \(bound) does not sort after \(hour)")
        } else {
            check(start > Int64.max - 3_600_000_000_000, "hourBucketBound(\(t)) is unbounded though the next hour is in range")
        }
    }
}
