import SensorLogCore
import Testing

/// The ends of the Int64 range, where fuzzing (docs/testing.md, "Fuzzing", target `query`) found
/// a trap and a refusal: `hourStart` and the aggregates' `to` bound overflowed in the first and the
/// last hour of the range (an accepted reading stamped there trapped the aggregator's fold; a
/// `to` there trapped the query), and the ISO-8601 text of the lowest second did not parse back.
@Suite struct TimestampTests {
    @Test(arguments: [Int64.min, .min + 1, -1, 0, 1, 1_700_000_000_123_456_789, .max - 1, .max])
    func formatsAndParsesBack(_ t: Int64) {
        #expect(Timestamp.parseISO8601(Timestamp.formatISO8601(t)) == t)
    }

    @Test func theFirstHourOfTheRangeStartsAtItsStart() {
        #expect(Timestamp.hourStart(.min) == .min)
        #expect(Timestamp.hourStart(.min + 1) == .min)
        #expect(Timestamp.hourStart(-1) == -3_600_000_000_000)
        #expect(Timestamp.hourBucket(.min + 1) == Timestamp.formatISO8601(.min))
        #expect(Timestamp.hourBucketBound(.min + 1) == "1677-09-21T01:00:00Z")
    }

    @Test func theBoundAfterTheLastHourIsOpen() {
        #expect(Timestamp.hourBucketBound(.max) == "~")
        #expect(Timestamp.hourBucketBound(0) == "1970-01-01T00:00:00Z")
        #expect(Timestamp.hourBucketBound(1) == "1970-01-01T01:00:00Z")
    }
}
