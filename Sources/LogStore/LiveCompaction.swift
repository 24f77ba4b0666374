#if canImport(Glibc)
import Glibc
#endif
import SensorLogCore

/// Which closed segments background compaction has found dense already (their batches are
/// large), so a pass does not walk them again. One per log, kept by the caller between passes;
/// used by one pass at a time (the maintenance service runs one job at a time), hence unlocked.
public final class CompactionMemory: @unchecked Sendable {
    var dense: [Int: Set<Int64>] = [:]
    public init() {}
}

extension Log {
    /// One background compaction pass over `partition` while the log serves: runs of adjacent
    /// closed segments written in small batches (fewer than `Limits.compactionBatchRecords`
    /// records a batch on average) are rewritten into large batches, up to
    /// `Limits.segmentBytes` a segment, offsets kept. Each run is written and made durable
    /// beside the old files; the swap is one rename under the partition lock (appends wait for
    /// that only), and readers with an old file open read on from it. Crash-safe as the
    /// offline compaction is: a manifest makes the swap one decision that recovery completes.
    /// A deleted sensor's readings in a run it rewrites go (they are read through the mask,
    /// `DeletionMask`); `dropDeleted` rewrites the segments that still hold some.
    /// - Parameters:
    ///   - merging: merge every run of adjacent closed segments up to this many bytes, not only
    ///     those written in small batches (`sensorlog compact` on a running server).
    ///   - throttle: called with the bytes of each batch read, to pace the pass.
    public func compactOnline(partition p: Int, memory: CompactionMemory, merging targetBytes: Int? = nil,
                              throttle: (Int) throws -> Void = { _ in }) throws -> Compactor.Result {
        let partition = partitions[p]
        var result = Compactor.Result()
        try readyForSwaps(partition)
        let (closed, _) = partition.retentionView()
        result.segmentsBefore = closed.count
        var dense = memory.dense[p] ?? []
        dense.formIntersection(closed.map(\.baseOffset))
        var runs: [[ClosedSegment]] = []
        var run: [ClosedSegment] = []
        var runBytes: Int64 = 0
        let runLimit = Int64(targetBytes ?? configuration.limits.segmentBytes)
        for segment in closed {
            let sparse = try targetBytes != nil || (!dense.contains(segment.baseOffset) && hasSmallBatches(partition, segment))
            if !sparse { dense.insert(segment.baseOffset) }
            if !sparse || runBytes + segment.size > runLimit {
                if !run.isEmpty { runs.append(run) }
                (run, runBytes) = ([], 0)
            }
            if sparse {
                run.append(segment)
                runBytes += segment.size
            }
        }
        if !run.isEmpty { runs.append(run) }
        // Merging, a lone segment gains nothing from a rewrite (`dropDeleted` rewrites those
        // that hold deleted readings).
        for run in runs where targetBytes == nil || run.count > 1 {
            let (before, written, records) = try compact(run, in: partition, throttle: throttle)
            dense.insert(run[0].baseOffset)
            result.bytesBefore += before
            result.bytesAfter += written
            result.records += records
            result.runs += 1
            result.segmentsRewritten += run.count
        }
        memory.dense[p] = dense
        result.segmentsAfter = partition.retentionView().closed.count
        return result
    }

    /// Before any work that swaps segments: refuses a partition whose last swap could not be
    /// completed, and finishes a swap whose clean-up failed last time (removes the old files).
    private func readyForSwaps(_ partition: Partition) throws(LogError) {
        if let halted = partition.haltedMaintenance { throw LogError(.io, halted, path: partition.displayDirectory) }
        if Compactor.hasManifest(partition.paths) { try Compactor.recover(partition.paths, configuration.fileOperations) }
    }

    /// Rewrites every closed segment of `partition` that still holds a reading its deletion mask
    /// hides, so deleted readings are gone from the files (as removed records; offsets kept).
    /// Crash-safe and concurrent with appends and readers as `compactOnline` is.
    public func dropDeleted(partition p: Int, throttle: (Int) throws -> Void = { _ in }) throws -> Compactor.Result {
        let partition = partitions[p]
        var result = Compactor.Result()
        try readyForSwaps(partition)
        let closed = partition.retentionView().closed
        result.segmentsBefore = closed.count
        guard let horizon = partition.deletions.entries.values.max() else { return result }
        for segment in try segmentsHoldingMasked(partition, closed.filter { $0.baseOffset < horizon }) {
            let (before, written, records) = try compact([segment], in: partition, throttle: throttle)
            result.bytesBefore += before
            result.bytesAfter += written
            result.records += records
            result.runs += 1
            result.segmentsRewritten += 1
        }
        result.segmentsAfter = partition.retentionView().closed.count
        return result
    }

