import Synchronization

/// Deleted sensors of one live partition, each with the offset of its latest deletion record:
/// a reading of the sensor below that offset is deleted. Readers of the writer's partition
/// leave such readings out at once (they read as removed records), before any compaction has
/// dropped them from the files; a compaction that reads through the mask writes them as removed
/// records, so they are physically gone after it.
///
/// The mask lives in memory only. Deletion records are the truth: whoever scans the log at
/// start-up (the ingest, which reads every batch to rebuild its dedupe) installs them again.
/// A reader outside the server (the offline tools) does not see the mask, only the files.
public final class DeletionMask: Sendable {
    private let deletedBefore = Mutex<[String: Int64]>([:])
    /// The highest offset of any deletion: a batch at or after it holds nothing deleted, so
    /// readers pay nothing for the mask on the live tail of the log.
    private let horizon = Atomic<Int64>(0)

    init() {}

    /// Masks `sensorID`'s readings below `offset` (its deletion record's offset).
    public func add(_ sensorID: String, before offset: Int64) {
        deletedBefore.withLock { $0[sensorID] = max($0[sensorID] ?? 0, offset) }
        horizon.max(offset, ordering: .releasing)
    }

    /// Per deleted sensor, the offset below which its readings are deleted.
    public var entries: [String: Int64] { deletedBefore.withLock { $0 } }

    /// Removes the deleted readings from a decoded readings batch.
    /// - Returns: how many it removed.
    @discardableResult
    func apply(to batch: inout DecodedBatch) -> Int {
        guard batch.kind == .readings, batch.baseOffset < horizon.load(ordering: .acquiring) else { return 0 }
        let masked = deletedBefore.withLock { deleted -> [Int] in
            var indices: [Int] = []
            for t in batch.sensorIDs.indices {
                guard let before = deleted[batch.sensorIDs[t]], batch.baseOffset < before else { continue }
                for i in 0..<batch.count where batch.recordTuples[i] == t && batch.offset(at: i) < before { indices.append(i) }
            }
            return indices
        }
        guard !masked.isEmpty else { return 0 }
        batch.removeRecords(Set(masked))
        return masked.count
    }
}

extension DecodedBatch {
    /// Leaves records out as a sparse batch does: the offsets of the others are kept.
    mutating func removeRecords(_ removed: Set<Int>) {
        let keep = (0..<count).filter { !removed.contains($0) }
        livePositions = keep.map { Int32(offset(at: $0) - baseOffset) }
        recordTuples = keep.map { recordTuples[$0] }
        timestamps = keep.map { timestamps[$0] }
        if !values.isEmpty { values = keep.map { values[$0] } }
    }
}
