#if canImport(Glibc)
import Glibc
#endif
import SensorLogCore

/// Streams the batches of one partition from an offset, a batch at a time, with memory bounded
/// by the largest batch. Every batch's CRC is checked before it is decoded.
///
/// A reader works on the writer's partition in this process (it stops at the visible end) or on
/// files alone from another process (it stops at the last complete batch).
public final class PartitionReader {
    let view: any PartitionView
    /// The offset the caller asked for; records below it in the first batch are skipped.
    public private(set) var nextOffset: Int64
    private var segment: Segment?
    private var position: Int64 = 0
    /// Base offset the batch at `position` must carry.
    private var expectedBase: Int64 = 0
    private let buffer = GrowableBuffer(capacity: 64 << 10)
    private let decoder = BatchDecoder()
    private var scratch = DecodedBatch()
    /// What a sensor scan through the indexes reads batches with.
    let indexedBuffer = GrowableBuffer(capacity: 64 << 10)
    let indexedDecoder = BatchDecoder()
    /// Whether the last sensor scan read through the sensor indexes (tests, benchmarks).
    public internal(set) var lastScanUsedIndex = false

    /// The partition read.
    public let partitionID: Int
    /// Bytes of batches returned so far (progress reporting).
    public private(set) var bytesRead: Int64 = 0
    /// Readings of deleted sensors the deletion mask left out of the last batch.
    public private(set) var maskedInLastBatch = 0

    init(view: any PartitionView, startOffset: Int64, partition: Int) {
        self.view = view
        self.nextOffset = startOffset
        self.partitionID = partition
    }

    /// The next batch, or nil when the reader has caught up. Records before the requested offset
    /// are excluded through `firstIndex`.
    /// - Returns: the batch and the index of its first record at or after the reader's offset.
    public func next() throws(LogError) -> (batch: DecodedBatch, firstIndex: Int)? {
        var batch = DecodedBatch()
        guard let first = try next(into: &batch) else { return nil }
        return (batch, first)
    }

    /// Decodes the next batch into `batch`, reusing its storage (the allocation-free form).
    /// - Returns: the index of the first record at or after the reader's offset, or nil when caught up.
    public func next(into batch: inout DecodedBatch) throws(LogError) -> Int? {
        guard let header = try nextVerifiedBatch() else { return nil }
        do {
            try decoder.decode(buffer.bytes, header: header, into: &batch)
        } catch {
            throw LogError(.corruptBatch, "batch does not decode: \(error.message)", path: segment?.paths.display,
                           position: position - Int64(header.length))
        }
        maskedInLastBatch = view.deletionMask?.apply(to: &batch) ?? 0
        let first = batch.firstIndex(atOrAfter: nextOffset)
        nextOffset = header.nextOffset
        return first
    }

    /// The next batch's header and raw bytes (CRC checked), without decoding: for tools that
    /// copy or inspect batches.
    public func nextRaw() throws(LogError) -> (header: BatchHeader, bytes: UnsafeRawBufferPointer, segment: String, position: Int64)? {
        guard let header = try nextVerifiedBatch() else { return nil }
        nextOffset = header.nextOffset
        return (header, buffer.bytes, segment!.paths.display, position - Int64(header.length))
    }

    /// Goes on from `offset` (the next read seeks to it afresh).
    func reposition(to offset: Int64) {
        nextOffset = offset
        segment = nil
    }

    private func nextVerifiedBatch() throws(LogError) -> BatchHeader? {
        let end = view.visibleEnd()
        if let end, nextOffset >= end { return nil }
        if segment == nil { guard try seek() else { return nil } }
        while true {
            // A new walk each time: the file may have grown since the last batch.
            var batches = try segment!.batches(from: position, expecting: expectedBase, verifyCRC: true, buffer: buffer)
            if let header = try batches.next() {
                if let end, header.baseOffset >= end { return nil }
                position += Int64(header.length)
                expectedBase = header.nextOffset
                if header.nextOffset <= nextOffset { continue }  // still before the requested offset
                bytesRead += Int64(header.length)
                return header
            }
            let display = segment!.paths.display
            switch batches.stop! {
            case .end, .incomplete:
                let bases = try view.segmentBases()
                guard let later = bases.first(where: { $0 > segment!.base }) else { return nil }
                if case .incomplete(let why) = batches.stop! {
                    throw LogError(.corruptBatch, "closed segment ends inside a batch: \(why)", path: display, position: position)
                }
                guard later == expectedBase else {
                    // A compaction swapped this segment (merged into one that starts at or before
                    // it): the offsets go on in the segment that now holds them.
                    guard try swappedSince(opened: bases) else {
                        throw LogError(.invalidLog, "segment ends at offset \(expectedBase) but the next one starts at \(later)", path: display)
                    }
                    guard try reseek() else { return nil }
                    continue
                }
                do {
                    try open(base: later)
                    position = 0
                } catch where error.errno == ENOENT {
                    // Retention or a compaction removed it meanwhile: read on from where its offsets are now.
                    guard try reseek() else { return nil }
                }
            case .invalid(let why):
                // From another process, the last segment's tail may be a write in progress.
                let isLast = try view.segmentBases().last == segment!.base
                if end == nil && isLast, try batches.validBatchAfterStop() == nil { return nil }
                throw LogError(.corruptBatch, "corrupt batch: \(why)", path: display, position: position)
            }
        }
    }

