import Aggregator
import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog rebuild-aggregates`: replays the log from offset zero into a new aggregates database.
struct RebuildAggregates: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rebuild-aggregates",
        abstract: "Rebuild the hourly aggregates by replaying the log from its first offset.",
        discussion: """
            Without --output, builds a new aggregates.sqlite beside the old one and swaps it in \
            atomically. While sensorlogd runs, it does that itself as a job: it folds the log into \
            the new file while ingestion goes on, pauses its aggregator for the swap only, and \
            queries answer from the old store until the swap, from the new one after. With --output, writes a separate, complete database with the same schema and works while \
            sensorlogd runs (it reads the log read-only).

            Examples:
              sensorlog rebuild-aggregates --data-dir ./data
              sensorlog rebuild-aggregates --data-dir ./data --output /tmp/aggregates-check.sqlite
              sensorlog rebuild-aggregates --data-dir ./data --output /tmp/at-noon.sqlite --until 2026-11-24T12:00:00Z
            """)

    @OptionGroup var options: CommonOptions

    @Option(help: "Write the rebuilt database to this new file instead of replacing aggregates.sqlite.")
    var output: String?

    @Option(help: "Only batches appended at or before this time (ISO-8601 or epoch ns): the aggregates as they stood then.")
    var until: String?

    func validate() throws {
        if let until, Timestamp.parse(until) == nil { throw ValidationError("--until must be ISO-8601 with a zone or epoch nanoseconds") }
    }

    func run() throws {
        let directory = URL(fileURLWithPath: options.dataDir).standardizedFileURL.path
        var lock: DirectoryLock?
        if output == nil {
            lock = AdminClient.lockOrDelegate(directory, operation: "rebuild-aggregates", parameters: until.map { ["until": $0] } ?? [:],
                                              label: "rebuild", json: options.json)
        }
        defer { lock?.release() }
        let target = output.map { URL(fileURLWithPath: $0).standardizedFileURL.path } ?? DataLayout(directory).aggregates
        let progress = Progress(label: "rebuild")
        let result: AggregateRebuild.Result
        do {
            // In place needs the lock (taken above exactly when there is no --output).
            if let lock {
                result = try AggregateRebuild.rebuildInPlace(
                    dataDirectory: directory, held: lock, until: until.flatMap(Timestamp.parse),
                    progress: { done, total in progress.update(done: done, total: total) })
            } else {
                result = try AggregateRebuild.build(
                    dataDirectory: directory, output: target, until: until.flatMap(Timestamp.parse),
                    progress: { done, total in progress.update(done: done, total: total) })
            }
        } catch {
            if output != nil { try? FileManager.default.removeItem(atPath: target) }
            Terminal.fail("rebuild failed: \(error)", code: (error as? LogError)?.code == .invalidArgument ? .usage : .ioError)
        }
        progress.finish()
        let rate = Double(result.readings) / max(result.seconds, 1e-9)
        if result.keptRows > 0 {
            Terminal.error("kept \(result.keptRows) hourly rows from the current store: their hours began before the retained log")
        }
        if options.json {
            Terminal.printJSON([
                "readings": result.readings, "rows": result.rows, "seconds": result.seconds, "readings_per_second": rate, "kept_rows": result.keptRows,
                "output": target, "offsets": result.offsets,
            ])
        } else {
            print(String(format: "rebuilt %lld readings into %d hourly rows in %.2f s (%.1f M readings/s) -> %@", result.readings, result.rows,
                         result.seconds, rate / 1e6, target))
        }
    }
}
