#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SensorLogCore

/// A torn or unsynced tail cut when a segment was opened: where, how much, and why.
typealias Truncation = (position: Int64, bytes: Int64, reason: String)

/// What opening a partition's directory found: its closed segments, its active segment ready
/// for appends (torn tail cut, the commit journal's batches replayed, everything synced), and
/// the report of what recovery did.
struct LoadedPartition {
    var closed: [ClosedSegment]
    var active: ActiveSegment
    var recovery: PartitionRecovery
}

/// Recovery of one partition directory, as a value: `load` does every check and repair the
/// directory needs before a writer may append (docs/storage-format.md, "Recovery").
struct PartitionLoader {
    let id: Int
    let paths: PartitionPaths
    let limits: Limits
    let ops: FileOperations

    func load(replay: [JournalBatch]) throws(LogError) -> LoadedPartition {
        try prepareDirectory()
        let bases = try segmentBases()
        var rebuilt = 0
        var closed: [ClosedSegment] = []
        for (i, base) in bases.dropLast().enumerated() {
            let (segment, didRebuild) = try Self.inspectClosedSegment(paths, base: base, limits: limits, ops)
            if didRebuild { rebuilt += 1 }
            guard segment.nextOffset == bases[i + 1] else {
                throw LogError(.invalidLog, "segment ends at offset \(segment.nextOffset) but the next segment starts at \(bases[i + 1])",
                               path: paths.segment(base).display)
            }
            closed.append(segment)
        }
        let (active, truncation, replayed, gap) = try loadActive(base: bases.last!, replay: replay)
        let bytes = closed.reduce(Int64(0)) { $0 + $1.size } + active.size
        let recovery = PartitionRecovery(
            partition: id, segments: bases.count, startOffset: bases.first!, endOffset: active.nextOffset,
            bytes: bytes, truncatedBytes: truncation?.bytes ?? 0,
            truncatedSegment: truncation.map { _ in active.file.displayPath },
            truncatedAtPosition: truncation?.position, truncationReason: truncation?.reason, rebuiltIndexes: rebuilt,
            journalBatches: replayed, journalGap: gap)
        return LoadedPartition(closed: closed, active: active, recovery: recovery)
    }

