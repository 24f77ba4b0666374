#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SensorLogCore

/// Deleting whole closed segments from the start of partitions, and remembering how far: per
/// partition, the newest timestamp that retention removed (`retention.json`). Readings at or
/// before it are refused as too old, so a late resend can never be counted twice.
public enum Retention {
    public static let floorFile = DataLayout.retentionFloorsName

    /// A segment retention would delete.
    public struct Candidate: Sendable {
        public var partition: Int
        public var baseOffset: Int64
        public var endOffset: Int64
        public var maxTimestamp: Int64
        public var bytes: Int64
        public var path: String
        /// The active segment, all of whose readings are older than the cutoff: it must be
        /// closed (`Log.rollActiveSegments`) before it can go.
        public var isActive = false
    }

    /// Per partition, the newest timestamp retention removed (nil: nothing removed yet).
    /// - Throws: `LogError` (`invalidLog`) when the file exists but cannot be read: silently
    ///   starting without floors would let a late resend of removed readings count twice.
    public static func floors(dataDirectory: String, partitions: Int) throws(LogError) -> [Int64?] {
        struct File: Decodable { var floors: [Int64?] }
        let path = DataLayout(dataDirectory).retentionFloors
        guard FileManager.default.fileExists(atPath: path) else { return [Int64?](repeating: nil, count: partitions) }
        guard let bytes = SegmentFiles.readWholeFile(path),
              let file = try? JSONDecoder().decode(File.self, from: Data(bytes)), file.floors.count == partitions
        else {
            throw LogError(.invalidLog, "\(floorFile) is unreadable or corrupt. It holds the retention floors that make a late resend "
                + "of removed readings count as too_old; restore it from a backup (or delete it, accepting that risk)")
        }
        return file.floors
    }

    /// Replaces `retention.json` atomically and durably.
    package static func writeFloors(_ floors: [Int64?], dataDirectory: String, _ ops: FileOperations) throws(LogError) {
        let text = "{\"floors\":[" + floors.map { $0.map(String.init) ?? "null" }.joined(separator: ",") + "]}\n"
        try SegmentFiles.writeAtomically(Array(text.utf8), to: DataLayout(dataDirectory).retentionFloors, directory: dataDirectory,
                                         displayPath: floorFile, ops)
    }

    /// The segments, oldest first per partition, that are older than `cutoff` (all their readings
    /// before it; the active one too, marked `isActive`) or that must go to bring a partition
    /// under `maxBytes` (closed ones only, as Kafka's retention.bytes).
    public static func plan(_ directory: LogDirectory, olderThan cutoff: Int64?, maxBytes: Int64?) throws(LogError) -> [Candidate] {
        var out: [Candidate] = []
        for p in 0..<directory.partitionCount {
            let view = directory.views[p]
            let bases = try view.segmentBases()
            var segments: [Candidate] = []
            var total: Int64 = 0
            for (i, base) in bases.enumerated() {
                let paths = view.segmentPaths(base)
                let bytes = paths.bytesOnDisk
                total += bytes
                let path = paths.display
                guard i < bases.count - 1 else {
                    // The active segment goes by age only, and only once closed: a log that never
                    // filled a segment (the default is 64 MiB) would otherwise keep everything.
                    if let cutoff, bytes > 0, case let newest = try maxTimestamp(view, base), newest < cutoff {
                        segments.append(Candidate(partition: p, baseOffset: base, endOffset: try directory.endOffset(partition: p),
                                                  maxTimestamp: newest, bytes: bytes, path: path, isActive: true))
                    }
                    break
                }
                segments.append(Candidate(partition: p, baseOffset: base, endOffset: bases[i + 1],
                                          maxTimestamp: try maxTimestamp(view, base), bytes: bytes, path: path))
            }
            for s in segments {
                // Whole segments from the start only; the active one by age only.
                guard isDue(newest: s.maxTimestamp, cutoff: cutoff, total: s.isActive ? nil : total, maxBytes: maxBytes) else { break }
                out.append(s)
                total -= s.bytes
            }
        }
        return out
    }

    /// Whether retention deletes the oldest segment left, whose newest reading is `newest`, while
    /// its partition holds `total` bytes (nil: the size does not count against it).
    static func isDue(newest: Int64, cutoff: Int64?, total: Int64?, maxBytes: Int64?) -> Bool {
        if let cutoff, newest < cutoff { return true }
        if let total, let maxBytes, total > maxBytes { return true }
        return false
    }

    static func maxTimestamp(_ view: ReadOnlyPartition, _ base: Int64) throws(LogError) -> Int64 {
        if let index = view.index(forSegment: base), !index.times.isEmpty { return index.maxTimestamp }
        var batches = try view.openSegment(base).batches(expecting: nil)
        var newest = Int64.min
        while let header = try batches.next() { newest = max(newest, header.maxTimestamp) }
        return newest
    }

    /// Deletes `candidates` (from `plan`). The floors are raised and made durable first, so a crash
    /// never leaves deleted readings without their floor.
    public static func apply(_ candidates: [Candidate], dataDirectory: String, partitions: Int, held lock: DirectoryLock,
                             fileOperations ops: FileOperations = .system) throws(LogError) {
        lock.requireHeld(for: dataDirectory)
        guard !candidates.isEmpty else { return }
        // An active segment goes only once a writer has closed it (`Log.rollActiveSegments`) and
        // `plan` found it closed: unlinking a live one would reset the partition's offsets.
        precondition(!candidates.contains(where: \.isActive), "retention asked to delete an active segment")
        var floors = try floors(dataDirectory: dataDirectory, partitions: partitions)
        for c in candidates { floors[c.partition] = max(floors[c.partition] ?? .min, c.maxTimestamp) }
        try writeFloors(floors, dataDirectory: dataDirectory, ops)
        let layout = DataLayout(dataDirectory)
        for p in Set(candidates.map(\.partition)).sorted() {
            let partition = layout.partition(p)
            for c in candidates where c.partition == p { try partition.segment(c.baseOffset).removeAll(ops) }
            try ops.syncDirectory(partition.directory, display: partition.display)
        }
    }
}
