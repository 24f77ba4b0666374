#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import SensorLogCore

/// Rewrites runs of adjacent closed segments into fewer, larger segments with large batches,
/// keeping every record's offset. Crash-safe: the new segment is written and fsynced beside the old
/// ones, then a manifest names the swap, then the swap happens; an interrupted swap is rolled
/// forward when the partition is next opened (`Compactor.recover`), an interrupted write is discarded.
public enum Compactor {
    static let manifestName = "compaction.manifest"
    static let pendingSuffix = ".compacting"

    /// What a compaction did (offline, or one background pass).
    public struct Result: Sendable, Equatable {
        public var segmentsBefore = 0
        public var segmentsAfter = 0
        public var bytesBefore: Int64 = 0
        public var bytesAfter: Int64 = 0
        public var records: Int64 = 0
        public var seconds = 0.0
        /// Runs rewritten (each became one segment), and the segments they were.
        public var runs = 0
        public var segmentsRewritten = 0

        public init() {}

        public mutating func add(_ other: Result) {
            segmentsBefore += other.segmentsBefore
            segmentsAfter += other.segmentsAfter
            bytesBefore += other.bytesBefore
            bytesAfter += other.bytesAfter
            records += other.records
            seconds += other.seconds
            runs += other.runs
            segmentsRewritten += other.segmentsRewritten
        }
    }

    /// Compacts every partition of the log in `dataDirectory`, whose lock the caller holds.
    public static func compact(dataDirectory: String, held lock: DirectoryLock, targetSegmentBytes: Int, limits: Limits = Limits(),
                               fileOperations ops: FileOperations = .system, progress: (Int64) -> Void = { _ in }) throws -> Result {
        lock.requireHeld(for: dataDirectory)
        let started = Date()
        let directory = try LogDirectory(dataDirectory: dataDirectory, limits: limits)
        var result = Result()
        for p in 0..<directory.partitionCount {
            let view = directory.views[p]
            try recover(view.paths, ops)
            let bases = try view.segmentBases()
            result.segmentsBefore += bases.count
            let deletes = try deletions(view: view, partition: p)
            let holding = try segmentsHoldingDeleted(view: view, partition: p, bases: bases, deletes: deletes)
            let closed = Array(bases.dropLast())
            var runs: [[Int64]] = []
            var run: [Int64] = []
            var runBytes: Int64 = 0
            for base in closed {
                let size = fileSize(view.segmentPaths(base).log)
                if !run.isEmpty && runBytes + size > Int64(targetSegmentBytes) {
                    runs.append(run)
                    run = []
                    runBytes = 0
                }
                run.append(base)
                runBytes += size
            }
            if !run.isEmpty { runs.append(run) }
            var after = bases.count
            // A run is rewritten to merge it, or to drop a deleted sensor's readings; a run that is
            // one segment with nothing to drop is left alone (rewriting it would gain nothing).
            for run in runs where run.count > 1 || run.contains(where: holding.contains) {
                let end = bases[bases.firstIndex(of: run.last!)! + 1]
                let (before, written, records) = try rewrite(view: view, run: run, end: end, deletes: deletes, limits: limits, ops) { _ in
                    try recover(view.paths, ops)
                }
                result.bytesBefore += before
                result.bytesAfter += written
                result.records += records
                after -= run.count - 1
                progress(before)
            }
            result.segmentsAfter += after
        }
        result.seconds = Date().timeIntervalSince(started)
        return result
    }

    /// Sensors named by deletion records, each with the offset of its latest deletion: readings
    /// of the sensor before that offset are deleted.
    static func deletions(view: ReadOnlyPartition, partition: Int) throws -> [String: Int64] {
        var deletes: [String: Int64] = [:]
        let scan = PartitionReader(view: view, startOffset: 0, partition: partition)
        var batch = DecodedBatch()
        while let first = try scan.next(into: &batch) {
            guard batch.kind == .sensorDeletions else { continue }
            for i in first..<batch.count { deletes[batch.sensorID(at: i)] = max(deletes[batch.sensorID(at: i)] ?? 0, batch.offset(at: i)) }
        }
        return deletes
    }

    /// Base offsets of the segments that still hold a reading `deletes` deletes.
    static func segmentsHoldingDeleted(view: ReadOnlyPartition, partition: Int, bases: [Int64], deletes: [String: Int64]) throws -> Set<Int64> {
        guard !deletes.isEmpty else { return [] }
        var holding: Set<Int64> = []
        let scan = PartitionReader(view: view, startOffset: 0, partition: partition)
        var batch = DecodedBatch()
        while let first = try scan.next(into: &batch) {
            guard batch.kind == .readings else { continue }
            for i in first..<batch.count {
                if let deletedAt = deletes[batch.sensorID(at: i)], batch.offset(at: i) < deletedAt,
                   let base = bases.last(where: { $0 <= batch.offset(at: i) }) {
                    holding.insert(base)
                    break
                }
            }
        }
        return holding
    }

