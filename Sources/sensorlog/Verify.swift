import Aggregator
import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog verify [--repair]`.
struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every batch, index and group offset; name every problem by file and byte.",
        discussion: """
            Checks each batch's CRC32C and header, that offsets are contiguous within and across \
            segments, that every column decodes with timestamps inside the batch's bounds, that \
            closed segments' indexes point at batch starts, and that consumer-group offsets lie \
            within the log. Reads only, so it works while sensorlogd runs.

            --repair (server stopped: it takes the data directory's lock) truncates a corrupt or \
            torn tail of the active segment and removes bad index files (rebuilt at the next start). \
            Exit codes: 0 clean (warnings allowed), 1 problems found, 66 no log, 75 --repair while \
            sensorlogd runs.

            Examples:
              sensorlog verify --data-dir ./data
              sensorlog verify --data-dir ./data --json
              sensorlog verify --data-dir ./data --repair
            """)

    @OptionGroup var options: CommonOptions
    @Flag(help: "Truncate a corrupt active-segment tail and drop bad index files (server stopped).") var repair = false

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: 66) }
        var lock: DirectoryLock?
        if repair {
            do { lock = try DirectoryLock(dataDirectory: directory.dataDirectory) } catch { Terminal.fail(error.message, code: 75) }
        }
        defer { lock?.release() }
        var results: [PartitionVerification] = []
        let progress = Progress(label: "verify")
        var done: Int64 = 0
        let total = max(1, AggregateRebuild.logBytes(directory.dataDirectory))
        for p in 0..<directory.partitionCount {
            results.append(try directory.verify(partition: p) { bytes in
                done += bytes
                progress.update(done: done, total: total)
            })
        }
        progress.finish()
        var problems = results.flatMap(\.problems)
        // Group offsets must lie within the log.
        let ends = results.map(\.endOffset)
        let starts = results.map(\.startOffset)
        var offsets: [(String, [Int64])] = []
        let storePath = directory.dataDirectory + "/" + AggregateStore.fileName
        if FileManager.default.fileExists(atPath: storePath), let store = try? AggregateStore(path: storePath, readOnly: true),
           let committed = try? store.offsets(partitions: directory.partitionCount) {
            offsets.append((AggregateStore.group, committed))
        }
        let groups = ConsumerGroups(dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
        for name in groups.list() { if let c = try? groups.committed(name) { offsets.append((name, c)) } }
        for (group, committed) in offsets {
            for (p, c) in committed.enumerated() where c > ends[p] || (c < starts[p] && c != 0) {
                problems.append(VerifyProblem(severity: .error, path: group == AggregateStore.group ? AggregateStore.fileName : "groups/\(group).json",
                                              position: nil, message: "group \(group) partition \(p) committed offset \(c) outside the log [\(starts[p]), \(ends[p])]"))
            }
        }

        var repaired: [String] = []
        if repair {
            for r in results {
                // Segments with an error in their .log: salvaged (closed, or active with data after
                // the damage); a torn active tail: cut.
                let damaged = Set(r.problems.filter { $0.severity == .error && $0.path.hasSuffix(".log") }.map(\.path))
                let bases = try directory.segmentBases(partition: r.partition)
                for (i, base) in bases.enumerated() {
                    let display = partitionDirectoryName(r.partition) + "/" + String(format: "%020lld", base) + ".log"
                    if damaged.contains(display) {
                        do {
                            repaired.append(try directory.salvage(partition: r.partition, segment: base, end: i + 1 < bases.count ? bases[i + 1] : nil,
                                                                  report: r.problems.filter { $0.path == display }))
                        } catch {
                            Terminal.error("cannot salvage \(display): \(error)")
                        }
                    } else if i == bases.count - 1, let cut = r.truncateActiveAt, cut.path == display {
                        if truncate(directory.dataDirectory + "/" + cut.path, off_t(cut.position)) == 0 {
                            repaired.append("\(cut.path): torn tail truncated at byte \(cut.position)")
                        }
                    }
                }
                for problem in r.problems where problem.path.hasSuffix(".index") && problem.severity == .error {
                    let stem = directory.dataDirectory + "/" + String(problem.path.dropLast(".index".count))
                    unlink(stem + ".index")
                    unlink(stem + ".timeindex")
                    repaired.append("\(problem.path): removed (rebuilt at the next start)")
                }
            }
        }

        let errors = problems.filter { $0.severity == .error }
        if options.json {
            Terminal.printJSON([
                "ok": errors.isEmpty, "repaired": repaired,
                "problems": problems.map { p -> [String: Any] in
                    var d: [String: Any] = ["severity": p.severity.rawValue, "path": p.path, "message": p.message]
                    if let position = p.position { d["position"] = position }
                    return d
                },
                "partitions": results.map { ["partition": $0.partition, "segments": $0.segments, "batches": $0.batches,
                                             "records": $0.records, "bytes": $0.bytes, "start_offset": $0.startOffset, "end_offset": $0.endOffset] },
            ])
        } else {
            for p in problems {
                print("\(p.severity.rawValue.uppercased()) \(p.path)\(p.position.map { " at byte \($0)" } ?? ""): \(p.message)")
            }
            for line in repaired { print("REPAIRED \(line)") }
            let batches = results.reduce(0) { $0 + $1.batches }
            let records = results.reduce(Int64(0)) { $0 + $1.records }
            print("\(errors.isEmpty ? "ok" : "FAILED"): \(results.count) partitions, \(batches) batches, \(records) records, \(errors.count) errors, \(problems.count - errors.count) warnings")
        }
        if !errors.isEmpty && !repair { throw ExitCode(1) }
    }
}