    private func segmentsHoldingMasked(_ partition: Partition, _ segments: [ClosedSegment]) throws(LogError) -> [ClosedSegment] {
        var holding: [ClosedSegment] = []
        var batch = DecodedBatch()
        for segment in segments {
            let reader = PartitionReader(view: partition, startOffset: segment.baseOffset, partition: partition.id)
            while reader.nextOffset < segment.nextOffset, try reader.next(into: &batch) != nil {
                if reader.maskedInLastBatch > 0 {
                    holding.append(segment)
                    break
                }
            }
        }
        return holding
    }

    /// Whether a closed segment's batches average fewer records than a compacted one would hold.
    private func hasSmallBatches(_ partition: Partition, _ segment: ClosedSegment) throws(LogError) -> Bool {
        var batches = try partition.openSegment(segment.baseOffset).batches(expecting: segment.baseOffset, size: segment.size)
        var count = 0
        while try batches.next() != nil { count += 1 }
        guard count > 1 else { return false }
        return (segment.nextOffset - segment.baseOffset) / Int64(count) < Int64(configuration.limits.compactionBatchRecords)
    }

    private func compact(_ run: [ClosedSegment], in partition: Partition, throttle: (Int) throws -> Void) throws -> (Int64, Int64, Int64) {
        let bases = run.map(\.baseOffset)
        return try replace(run, in: partition) { install in
            try Compactor.rewrite(view: partition, run: bases, end: run.last!.nextOffset, deletes: [:], limits: configuration.limits,
                                  configuration.fileOperations, throttle: throttle, install: install)
        }
    }

    /// Puts what `write` writes in place of the closed segments `run`: `write` leaves the new
    /// segment's files beside them (pending suffix) with a durable manifest, then calls `install`
    /// with the segment they make, which swaps it in under the partition lock (readers with an
    /// old file open read on) and removes the old files. A failure before the manifest discards
    /// what was written; after it, the swap is decided, and one that could not be done in
    /// memory halts maintenance until recovery completes it at the next start.
    private func replace<T>(_ run: [ClosedSegment], in partition: Partition,
                            write: (_ install: (ClosedSegment) throws -> Void) throws -> T) throws -> T {
        let ops = configuration.fileOperations
        let paths = partition.paths
        let bases = run.map(\.baseOffset)
        let swapped = Flag()
        let install = { (merged: ClosedSegment) throws in
            let done = try partition.swapCompacted(run: bases, merged: merged) { () throws(LogError) in
                try Compactor.renamePending(partition.segmentPaths(merged.baseOffset), ops)
            }
            swapped.isSet = done
            guard done else {
                try Compactor.discard(paths, ops)
                return
            }
            // The old files other than the first (replaced by the rename), then the manifest.
            try Compactor.recover(paths, ops)
        }
        do {
            return try write(install)
        } catch {
            // Stopped or failed before the manifest: its files go.
            guard Compactor.hasManifest(paths) else {
                try? Compactor.recover(paths, ops)
                throw error
            }
            if !swapped.isSet {
                partition.haltMaintenance("a segment swap could not be completed (\(error)); restart sensorlogd to complete it")
            }
            throw error
        }
    }

    /// Salvages a damaged closed segment while the log serves, as `verify --repair` does on a
    /// stopped server: every readable batch kept, a removed-records batch for each unreadable
    /// range (no offset moves), the original copied to `quarantine/<partition>/` with a report;
    /// the salvaged segment is swapped in like a compacted one, crash-safe the same way.
    /// - Returns: what was done, and the first offset whose record is now removed (nil: none).
    public func salvageOnline(partition p: Int, segment base: Int64, report: [VerifyProblem]) throws -> (done: String, firstRemoved: Int64?) {
        let partition = partitions[p]
        try readyForSwaps(partition)
        let paths = partition.segmentPaths(base)
        guard let segment = partition.retentionView().closed.first(where: { $0.baseOffset == base }) else {
            throw LogError(.invalidArgument, "not a closed segment: the active segment is repaired with the server stopped", path: paths.display)
        }
        let ops = configuration.fileOperations
        return try replace([segment], in: partition) { install in
            let pending = paths.log + Compactor.pendingSuffix
            let out = SharedFile(try FileDescriptor.open(pending, flags: O_RDWR | O_CREAT | O_TRUNC, displayPath: paths.display + Compactor.pendingSuffix),
                                 displayPath: paths.display)
            let copy = try LogDirectory.salvageBatches(try partition.openSegment(base), base: base, end: segment.nextOffset, to: out,
                                                       limits: configuration.limits, ops)
            try Segment.writeIndexes(copy.index, paths: paths, directory: partition.directory, suffix: Compactor.pendingSuffix, ops)
            try LogDirectory.quarantine(paths.log, name: paths.logName, in: DataLayout(dataDirectory).quarantine(partition: p), report: report,
                                        removed: copy.removed)
            try Compactor.writeManifest([base], directory: partition.directory, display: paths.display, ops)
            try install(ClosedSegment(baseOffset: base, nextOffset: segment.nextOffset, size: copy.written, maxTimestamp: copy.index.maxTimestamp))
            return ("\(paths.display): \(copy.removed) unreadable record(s) replaced by removed records, \(copy.size - copy.written) bytes dropped; "
                    + "original in quarantine/; swapped in while serving", copy.firstRemoved)
        }
    }

