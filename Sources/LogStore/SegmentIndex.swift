#if canImport(Glibc)
import Glibc
#endif

/// The sparse offset and time indexes of one segment.
///
/// Both get an entry for the segment's first batch and then for the first batch after every
/// `indexIntervalBytes` of log. Offset entry: (relative offset u32, file position u32), 8 bytes.
/// Time entry: (max timestamp of the segment up to and including that batch i64, relative offset
/// u32), 12 bytes; closed segments end with an entry for their overall maximum.
package struct SegmentIndex: Equatable {
    package struct OffsetEntry: Equatable {
        package var relativeOffset: UInt32
        package var position: UInt32
    }

    package struct TimeEntry: Equatable {
        package var timestamp: Int64
        package var relativeOffset: UInt32
    }

    package static let offsetEntrySize = 8
    package static let timeEntrySize = 12

    package var offsets: [OffsetEntry] = []
    package var times: [TimeEntry] = []
    /// Bytes of log appended since the last entry.
    private var bytesSinceEntry = 0
    /// Max timestamp of all batches seen so far.
    package private(set) var maxTimestamp = Int64.min
    package private(set) var lastBatchRelativeOffset: UInt32 = 0

    /// Records a batch appended at `position` (relative offset `relative`).
    package mutating func add(relative: UInt32, position: Int64, length: Int, maxTimestamp batchMax: Int64, interval: Int) {
        maxTimestamp = max(maxTimestamp, batchMax)
        lastBatchRelativeOffset = relative
        if offsets.isEmpty || bytesSinceEntry >= interval {
            offsets.append(OffsetEntry(relativeOffset: relative, position: UInt32(position)))
            if times.last.map({ maxTimestamp > $0.timestamp }) ?? true {
                times.append(TimeEntry(timestamp: maxTimestamp, relativeOffset: relative))
            }
            bytesSinceEntry = 0
        }
        bytesSinceEntry += length
    }

    /// Adds the closing time entry so the last entry carries the segment's maximum timestamp.
    package mutating func seal() {
        if let last = times.last, maxTimestamp > last.timestamp {
            times.append(TimeEntry(timestamp: maxTimestamp, relativeOffset: lastBatchRelativeOffset))
        }
    }

    /// The greatest indexed (relative offset, position) at or before `relative`.
    package func floor(relative: UInt32) -> OffsetEntry? {
        var lo = 0
        var hi = offsets.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if offsets[mid].relativeOffset <= relative { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? nil : offsets[lo - 1]
    }

    /// Where to start scanning for the first batch whose max timestamp is >= `timestamp`: the
    /// last entry whose running maximum is still below it (no batch up to it can qualify).
    package func scanStart(forTimestamp timestamp: Int64) -> OffsetEntry? {
        var lo = 0
        var hi = times.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if times[mid].timestamp < timestamp { lo = mid + 1 } else { hi = mid }
        }
        guard lo > 0 else { return nil }
        return floor(relative: times[lo - 1].relativeOffset)
    }

    // MARK: Files

    package func offsetFileBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(offsets.count * Self.offsetEntrySize)
        for e in offsets {
            withUnsafeBytes(of: e.relativeOffset.littleEndian) { out.append(contentsOf: $0) }
            withUnsafeBytes(of: e.position.littleEndian) { out.append(contentsOf: $0) }
        }
        return out
    }

    package func timeFileBytes() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(times.count * Self.timeEntrySize)
        for e in times {
            withUnsafeBytes(of: e.timestamp.littleEndian) { out.append(contentsOf: $0) }
            withUnsafeBytes(of: e.relativeOffset.littleEndian) { out.append(contentsOf: $0) }
        }
        return out
    }

    /// Parses index files and checks them against the segment they index.
    /// - Returns: nil when either file is malformed or disagrees with the segment; the caller
    ///   then rebuilds from the log.
    package static func parse(offsetFile: [UInt8], timeFile: [UInt8], segmentSize: Int64, recordCount: Int64) -> SegmentIndex? {
        guard offsetFile.count % offsetEntrySize == 0, timeFile.count % timeEntrySize == 0,
              !offsetFile.isEmpty || segmentSize == 0
        else { return nil }
        var index = SegmentIndex()
        offsetFile.withUnsafeBytes { raw in
            for i in stride(from: 0, to: raw.count, by: offsetEntrySize) {
                index.offsets.append(OffsetEntry(
                    relativeOffset: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i, as: UInt32.self)),
                    position: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i + 4, as: UInt32.self))))
            }
        }
        timeFile.withUnsafeBytes { raw in
            for i in stride(from: 0, to: raw.count, by: timeEntrySize) {
                index.times.append(TimeEntry(
                    timestamp: Int64(littleEndian: raw.loadUnaligned(fromByteOffset: i, as: Int64.self)),
                    relativeOffset: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: i + 8, as: UInt32.self))))
            }
        }
        if let first = index.offsets.first, first.relativeOffset != 0 || first.position != 0 { return nil }
        for (a, b) in zip(index.offsets, index.offsets.dropFirst())
        where a.relativeOffset >= b.relativeOffset || a.position >= b.position { return nil }
        if let last = index.offsets.last, Int64(last.position) >= segmentSize || Int64(last.relativeOffset) >= recordCount { return nil }
        for (a, b) in zip(index.times, index.times.dropFirst())
        where a.timestamp > b.timestamp || a.relativeOffset > b.relativeOffset { return nil }
        if let last = index.times.last, Int64(last.relativeOffset) >= recordCount { return nil }
        if !index.offsets.isEmpty && index.times.isEmpty { return nil }
        index.maxTimestamp = index.times.last?.timestamp ?? .min
        index.lastBatchRelativeOffset = index.offsets.last?.relativeOffset ?? 0
        return index
    }
}
