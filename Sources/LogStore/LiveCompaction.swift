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
        if let halted = partition.haltedMaintenance { throw LogError(.io, halted, path: partition.displayDirectory) }
        // A swap done in memory whose clean-up failed last time: finish it (removes the old files).
        if Compactor.hasManifest(partition.paths) { try Compactor.recover(partition.paths, configuration.fileOperations) }
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

    /// Rewrites every closed segment of `partition` that still holds a reading its deletion mask
    /// hides, so deleted readings are gone from the files (as removed records; offsets kept).
    /// Crash-safe and concurrent with appends and readers as `compactOnline` is.
    public func dropDeleted(partition p: Int, throttle: (Int) throws -> Void = { _ in }) throws -> Compactor.Result {
        let partition = partitions[p]
        var result = Compactor.Result()
        if let halted = partition.haltedMaintenance { throw LogError(.io, halted, path: partition.displayDirectory) }
        if Compactor.hasManifest(partition.paths) { try Compactor.recover(partition.paths, configuration.fileOperations) }
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
        let ops = configuration.fileOperations
        let paths = partition.paths
        let bases = run.map(\.baseOffset)
        let swapped = Flag()
        do {
            return try rewrite(run, bases, partition, swapped, throttle)
        } catch {
            // Stopped or failed before the manifest: its files go.
            guard Compactor.hasManifest(paths) else {
                try? Compactor.recover(paths, ops)
                throw error
            }
            // After it the swap is decided. Done in memory: only the clean-up failed, and the next
            // pass finishes it. Not done (a rename failed): the files and the list disagree until
            // recovery completes the swap at the next start, and no maintenance may touch them.
            if !swapped.isSet {
                partition.haltMaintenance("a compaction swap could not be completed (\(error)); restart sensorlogd to complete it")
            }
            throw error
        }
    }

    private func rewrite(_ run: [ClosedSegment], _ bases: [Int64], _ partition: Partition, _ swapped: Flag,
                         _ throttle: (Int) throws -> Void) throws -> (Int64, Int64, Int64) {
        let ops = configuration.fileOperations
        let paths = partition.paths
        return try Compactor.rewrite(view: partition, run: bases, end: run.last!.nextOffset, deletes: [:], limits: configuration.limits,
                                     ops, throttle: throttle) { merged in
            let done = try partition.swapCompacted(run: bases, merged: merged) { () throws(LogError) in
                try Compactor.renamePending(paths.segment(merged.baseOffset), ops)
            }
            swapped.isSet = done
            guard done else {
                try Compactor.discard(paths, ops)
                return
            }
            // The old files other than the first (replaced by the rename), then the manifest.
            try Compactor.recover(paths, ops)
        }
    }
}

/// Whether something happened, set inside a closure.
private final class Flag {
    var isSet = false
}
