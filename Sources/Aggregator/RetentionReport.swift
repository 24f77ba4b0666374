import Foundation
public import LogStore
import SensorLogCore

/// What `retention` checks before it deletes and what it reports: the same from the tool on a
/// stopped server and from the server's admin job.
public enum RetentionReport {
    /// Why each candidate may not go yet: a group (the aggregator included) has not read it.
    public static func unread(_ candidates: [Retention.Candidate], dataDirectory: String, partitions: Int) throws -> [String] {
        var groups: [(String, [Int64])] = []
        let storePath = DataLayout(dataDirectory).aggregates
        if FileManager.default.fileExists(atPath: storePath) {
            groups.append((AggregateStore.group, try AggregateStore(path: storePath, readOnly: true).offsets(partitions: partitions)))
        }
        let files = ConsumerGroups(dataDirectory: dataDirectory, partitions: partitions)
        for name in files.list() { if let c = try files.committed(name) { groups.append((name, c)) } }
        var blocked: [String] = []
        for c in candidates {
            for (name, committed) in groups where committed[c.partition] < c.endOffset {
                blocked.append("\(c.path): group \(name) has read partition \(c.partition) only up to offset \(committed[c.partition]), the segment ends at \(c.endOffset)")
            }
        }
        return blocked
    }

    /// The report: a JSON document (`--json`) and the lines of the text form.
    public static func report(_ candidates: [Retention.Candidate], refused: [String], deleted: Bool, dryRun: Bool) -> (json: [String: Any], text: [String]) {
        let bytes = candidates.reduce(Int64(0)) { $0 + $1.bytes }
        let segments: [[String: Any]] = candidates.map {
            ["path": $0.path, "partition": $0.partition, "base_offset": $0.baseOffset, "end_offset": $0.endOffset,
             "max_timestamp": $0.maxTimestamp, "bytes": $0.bytes, "active": $0.isActive]
        }
        var lines = candidates.map { c in
            "\(deleted ? "delete" : "would delete")\(c.isActive ? " (closing it first: the active segment)" : "") \(c.path) (offsets \(c.baseOffset)..<\(c.endOffset), newest reading \(Timestamp.formatISO8601(c.maxTimestamp)), \(c.bytes) bytes)"
        }
        if candidates.isEmpty {
            lines.append("nothing to delete")
        } else if deleted {
            lines.append("deleted \(candidates.count) segment(s), \(bytes) bytes")
        } else if dryRun {
            lines.append("dry run: nothing deleted")
        }
        return (["dry_run": dryRun, "deleted": deleted, "segments": segments, "bytes": bytes, "refused": refused], lines)
    }
}
