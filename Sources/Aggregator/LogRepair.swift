import Foundation
public import LogStore

/// `verify --repair` on a stopped server: repairs every partition, then keeps the invariant
/// "aggregates = the fold of the log" by rebuilding `aggregates.sqlite` when records changed.
/// Otherwise the store would keep counting readings the log lost, while the dedupe (rebuilt
/// from the log) accepts their resends: counted twice.
public enum LogRepair {
    /// What a repair did, and what it could not do (and why), one line per file.
    public struct Outcome: Sendable {
        public var done: [String] = []
        public var failed: [String] = []

        public init() {}
    }

    /// Repairs what `verify` found. The marker goes down before the first segment changes, so
    /// that a repair interrupted before the rebuild still ends in one (at the next repair).
    /// - Parameters:
    ///   - found: every partition's verification, as `LogDirectory.verify(partition:)` returned it.
    ///   - progress: the aggregate rebuild's (bytes read, bytes in the log).
    /// - Throws: only when the marker cannot be written (nothing was changed then).
    public static func run(_ directory: LogDirectory, found: [PartitionVerification], held lock: DirectoryLock,
                           progress: (Int64, Int64) -> Void = { _, _ in }) throws -> Outcome {
        let dataDirectory = directory.dataDirectory
        if foldsGoStale(found, dataDirectory: dataDirectory) { try AggregateRebuild.markPending(dataDirectory: dataDirectory) }
        var outcome = Outcome()
        for partition in found {
            let repair = directory.repair(partition, held: lock)
            outcome.done += repair.done
            outcome.failed += repair.failed
        }
        guard AggregateRebuild.isPending(dataDirectory: dataDirectory) else { return outcome }
        do {
            let result = try AggregateRebuild.rebuildInPlace(dataDirectory: dataDirectory, held: lock, progress: progress)
            outcome.done.append("\(AggregateStore.fileName): rebuilt from the repaired log (\(result.readings) readings, \(result.rows) hourly rows)")
        } catch {
            outcome.failed.append("\(AggregateStore.fileName): rebuild failed, run verify --repair again: \(error)")
        }
        return outcome
    }

    /// Whether the aggregator may have folded records the repair removes. A torn tail alone
    /// (what a crash leaves) usually was never folded, and rebuilding a large log for it would
    /// cost hours for nothing; when the store cannot be read, assume it was.
    static func foldsGoStale(_ found: [PartitionVerification], dataDirectory: String) -> Bool {
        guard found.contains(where: \.repairChangesRecords) else { return false }
        let path = DataLayout(dataDirectory).aggregates
        guard FileManager.default.fileExists(atPath: path) else { return false }
        guard let committed = try? AggregateStore(path: path, readOnly: true).offsets(partitions: found.count) else { return true }
        return found.contains { $0.repairInvalidatesFolds(committed: committed[$0.partition]) }
    }
}
