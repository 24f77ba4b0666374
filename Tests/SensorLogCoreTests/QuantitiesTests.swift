import SensorLogCore
import Testing

/// The duration and size grammars of `--retention-time`, `--retention-bytes` and
/// `--compaction-bytes-per-second`.
@Suite struct QuantitiesTests {
    @Test func durations() {
        #expect(DurationText.parse("30d") == .seconds(30 * 86_400))
        #expect(DurationText.parse("12h") == .seconds(12 * 3600))
        #expect(DurationText.parse("90m") == .seconds(5400))
        #expect(DurationText.parse("0s") == .zero)
        for bad in ["", "d", "30", "30x", "-1d", "1.5h", "30D", "999999999999999999d"] { #expect(DurationText.parse(bad) == nil, "\(bad)") }
    }

    @Test func sizes() {
        #expect(ByteSizeText.parse("10737418240") == 10_737_418_240)
        #expect(ByteSizeText.parse("512M") == 512 << 20)
        #expect(ByteSizeText.parse("10g") == 10 << 30)
        #expect(ByteSizeText.parse("64K") == 64 << 10)
        #expect(ByteSizeText.parse("2T") == 2 << 40)
        for bad in ["", "G", "-1", "-1G", "1.5G", "10X", "99999999999T"] { #expect(ByteSizeText.parse(bad) == nil, "\(bad)") }
    }
}
