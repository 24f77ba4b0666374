import Foundation
public import LogStore

/// `verify`: every partition's batches and indexes, every group's offsets, a pending rebuild;
/// and its report, the same from the tool on a stopped server and from the server's admin job.
public enum LogCheck {
    /// What one pass of the checks found.
    public struct Findings: Sendable {
        public var partitions: [PartitionVerification]
        public var problems: [VerifyProblem]
        public var errors: [VerifyProblem] { problems.filter { $0.severity == .error } }
    }

    /// Verifies every partition and every group's offsets (reads only: safe beside the server).
    /// - Parameter progress: (bytes verified, bytes in the log).
    public static func check(_ directory: LogDirectory, progress: (Int64, Int64) -> Void = { _, _ in }) throws -> Findings {
        // Read before the partitions: beside a running server their ends only grow meanwhile,
        // while a group read afterwards may have gone past the end a partition had when checked.
        let committed = groupOffsets(directory)
        var done: Int64 = 0
        let total = AggregateRebuild.logBytes(directory.dataDirectory)
        var partitions: [PartitionVerification] = []
        for p in 0..<directory.partitionCount {
            partitions.append(try directory.verify(partition: p) { bytes in
                done += bytes
                progress(done, total)
            })
        }
        var problems = partitions.flatMap(\.problems) + groupProblems(directory, committed, partitions: partitions)
        if AggregateRebuild.isPending(dataDirectory: directory.dataDirectory) {
            problems.append(VerifyProblem(severity: .error, path: AggregateStore.fileName, position: nil,
                message: "a repair changed the log but the aggregates were not rebuilt; run sensorlog verify --repair"))
        }
        return Findings(partitions: partitions, problems: problems)
    }

    /// Every group's committed offsets, the aggregator's first.
    static func groupOffsets(_ directory: LogDirectory) -> [(String, [Int64])] {
        var offsets: [(String, [Int64])] = []
        let storePath = directory.layout.aggregates
        if FileManager.default.fileExists(atPath: storePath), let store = try? AggregateStore(path: storePath, readOnly: true),
           let committed = try? store.offsets(partitions: directory.partitionCount) {
            offsets.append((AggregateStore.group, committed))
        }
        let groups = ConsumerGroups(dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
        for name in groups.list() { if let c = try? groups.committed(name) { offsets.append((name, c)) } }
        return offsets
    }

    /// Group offsets must lie within the log.
    static func groupProblems(_ directory: LogDirectory, _ offsets: [(String, [Int64])], partitions: [PartitionVerification]) -> [VerifyProblem] {
        var problems: [VerifyProblem] = []
        for (group, committed) in offsets {
            for (p, c) in committed.enumerated() where c > partitions[p].endOffset || (c < partitions[p].startOffset && c != 0) {
                problems.append(VerifyProblem(severity: .error, path: group == AggregateStore.group ? AggregateStore.fileName : directory.layout.group(group).display,
                    position: nil, message: "group \(group) partition \(p) committed offset \(c) outside the log [\(partitions[p].startOffset), \(partitions[p].endOffset)]"))
            }
        }
        return problems
    }

    /// The report: a JSON document (`--json`) and the lines of the text form.
    public static func report(found: Findings, repairs: LogRepair.Outcome?, after: Findings?) -> (json: [String: Any], text: [String]) {
        let final = after ?? found
        var doc: [String: Any] = [
            "ok": final.errors.isEmpty, "repaired": repairs?.done ?? [],
            "problems": found.problems.map(json),
            "partitions": final.partitions.map { ["partition": $0.partition, "segments": $0.segments, "batches": $0.batches,
                                                  "records": $0.records, "bytes": $0.bytes, "start_offset": $0.startOffset, "end_offset": $0.endOffset] },
        ]
        var lines = found.problems.map(text)
        if let repairs, let after {
            doc["not_repaired"] = repairs.failed
            doc["remaining_problems"] = after.problems.map(json)
            lines += repairs.done.map { "REPAIRED \($0)" } + repairs.failed.map { "NOT REPAIRED \($0)" }
            lines.append(after.problems.isEmpty ? "after the repair: no problems" : "after the repair:")
            lines += after.problems.map(text)
        }
        let batches = final.partitions.reduce(0) { $0 + $1.batches }
        let records = final.partitions.reduce(Int64(0)) { $0 + $1.records }
        lines.append("\(final.errors.isEmpty ? "ok" : "FAILED"): \(final.partitions.count) partitions, \(batches) batches, \(records) records, "
                     + "\(final.errors.count) errors, \(final.problems.count - final.errors.count) warnings")
        return (doc, lines)
    }

    static func text(_ p: VerifyProblem) -> String {
        "\(p.severity.rawValue.uppercased()) \(p.path)\(p.position.map { " at byte \($0)" } ?? ""): \(p.message)"
    }

    static func json(_ p: VerifyProblem) -> [String: Any] {
        var d: [String: Any] = ["severity": p.severity.rawValue, "path": p.path, "message": p.message]
        if let position = p.position { d["position"] = position }
        return d
    }
}
