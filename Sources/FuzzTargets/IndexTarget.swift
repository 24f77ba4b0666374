import LogStore

/// The index files of a closed segment: `.index` with `.timeindex` (SegmentIndex.swift) and
/// `.sensors` (SensorIndex.swift).
enum IndexTarget {
    /// The sensor ids the seeds' `.sensors` files index (`FuzzSeeds`), so that lookups hit.
    static let sensorIDs = (0..<16).map { "s\($0)" }

    /// Input: a selector byte, the segment's size and record count (u32 each, little-endian),
    /// then for `.index`/`.timeindex` a u16 length splitting the two files, or for `.sensors` the
    /// file. What a parser accepts must hold entries within the segment (positions below its
    /// size, offsets below its record count, in order), write back byte for byte (`.index`,
    /// `.timeindex`) or to a file that parses to the same entries (`.sensors`), and answer
    /// lookups with entries it holds, in order.
    @Sendable static func run(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 9 else { return }
        func u32(_ at: Int) -> UInt32 { UInt32(input[at]) | UInt32(input[at + 1]) << 8 | UInt32(input[at + 2]) << 16 | UInt32(input[at + 3]) << 24 }
        let size = Int64(u32(1))
        let records = Int64(u32(5))
        let rest = Array(input[9...])
        if input[0] & 1 == 0 {
            guard rest.count >= 2 else { return }
            let split = min(rest.count - 2, Int(rest[0]) | Int(rest[1]) << 8)
            let offsets = Array(rest[2..<(2 + split)])
            let times = Array(rest[(2 + split)...])
            segmentIndex(offsets, times, size: size, records: records)
        } else {
            sensorIndex(rest, size: size, records: records)
        }
    }

    static func segmentIndex(_ offsetFile: [UInt8], _ timeFile: [UInt8], size: Int64, records: Int64) {
        guard let index = SegmentIndex.parse(offsetFile: offsetFile, timeFile: timeFile, segmentSize: size, recordCount: records) else { return }
        check(index.offsetFileBytes() == offsetFile, ".index does not write back byte for byte")
        check(index.timeFileBytes() == timeFile, ".timeindex does not write back byte for byte")
        for (a, b) in zip(index.offsets, index.offsets.dropFirst()) {
            check(a.relativeOffset < b.relativeOffset && a.position < b.position, "offset entries out of order")
        }
        for e in index.offsets { check(Int64(e.position) < size && Int64(e.relativeOffset) < records, "offset entry outside the segment") }
        for e in index.times { check(Int64(e.relativeOffset) < records, "time entry outside the segment") }
        check(index.maxTimestamp == (index.times.last?.timestamp ?? .min), "max timestamp is not the last time entry's")
        // Lookups answer with entries the index holds, at or before what was asked.
        var probes: [UInt32] = [0, 1, UInt32.max]
        probes += index.offsets.flatMap { [$0.relativeOffset, $0.relativeOffset &+ 1, $0.relativeOffset &- 1] }
        for r in probes {
            if let e = index.floor(relative: r) {
                check(e.relativeOffset <= r && index.offsets.contains(e), "floor(\(r)) answers \(e)")
            } else {
                check(index.offsets.first.map { $0.relativeOffset > r } ?? true, "floor(\(r)) finds nothing though an entry is at or before it")
            }
        }
        var stamps: [Int64] = [.min, .max, 0]
        stamps += index.times.flatMap { [$0.timestamp, $0.timestamp &+ 1, $0.timestamp &- 1] }
        for t in stamps {
            if let e = index.scanStart(forTimestamp: t) { check(index.offsets.contains(e), "scanStart(\(t)) answers an entry not in the index") }
        }
    }

    static func sensorIndex(_ file: [UInt8], size: Int64, records: Int64) {
        for expected in [records, nil] as [Int64?] {
            guard let index = SensorIndex.parse(file, segmentSize: size, records: expected) else { continue }
            for (a, b) in zip(index.batches, index.batches.dropFirst()) {
                check(a.position < b.position && a.relativeOffset < b.relativeOffset, ".sensors batches out of order")
            }
            for b in index.batches { check(b.position < size, ".sensors batch past the segment's end") }
            let recordCount = index.coveredRelative
            let again = index.fileBytes(segmentSize: size, records: Int64(recordCount))
            if let expected, Int64(recordCount) == expected {
                guard let reparsed = SensorIndex.parse(again, segmentSize: size, records: expected) else {
                    return check(false, ".sensors written back does not parse")
                }
                check(reparsed.sameEntries(as: index), ".sensors written back parses to other entries")
            }
            for id in sensorIDs {
                guard let refs = index.batches(holding: id) else { continue }
                for ref in refs { check(index.batches.contains(ref), "batches(holding:) answers a batch not in the index") }
                for (a, b) in zip(refs, refs.dropFirst()) { check(a.position < b.position, "batches(holding:) out of file order") }
            }
        }
    }
}