    private func open(base: Int64) throws(LogError) {
        segment = try view.openSegment(base)
        expectedBase = base
    }

    /// Whether the segment being read was swapped out by a compaction since it was opened: the
    /// segment now holding the offset after it is another one, or a new file under its name.
    private func swappedSince(opened bases: [Int64]) throws(LogError) -> Bool {
        guard let current = segment else { return false }
        // None: retention deleted the offsets after it too (a reader it does not wait for).
        guard let holder = bases.last(where: { $0 <= expectedBase }) else { return true }
        if holder != current.base { return true }
        var open = stat(), now = stat()
        guard fstat(current.file.fd, &open) == 0 else { return false }
        return stat(current.paths.log, &now) != 0 || now.st_ino != open.st_ino
    }

    /// Seeks again to the next offset to read, after the segments changed under the reader.
    private func reseek() throws(LogError) -> Bool {
        nextOffset = max(nextOffset, expectedBase)
        segment = nil
        return try seek()
    }

    /// Positions on the batch holding `nextOffset`, through the segment's sparse index.
    /// - Returns: false when the log is empty.
    private func seek() throws(LogError) -> Bool {
        var bases = try view.segmentBases()
        while true {
            guard let firstBase = bases.first else { return false }
            if nextOffset < firstBase { nextOffset = firstBase }  // retention removed the start
            let base = bases.last(where: { $0 <= nextOffset })!
            do {
                let (opened, index) = try view.openIndexed(base)
                segment = opened
                position = 0
                expectedBase = base
                if let entry = index?.floor(relative: UInt32(clamping: nextOffset - base)) {
                    position = Int64(entry.position)
                    expectedBase = base + Int64(entry.relativeOffset)
                }
                return true
            } catch where error.errno == ENOENT {
                // Retention or a compaction may remove the segment between the listing and the
                // open: list again, and give up only if it is still listed.
                let now = try view.segmentBases()
                guard !now.contains(base) || now.first != firstBase else { throw error }
                bases = now
            }
        }
    }

    /// Seeks to the first batch whose max timestamp is at or after `timestamp`.
    /// - Returns: that batch's base offset, or the end of the log when no batch qualifies.
    static func offset(atOrAfter timestamp: Int64, in view: any PartitionView) throws(LogError) -> Int64 {
        var attempts = 0
        while true {
            do {
                return try offsetOnce(atOrAfter: timestamp, in: view)
            } catch where error.errno == ENOENT && attempts < 3 {
                attempts += 1  // retention deleted a segment between the listing and the open
            }
        }
    }

    private static func offsetOnce(atOrAfter timestamp: Int64, in view: any PartitionView) throws(LogError) -> Int64 {
        let bases = try view.segmentBases()
        let end = view.visibleEnd()
        for (i, base) in bases.enumerated() {
            let isLast = i == bases.count - 1
            if !isLast, let max = view.maxTimestamp(ofSegment: base), max < timestamp { continue }
            var start: Int64 = 0
            var expected = base
            let (segment, index) = try view.openIndexed(base)
            if let entry = index?.scanStart(forTimestamp: timestamp) {
                start = Int64(entry.position)
                expected = base + Int64(entry.relativeOffset)
            }
            var batches = try segment.batches(from: start, expecting: expected)
            while let header = try batches.next() {
                if let end, header.baseOffset >= end { return end }
                if header.maxTimestamp >= timestamp { return header.baseOffset }
                expected = header.nextOffset
            }
            if isLast { return end ?? expected }
        }
        return end ?? 0
    }
}