    static func fileSize(_ path: String) -> Int64 {
        var st = stat()
        return stat(path, &st) == 0 ? Int64(st.st_size) : 0
    }

    /// Rewrites segments `run` (offsets up to `end`) into one segment named after the first,
    /// beside them with the pending suffix; once it and the manifest are durable, `install` puts
    /// it in place (given the segment it became).
    /// - Parameter throttle: called with the bytes of each batch read (background compaction paces itself there).
    static func rewrite(view: any PartitionView, run: [Int64], end: Int64, deletes: [String: Int64], limits: Limits,
                        _ ops: FileOperations, throttle: (Int) throws -> Void = { _ in }, install: (ClosedSegment) throws -> Void)
        throws -> (Int64, Int64, Int64)
    {
        let dir = view.directory
        let first = run[0]
        let paths = view.segmentPaths(first)
        let display = paths.display
        let pending = paths.log + pendingSuffix
        let fd = try FileDescriptor.open(pending, flags: O_RDWR | O_CREAT | O_TRUNC, displayPath: display + pendingSuffix)
        let file = SharedFile(fd, displayPath: display)
        var position: Int64 = 0
        var index = SegmentIndex()
        let encoder = BatchEncoder()
        // Records waiting to be written from `cursor` on: readings with the removed records
        // among them, merged across the input's batches up to the batch limit.
        var cursor = first
        var batchBuilt = PendingBatch()
        var records: Int64 = 0
        var before: Int64 = 0
        // The newest reading time of the input batch being read: a batch of removed records only
        // carries it, not the time of the compaction (retention reads segments' newest times).
        var inputMaxTimestamp = Int64.min
        for base in run { before += fileSize(view.segmentPaths(base).log) }

        func write(_ bytes: UnsafeRawBufferPointer, count: Int, maxTimestamp: Int64) throws {
            let mutable = UnsafeMutableRawBufferPointer(mutating: bytes)
            mutable.storeBytes(of: cursor.littleEndian, toByteOffset: 0, as: Int64.self)
            try writeAll(ops, fd: file.fd, bytes, at: position, displayPath: display)
            index.add(relative: UInt32(cursor - first), position: position, length: bytes.count, maxTimestamp: maxTimestamp,
                      interval: limits.indexIntervalBytes)
            position += Int64(bytes.count)
            cursor += Int64(count)
        }
        func flush() throws {
            // The compacted batch is stamped with the time it was written.
            let now = WallClock.nowNanoseconds()
            if batchBuilt.readings.isEmpty {
                guard batchBuilt.offsets > 0 else { return }
                try write(try encoder.encodeRemoved(count: batchBuilt.offsets, appendTime: now, maxBatchBytes: limits.maxBatchBytes),
                          count: batchBuilt.offsets, maxTimestamp: inputMaxTimestamp)
            } else {
                let bytes = try batchBuilt.readings.withUnsafeBufferPointer { b throws(LogError) in
                    try encoder.encode(b, removed: batchBuilt.runs, appendTime: now, maxBatchBytes: limits.maxBatchBytes)
                }
                try write(bytes, count: batchBuilt.offsets, maxTimestamp: batchBuilt.readings.map { $0.timestamp }.max()!)
            }
            batchBuilt = PendingBatch()
        }
        func remove(_ count: Int) throws {
            var left = count
            while left > 0 {
                let n = min(left, limits.maxBatchRecords - batchBuilt.offsets)
                batchBuilt.remove(n)
                left -= n
                if batchBuilt.offsets >= limits.maxBatchRecords { try flush() }
            }
        }

        let reader = PartitionReader(view: view, startOffset: first, partition: 0)
        var batch = DecodedBatch()
        while reader.nextOffset < end, let firstIndex = try reader.next(into: &batch) {
            precondition(firstIndex == 0 && batch.baseOffset == cursor + Int64(batchBuilt.offsets), "offsets must stay contiguous")
            records += Int64(batch.header.recordCount)
            try throttle(batch.header.length)
            inputMaxTimestamp = batch.header.maxTimestamp
            switch batch.kind {
            case .readings:
                var position = batch.baseOffset
                for i in 0..<batch.count {
                    let offset = batch.offset(at: i)
                    try remove(Int(offset - position))
                    if let deletedAt = deletes[batch.sensorID(at: i)], offset < deletedAt {
                        try remove(1)
                    } else {
                        batchBuilt.add(batch.reading(at: i))
                        if batchBuilt.offsets >= limits.maxBatchRecords { try flush() }
                    }
                    position = offset + 1
                }
                try remove(Int(batch.nextOffset - position))
            case .sensorDeletions:
                try flush()
                let ids = (0..<batch.count).map(batch.sensorID(at:))
                try write(try encoder.encodeDeletions(ids, timestamp: batch.header.minTimestamp, appendTime: batch.header.appendTime,
                                                       maxBatchBytes: limits.maxBatchBytes),
                          count: batch.count, maxTimestamp: batch.header.maxTimestamp)
            case .removed, .sparseReadings:
                try remove(Int(batch.nextOffset - batch.baseOffset))
            }
        }
        try flush()
        guard cursor == end else { throw LogError(.invalidLog, "segments \(run) end at \(cursor), expected \(end)", path: display) }
        try ops.fullSync(file.fd, display: display)
        index.seal()
        try Segment.writeIndexes(index, paths: paths, directory: dir, suffix: pendingSuffix, ops)
        try writeManifest(run, directory: dir, display: display, ops)
        try install(ClosedSegment(baseOffset: first, nextOffset: end, size: position, maxTimestamp: index.maxTimestamp))
        return (before, position, records)
    }

