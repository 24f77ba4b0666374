import Aggregator
import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog verify [--repair]`.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every batch, index and group offset; name every problem by file and byte; --repair salvages.",
        discussion: """
            Checks each batch's CRC32C and header, that offsets are contiguous within and across \
            segments, that every column decodes with timestamps inside the batch's bounds, that \
            closed segments' indexes point at batch starts, and that consumer-group offsets lie \
            within the log. Reads only, so it works while sensorlogd runs.

            --repair (server stopped: it takes the data directory's lock) salvages every segment \
            with a damaged batch: each readable batch is kept, each unreadable range becomes \
            removed records (no offset moves, so every group's offsets stay valid), and the \
            original file is quarantined in quarantine/<partition>/ with a report. A torn tail of \
            the active segment is cut. Bad or missing index files are rebuilt. When records were \
            removed or cut, aggregates.sqlite is rebuilt from the repaired log (into a new file, \
            swapped in atomically), so it no longer counts the lost readings and producers' resends \
            of them count exactly once. Then the log is verified again and the state after the \
            repair is reported.

            Exit codes: 0 clean (warnings allowed; with --repair: clean after the repair), 1 \
            problems found (with --repair: problems remain), 66 no log, 75 --repair while \
            sensorlogd runs.

            Examples:
              sensorlog verify --data-dir ./data
              sensorlog verify --data-dir ./data --json
              sensorlog verify --data-dir ./data --repair
            """)

    @OptionGroup var options: CommonOptions
    @Flag(help: "Salvage damaged segments (originals quarantined), cut a torn tail, rebuild indexes and aggregates (server stopped).")
    var repair = false

    /// What one pass of the checks found.
    struct Findings {
        var partitions: [PartitionVerification]
        var problems: [VerifyProblem]
        var errors: [VerifyProblem] { problems.filter { $0.severity == .error } }
    }

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        var lock: DirectoryLock?
        if repair {
            do { lock = try DirectoryLock(dataDirectory: directory.dataDirectory) } catch { Terminal.fail(error.message, code: .locked) }
        }
        defer { lock?.release() }
        let found = try Self.check(directory)
        guard repair else {
            report(found: found, repairs: nil, after: nil)
            if !found.errors.isEmpty { throw ExitCode(.problemsFound) }
            return
        }
        let repairs = Self.repair(directory, found: found, held: lock!)
        let after = try Self.check(directory)
        report(found: found, repairs: repairs, after: after)
        if !after.errors.isEmpty { throw ExitCode(.problemsFound) }
    }

    /// Verifies every partition and every group's offsets.
    static func check(_ directory: LogDirectory) throws -> Findings {
        let progress = Progress(label: "verify")
        var done: Int64 = 0
        let total = AggregateRebuild.logBytes(directory.dataDirectory)
        var partitions: [PartitionVerification] = []
        for p in 0..<directory.partitionCount {
            partitions.append(try directory.verify(partition: p) { bytes in
                done += bytes
                progress.update(done: done, total: total)
            })
        }
        progress.finish()
        var problems = partitions.flatMap(\.problems) + groupProblems(directory, partitions: partitions)
        if AggregateRebuild.isPending(dataDirectory: directory.dataDirectory) {
            problems.append(VerifyProblem(severity: .error, path: AggregateStore.fileName, position: nil,
                message: "a repair changed the log but the aggregates were not rebuilt; run sensorlog verify --repair (server stopped)"))
        }
        return Findings(partitions: partitions, problems: problems)
    }

    /// Group offsets must lie within the log.
    static func groupProblems(_ directory: LogDirectory, partitions: [PartitionVerification]) -> [VerifyProblem] {
        var offsets: [(String, [Int64])] = []
        let storePath = directory.layout.aggregates
        if FileManager.default.fileExists(atPath: storePath), let store = try? AggregateStore(path: storePath, readOnly: true),
           let committed = try? store.offsets(partitions: directory.partitionCount) {
            offsets.append((AggregateStore.group, committed))
        }
        let groups = ConsumerGroups(dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
        for name in groups.list() { if let c = try? groups.committed(name) { offsets.append((name, c)) } }
        var problems: [VerifyProblem] = []
        for (group, committed) in offsets {
            for (p, c) in committed.enumerated() where c > partitions[p].endOffset || (c < partitions[p].startOffset && c != 0) {
                problems.append(VerifyProblem(severity: .error, path: group == AggregateStore.group ? AggregateStore.fileName : directory.layout.group(group).display,
                    position: nil, message: "group \(group) partition \(p) committed offset \(c) outside the log [\(partitions[p].startOffset), \(partitions[p].endOffset)]"))
            }
        }
        return problems
    }

    /// Repairs what `check` found (see `LogRepair`), with a progress bar for the aggregate rebuild.
    static func repair(_ directory: LogDirectory, found: Findings, held lock: DirectoryLock) -> LogRepair.Outcome {
        let progress = Progress(label: "rebuild aggregates")
        defer { progress.finish() }
        do {
            return try LogRepair.run(directory, found: found.partitions, held: lock) { progress.update(done: $0, total: $1) }
        } catch {
            Terminal.fail("nothing repaired: \(error)", code: .ioError)
        }
    }

    func report(found: Findings, repairs: LogRepair.Outcome?, after: Findings?) {
        let final = after ?? found
        if options.json {
            var doc: [String: Any] = [
                "ok": final.errors.isEmpty, "repaired": repairs?.done ?? [],
                "problems": found.problems.map(Self.json),
                "partitions": final.partitions.map { ["partition": $0.partition, "segments": $0.segments, "batches": $0.batches,
                                                      "records": $0.records, "bytes": $0.bytes, "start_offset": $0.startOffset, "end_offset": $0.endOffset] },
            ]
            if let repairs, let after {
                doc["not_repaired"] = repairs.failed
                doc["remaining_problems"] = after.problems.map(Self.json)
            }
            Terminal.printJSON(doc)
            return
        }
        for p in found.problems { print(Self.text(p)) }
        if let repairs, let after {
            for line in repairs.done { print("REPAIRED \(line)") }
            for line in repairs.failed { print("NOT REPAIRED \(line)") }
            print(after.problems.isEmpty ? "after the repair: no problems" : "after the repair:")
            for p in after.problems { print(Self.text(p)) }
        }
        let batches = final.partitions.reduce(0) { $0 + $1.batches }
        let records = final.partitions.reduce(Int64(0)) { $0 + $1.records }
        print("\(final.errors.isEmpty ? "ok" : "FAILED"): \(final.partitions.count) partitions, \(batches) batches, \(records) records, "
              + "\(final.errors.count) errors, \(final.problems.count - final.errors.count) warnings")
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