    /// Creates the directory when missing, finishes or discards an interrupted compaction, and
    /// removes the leftovers of an interrupted atomic write, before anything is read.
    private func prepareDirectory() throws(LogError) {
        let directory = paths.directory
        if !FileManager.default.fileExists(atPath: directory) {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                throw LogError(.io, "cannot create partition directory", path: paths.display)
            }
            try ops.syncDirectory((directory as NSString).deletingLastPathComponent, display: DataLayout.logName)
        }
        try Compactor.recover(paths, ops)
        if let names = try? FileManager.default.contentsOfDirectory(atPath: directory) {
            for name in names where name.hasSuffix(".tmp") { try ops.remove(directory + "/" + name, display: paths.display + "/" + name) }
        }
    }

    /// The segments' base offsets; a new partition gets its first, empty segment.
    private func segmentBases() throws(LogError) -> [Int64] {
        let bases = try SegmentFiles.list(paths.directory, displayPath: paths.display)
        guard bases.isEmpty else { return bases }
        let first = paths.segment(0)
        try FileDescriptor.open(first.log, flags: O_RDWR | O_CREAT, displayPath: first.display).close()
        try ops.syncDirectory(paths.directory, display: paths.display)
        return [0]
    }

    /// The active segment, checked, with the commit journal's batches replayed into it and
    /// synced. The journal holds whole batches; from its first one in the active segment on, it
    /// is the authority and the segment's bytes are only checked against it.
    private func loadActive(base: Int64, replay: [JournalBatch])
        throws(LogError) -> (ActiveSegment, Truncation?, replayed: Int, gap: String?)
    {
        let replayed = replay.drop { $0.nextOffset <= base }
        var (active, truncation) = try Self.recoverActiveSegment(
            paths, base: base, limits: limits, journalFrom: replayed.first?.baseOffset, ops)
        var count = 0
        var gap: String?
        if !replayed.isEmpty {
            let outcome = try Self.replay(replayed, into: active, limits: limits, fileOperations: ops)
            count = outcome.replayed
            gap = outcome.gap
            if let cut = outcome.truncation { truncation = cut }
        }
        // What a killed process wrote sits in the page cache; make it durable before promising anything.
        if ops.sync(active.file.fd) != 0 {
            throw LogError.system("fsync failed during recovery", errno: errno, path: active.file.displayPath)
        }
        return (active, truncation, count, gap)
    }

    /// Checks a closed segment cheaply through the tail of its indexes (rebuilding them when
    /// missing or inconsistent) and returns what the partition keeps of it.
    static func inspectClosedSegment(_ partition: PartitionPaths, base: Int64, limits: Limits, _ ops: FileOperations)
        throws(LogError) -> (ClosedSegment, rebuilt: Bool)
    {
        let paths = partition.segment(base)
        let segment = try Segment.open(paths, maxBatchBytes: limits.maxBatchBytes)
        let size = try segment.file.size()
        if let offsets = SegmentFiles.readWholeFile(paths.offsetIndex),
           let times = SegmentFiles.readWholeFile(paths.timeIndex),
           offsets.count >= SegmentIndex.offsetEntrySize, offsets.count % SegmentIndex.offsetEntrySize == 0,
           times.count >= SegmentIndex.timeEntrySize, times.count % SegmentIndex.timeEntrySize == 0
        {
            let lastOffset = offsets.withUnsafeBytes { raw in
                (UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: raw.count - 8, as: UInt32.self)),
                 UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: raw.count - 4, as: UInt32.self)))
            }
            let maxTimestamp = times.withUnsafeBytes { raw in
                Int64(littleEndian: raw.loadUnaligned(fromByteOffset: raw.count - 12, as: Int64.self))
            }
            // Walk the headers after the last entry: they must chain exactly to the end of the file.
            let start = Int64(lastOffset.1)
            var batches = try segment.batches(from: start, expecting: base + Int64(lastOffset.0), size: size)
            var walkedMax = Int64.min
            while start < size, let header = try batches.next() { walkedMax = max(walkedMax, header.maxTimestamp) }
            if start < size && batches.stop == .end && walkedMax <= maxTimestamp {
                return (ClosedSegment(baseOffset: base, nextOffset: batches.expected, size: size, maxTimestamp: maxTimestamp), false)
            }
        }
        let (index, next) = try rebuildIndex(segment, size: size, limits: limits)
        try Segment.writeIndexes(index, paths: paths, directory: partition.directory, ops)
        return (ClosedSegment(baseOffset: base, nextOffset: next, size: size, maxTimestamp: index.maxTimestamp), true)
    }

    /// Scans a closed segment with CRCs and builds its index; any bad batch is corruption.
    static func rebuildIndex(_ segment: Segment, size: Int64, limits: Limits) throws(LogError) -> (SegmentIndex, nextOffset: Int64) {
        var index = SegmentIndex()
        var batches = try segment.batches(expecting: segment.base, verifyCRC: true, size: size)
        while let header = try batches.next() {
            index.add(relative: UInt32(header.baseOffset - segment.base), position: batches.batchPosition, length: header.length,
                      maxTimestamp: header.maxTimestamp, interval: limits.indexIntervalBytes)
        }
        switch batches.stop! {
        case .end:
            index.seal()
            return (index, batches.expected)
        case .incomplete(let why), .invalid(let why):
            throw LogError(.corruptBatch, "corrupt batch in a closed segment: \(why)", path: segment.paths.display, position: batches.position)
        }
    }

    /// Checks the active segment batch by batch, truncating a torn tail and refusing corruption
    /// that has valid batches after it.
    /// With `journalFrom`, the scan stops at the batch holding that offset: the commit journal
    /// has everything from there on, and `replay` checks the rest of the file against it.
    static func recoverActiveSegment(_ partition: PartitionPaths, base: Int64, limits: Limits, journalFrom: Int64? = nil,
                                     _ ops: FileOperations)
        throws(LogError) -> (ActiveSegment, truncation: Truncation?)
    {
        let paths = partition.segment(base)
        // The active segment's indexes live in memory; files left by an earlier close are stale.
        try paths.removeIndexes(ops)
        let segment = try Segment.open(paths, writable: true, maxBatchBytes: limits.maxBatchBytes)
        let size = try segment.file.size()
        var batches = try segment.batches(expecting: base, verifyCRC: true, size: size, buffer: GrowableBuffer(capacity: 64 << 10))
        var index = SegmentIndex()
        var firstAppend: Int64?
        // Where the journal takes over: the batch holding `journalFrom`, its position and offset.
        var journalStop: (position: Int64, offset: Int64)?
        while let header = try batches.next() {
            if let journalFrom, header.nextOffset > journalFrom {
                journalStop = (batches.batchPosition, header.baseOffset)
                break
            }
            index.add(relative: UInt32(header.baseOffset - base), position: batches.batchPosition, length: header.length,
                      maxTimestamp: header.maxTimestamp, interval: limits.indexIntervalBytes)
            if firstAppend == nil { firstAppend = header.appendTime }
        }
        let position = journalStop?.position ?? batches.position
        let expected = journalStop?.offset ?? batches.expected
        var truncation: Truncation?
        switch batches.stop {
        case nil, .end?:
            break
        case .incomplete(let why)?:
            truncation = (position, size - position, "incomplete last batch: \(why)")
        case .invalid(let why)?:
            // Damage the journal covers is an unsynced tail, not corruption.
            let covered = journalFrom.map { expected >= $0 } ?? false
            if !covered, let later = try batches.validBatchAfterStop() {
                throw LogError(
                    .corruptBatch,
                    "corrupt batch (\(why)) with a valid batch after it at byte \(later); not a torn write, so nothing was truncated: run `sensorlog verify --repair`",
                    path: paths.display, position: position)
            }
            truncation = (position, size - position, "torn last batch: \(why)")
        }
        if let truncation, journalFrom == nil {
            try ops.truncate(segment.file.fd, to: truncation.position, display: paths.display)
            // Durable through the fdatasync every open ends with (`loadActive`), which fails the
            // open if it fails; a sync here would only fail it earlier.
        }
        return (ActiveSegment(segment: segment, size: position, nextOffset: expected, index: index,
                              firstAppendTime: firstAppend), truncation)
    }

    /// Rewrites the journal's batches into the segment from the scan's stopping point, cutting
    /// the segment at the first batch that differs, and keeps the segment's own valid batches the
    /// journal lacks (synced by `flush` or a roll, or written and never committed). A journal
    /// that resumes past the segment's end is a gap: nothing after it was acknowledged (an
    /// acknowledgement needs every earlier record synced), so it is not replayed.
    static func replay(_ batches: ArraySlice<JournalBatch>, into active: ActiveSegment, limits: Limits, fileOperations: FileOperations)
        throws(LogError) -> (replayed: Int, truncation: Truncation?, gap: String?)
    {
        let file = active.file
        var fileSize = try file.size()
        var position = active.size
        var expected = active.nextOffset
        var truncation: Truncation?
        var replayed = 0
        var gap: String?
        var existing = [UInt8]()
        func add(length: Int, base: Int64, next: Int64, maxTimestamp: Int64, appendTime: Int64) {
            precondition(base == expected && position == active.size, "replay appends where the segment ends")
            active.commit(length: length, end: next, maxTimestamp: maxTimestamp, appendTime: appendTime, indexInterval: limits.indexIntervalBytes)
            position = active.size
            expected = next
        }
        func scanSegment() throws(LogError) {
            guard position < fileSize else { return }
            var batches = try active.segment.batches(from: position, expecting: expected, verifyCRC: true, size: fileSize,
                                              buffer: GrowableBuffer(capacity: 64 << 10))
            while let h = try batches.next() {
                add(length: h.length, base: h.baseOffset, next: h.nextOffset, maxTimestamp: h.maxTimestamp, appendTime: h.appendTime)
            }
        }
        func cut(_ reason: String) throws(LogError) {
            guard position < fileSize else { return }
            if truncation == nil { truncation = (position, fileSize - position, reason) }
            guard fileOperations.truncate(file.fd, position) == 0 else {
                throw LogError.system("cannot truncate the segment for the commit journal's replay", errno: errno, path: file.displayPath)
            }
            fileSize = position
        }
        for batch in batches where batch.nextOffset > expected {
            if batch.baseOffset != expected {
                try scanSegment()
                if batch.nextOffset <= expected { continue }
                guard batch.baseOffset == expected else {
                    gap = "the commit journal resumes at offset \(batch.baseOffset), past the segment's end at \(expected): records from there on were never acknowledged (or the disk lost synced data), and are not replayed"
                    break
                }
            }
            let length = batch.bytes.count
            var same = false
            if position + Int64(length) <= fileSize {
                if existing.count < length { existing = [UInt8](repeating: 0, count: length) }
                var readResult: Result<Int, LogError> = .success(0)
                existing.withUnsafeMutableBytes { raw in
                    do throws(LogError) { readResult = .success(try file.read(into: raw.baseAddress!, count: length, at: position)) } catch { readResult = .failure(error) }
                }
                same = try readResult.get() == length && existing.prefix(length).elementsEqual(batch.bytes)
            }
            if !same { try cut("unsynced tail, rewritten from the commit journal") }
            // Written even when the bytes match: they may be clean pages of the page cache whose
            // write-back failed (Linux reports that once), and the open's fdatasync must cover them.
            var writeFailure: LogError?
            batch.bytes.withUnsafeBytes { raw in
                do throws(LogError) { try writeAll(fileOperations, fd: file.fd, raw, at: position, displayPath: file.displayPath) } catch { writeFailure = error }
            }
            if let writeFailure { throw writeFailure }
            fileSize = max(fileSize, position + Int64(length))
            add(length: length, base: batch.baseOffset, next: batch.nextOffset, maxTimestamp: batch.maxTimestamp, appendTime: batch.appendTime)
            if !same { replayed += 1 }
        }
        try scanSegment()
        try cut("torn tail after the commit journal's batches")
        return (replayed, truncation, gap)
    }
}