    /// The manifest makes a swap a single decision: once it is durable, the swap completes
    /// (`recover` renames the pending files of the segment named first over the run's first).
    static func writeManifest(_ run: [Int64], directory: String, display: String, _ ops: FileOperations) throws(LogError) {
        let manifest = "\(run[0])\n" + run.map(String.init).joined(separator: "\n") + "\n"
        try SegmentFiles.writeAtomically(Array(manifest.utf8), to: directory + "/" + manifestName, directory: directory, displayPath: display, ops)
    }

    /// Moves a compacted segment's pending files over its names: the indexes first, so the log
    /// renamed last marks the new segment complete. Skips what was moved already.
    static func renamePending(_ merged: SegmentPaths, _ ops: FileOperations) throws(LogError) {
        // The sensor index of the segment being replaced would describe other batches; the new
        // one's is written by the next maintenance pass (a reader builds it meanwhile).
        if FileManager.default.fileExists(atPath: merged.log + pendingSuffix) {
            try ops.remove(merged.sensorIndex, display: merged.sensorIndexDisplay)
        }
        for path in [merged.offsetIndex, merged.timeIndex, merged.log] where FileManager.default.fileExists(atPath: path + pendingSuffix) {
            try ops.rename(path + pendingSuffix, to: path, display: merged.display + pendingSuffix)
        }
    }

    /// Whether a compaction's swap is decided (its manifest is on disk) and not finished.
    static func hasManifest(_ partition: PartitionPaths) -> Bool {
        FileManager.default.fileExists(atPath: partition.directory + "/" + manifestName)
    }

    /// Discards a compaction whose swap must not happen (the manifest first: once it is gone,
    /// nothing rolls the swap forward).
    static func discard(_ partition: PartitionPaths, _ ops: FileOperations) throws(LogError) {
        try ops.remove(partition.directory + "/" + manifestName, display: partition.display + "/" + manifestName)
        try ops.syncDirectory(partition.directory, display: partition.display)
        try recover(partition, ops)
    }

    /// Completes or discards an interrupted compaction in a partition directory. Idempotent.
    static func recover(_ partition: PartitionPaths, _ ops: FileOperations) throws(LogError) {
        let dir = partition.directory
        let manifestPath = dir + "/" + manifestName
        let display = partition.display + "/" + manifestName
        if let bytes = SegmentFiles.readWholeFile(manifestPath) {
            let lines = String(decoding: bytes, as: UTF8.self).split(separator: "\n").compactMap { Int64($0) }
            if let first = lines.first {
                try renamePending(partition.segment(first), ops)
                for base in lines.dropFirst().dropFirst() { try partition.segment(base).removeAll(ops) }
                try ops.syncDirectory(dir, display: partition.display)
            }
            try ops.remove(manifestPath, display: display)
            try ops.syncDirectory(dir, display: partition.display)
        }
        // Files of a compaction that never reached its manifest.
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where name.hasSuffix(pendingSuffix) {
            try ops.remove(dir + "/" + name, display: partition.display + "/" + name)
        }
    }
}

/// The batch compaction is building: readings, and the runs of removed records among them.
private struct PendingBatch {
    var readings: [Reading] = []
    var runs: [RemovedRun] = []
    /// Offsets covered so far (readings and removed records).
    var offsets = 0
    /// Readings added since the last removed run.
    private var liveSinceRun = 0

    mutating func add(_ reading: Reading) {
        readings.append(reading)
        offsets += 1
        liveSinceRun += 1
    }

    /// Adds `count` removed records after what is there.
    mutating func remove(_ count: Int) {
        guard count > 0 else { return }
        if liveSinceRun == 0, !runs.isEmpty {
            runs[runs.count - 1].count += count
        } else {
            runs.append(RemovedRun(liveBefore: liveSinceRun, count: count))
        }
        liveSinceRun = 0
        offsets += count
    }
}