    /// Writes a closed segment's index files anew from its batches (bad or missing ones), while
    /// the log serves: readers load a closed segment's index files when they open it, and one
    /// that finds none scans the segment instead.
    public func rebuildIndexFilesOnline(partition p: Int, segment base: Int64) throws(LogError) {
        let partition = partitions[p]
        guard partition.retentionView().closed.contains(where: { $0.baseOffset == base }) else {
            throw LogError(.invalidArgument, "not a closed segment", path: partition.segmentPaths(base).display)
        }
        try partition.segmentPaths(base).removeIndexes(configuration.fileOperations)
        partition.sensorIndexes.forget(base)  // its .sensors went too: the next maintenance pass writes it
        _ = try PartitionLoader.inspectClosedSegment(partition.paths, base: base, limits: configuration.limits, configuration.fileOperations)
    }
}

/// Whether something happened, set inside a closure.
private final class Flag {
    var isSet = false
}

extension Log {
    /// What a running server repairs of what `verify` found in a partition: every damaged closed
    /// segment salvaged and swapped in (`salvageOnline`), bad or missing index files of closed
    /// segments written anew. A damaged active segment (or a torn tail, which only a stopped
    /// server's files show) is left for `sensorlog verify --repair` on the stopped server, and
    /// listed as not repaired.
    /// - Parameter beforeSalvage: called with a segment's offsets before it is salvaged (the
    ///   caller marks the aggregates stale when its aggregator may have folded them).
    /// - Returns: the repair, and the first offset whose record is now removed (nil: none).
    public func repairOnline(_ found: PartitionVerification, beforeSalvage: (Range<Int64>) throws -> Void)
        -> (repair: PartitionRepair, firstRemoved: Int64?) {
        let p = found.partition
        var repair = PartitionRepair(partition: p)
        var firstRemoved: Int64?
        let damaged = found.damagedSegments
        let indexProblems = Set(found.problems.map(\.path).filter(SegmentPaths.isIndexDisplay))
        let (closed, active) = partitions[p].retentionView()
        var seen: Set<String> = []
        for segment in closed {
            let paths = partitions[p].segmentPaths(segment.baseOffset)
            seen.insert(paths.display)
            do {
                if damaged.contains(paths.display) {
                    try beforeSalvage(segment.baseOffset..<segment.nextOffset)
                    let (done, first) = try salvageOnline(partition: p, segment: segment.baseOffset, report: found.problems.filter { $0.path == paths.display })
                    repair.done.append(done)
                    if let first { firstRemoved = min(firstRemoved ?? first, first) }
                } else if indexProblems.contains(paths.offsetIndexDisplay) {
                    try rebuildIndexFilesOnline(partition: p, segment: segment.baseOffset)
                    repair.done.append("\(paths.offsetIndexDisplay): rebuilt from the segment while serving")
                } else if indexProblems.contains(paths.sensorIndexDisplay) {
                    try partitions[p].rewriteSensorIndex(segment)
                    repair.done.append("\(paths.sensorIndexDisplay): rebuilt from the segment while serving")
                }
            } catch {
                repair.failed.append("\(paths.display): \(error)")
            }
        }
        for display in damaged.subtracting(seen).sorted() {
            let why = display == partitions[p].segmentPaths(active.baseOffset).display
                ? "the active segment is salvaged with the server stopped" : "no longer a segment of the partition (compacted or deleted since)"
            repair.failed.append("\(display): \(why); stop sensorlogd and run sensorlog verify --repair")
        }
        if let cut = found.truncateActiveAt, !damaged.contains(cut.path) {
            repair.failed.append("\(cut.path): a torn tail at byte \(cut.position) is cut with the server stopped (sensorlog verify --repair)")
        }
        return (repair, firstRemoved)
    }
}
