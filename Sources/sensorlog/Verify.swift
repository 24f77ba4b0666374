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
            within the log. Reads only. While sensorlogd runs, the server runs the check, with its \
            segments held still (no compaction swap in the middle of it).

            --repair on a stopped server salvages every segment \
            with a damaged batch: each readable batch is kept, each unreadable range becomes \
            removed records (no offset moves, so every group's offsets stay valid), and the \
            original file is quarantined in quarantine/<partition>/ with a report. A torn tail of \
            the active segment is cut. Bad or missing index files are rebuilt. When records were \
            removed or cut, aggregates.sqlite is rebuilt from the repaired log (into a new file, \
            swapped in atomically), so it no longer counts the lost readings and producers' resends \
            of them count exactly once. Then the log is verified again and the state after the \
            repair is reported. While sensorlogd runs, --repair asks it: it salvages damaged closed \
            segments and rewrites index files through the compaction swap, and rebuilds the \
            aggregates in place when needed; a damaged active segment is reported as not repaired \
            (exit 1): stop the server and repair then.

            Exit codes: 0 clean (warnings allowed; with --repair: clean after the repair), 1 \
            problems found (with --repair: problems remain), 66 no log, 75 a running sensorlogd \
            that cannot be reached.

            Examples:
              sensorlog verify --data-dir ./data
              sensorlog verify --data-dir ./data --json
              sensorlog verify --data-dir ./data --repair
            """)

    @OptionGroup var options: CommonOptions
    @Flag(help: "Salvage damaged segments (originals quarantined), cut a torn tail, rebuild indexes and aggregates; a running server does what it can while serving.")
    var repair = false

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        // Beside a running server the check runs inside it, with its segments held still: read
        // from outside, a compaction's swap could show as a transient overlap.
        let lock = AdminClient.lockOrDelegate(directory.dataDirectory, operation: "verify", parameters: ["repair": repair], label: "verify",
                                              json: options.json)
        defer { lock.release() }
        let found = try Self.check(directory)
        guard repair else {
            report(found: found, repairs: nil, after: nil)
            if !found.errors.isEmpty { throw ExitCode(.problemsFound) }
            return
        }
        let repairs = Self.repair(directory, found: found, held: lock)
        let after = try Self.check(directory)
        report(found: found, repairs: repairs, after: after)
        if !after.errors.isEmpty { throw ExitCode(.problemsFound) }
    }

    /// Verifies every partition and every group's offsets, with a progress bar.
    static func check(_ directory: LogDirectory) throws -> LogCheck.Findings {
        let progress = Progress(label: "verify")
        defer { progress.finish() }
        return try LogCheck.check(directory) { progress.update(done: $0, total: $1) }
    }

    /// Repairs what `check` found (see `LogRepair`), with a progress bar for the aggregate rebuild.
    static func repair(_ directory: LogDirectory, found: LogCheck.Findings, held lock: DirectoryLock) -> LogRepair.Outcome {
        let progress = Progress(label: "rebuild aggregates")
        defer { progress.finish() }
        do {
            return try LogRepair.run(directory, found: found.partitions, held: lock) { progress.update(done: $0, total: $1) }
        } catch {
            Terminal.fail("nothing repaired: \(error)", code: .ioError)
        }
    }

    func report(found: LogCheck.Findings, repairs: LogRepair.Outcome?, after: LogCheck.Findings?) {
        let (json, lines) = LogCheck.report(found: found, repairs: repairs, after: after)
        if options.json { Terminal.printJSON(json) } else { for line in lines { print(line) } }
    }
}
