#if canImport(Glibc)
import Glibc
#endif

/// What `verify --repair` did to one partition.
public struct PartitionRepair: Sendable {
    public var partition: Int
    /// One line per file repaired, for the operator.
    public var done: [String] = []
    /// What could not be repaired, and why.
    public var failed: [String] = []
}

extension PartitionVerification {
    /// The segments (display paths) with an error in their batches: a repair salvages them.
    var damagedSegments: Set<String> {
        Set(problems.filter { $0.severity == .error && SegmentPaths.isLogDisplay($0.path) }.map(\.path))
    }

    /// Whether `LogDirectory.repair` would change records of this partition.
    public var repairChangesRecords: Bool { !damagedSegments.isEmpty || truncateActiveAt != nil }

    /// Whether a consumer committed at `committed` may have folded records the repair removes:
    /// always after a salvage; after cutting a torn tail only if it read past the cut, since
    /// what a torn tail holds never decoded (a tail that did decode before it rotted has been).
    public func repairInvalidatesFolds(committed: Int64) -> Bool {
        !damagedSegments.isEmpty || (truncateActiveAt != nil && committed > endOffset)
    }
}

extension LogDirectory {
    /// Repairs what `verify(partition:)` found: salvages every segment with a damaged batch
    /// (`salvage`), cuts a torn tail of the active segment, and rebuilds the index files of
    /// closed segments that are bad or missing. The server must be stopped: the caller holds the
    /// data directory's lock.
    public func repair(_ found: PartitionVerification, held lock: DirectoryLock) -> PartitionRepair {
        lock.requireHeld(for: dataDirectory)
        var repair = PartitionRepair(partition: found.partition)
        let view = views[found.partition]
        let bases: [Int64]
        do { bases = try view.segmentBases() } catch {
            repair.failed.append("\(view.displayDirectory): \(error.message)")
            return repair
        }
        let damaged = found.damagedSegments
        let indexProblems = Set(found.problems.map(\.path).filter(SegmentPaths.isIndexDisplay))
        for (i, base) in bases.enumerated() {
            let paths = view.segmentPaths(base)
            let display = paths.display
            let next = i + 1 < bases.count ? bases[i + 1] : nil
            do {
                if damaged.contains(display) {
                    let report = found.problems.filter { $0.path == display }
                    repair.done.append(try salvage(partition: found.partition, segment: base, end: next, report: report, held: lock))
                } else if next == nil, let cut = found.truncateActiveAt, cut.path == display {
                    try truncateTail(paths, at: cut.position)
                    repair.done.append("\(display): torn tail truncated at byte \(cut.position)")
                } else if next != nil, indexProblems.contains(paths.offsetIndexDisplay) {
                    try rebuildIndexFiles(partition: found.partition, segment: base, held: lock)
                    repair.done.append("\(paths.offsetIndexDisplay): rebuilt from the segment")
                } else if let next, indexProblems.contains(paths.sensorIndexDisplay) {
                    try rebuildSensorIndex(partition: found.partition, segment: base, end: next, held: lock)
                    repair.done.append("\(paths.sensorIndexDisplay): rebuilt from the segment")
                }
            } catch {
                repair.failed.append("\(display): \(error)")
            }
        }
        return repair
    }

    private func truncateTail(_ paths: SegmentPaths, at position: Int64) throws(LogError) {
        let segment = try Segment.open(paths, writable: true, maxBatchBytes: 0)
        try fileOperations.truncate(segment.file.fd, to: position, display: paths.display)
        try fileOperations.fullSync(segment.file.fd, display: paths.display)
    }
}
