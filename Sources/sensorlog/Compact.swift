import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog compact`.
struct Compact: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge runs of adjacent closed segments into larger ones with large LZ4 batches; offsets are kept.",
        discussion: """
            The server must be stopped (the command takes the data directory's lock and refuses, \
            naming sensorlogd's pid, while it runs). Crash-safe: a kill at any moment leaves the old \
            segments or the new one, never a mix; the next open finishes or discards the swap. \
            After compaction, rebuild-aggregates gives the same aggregates as before.

            Examples:
              sensorlog compact --data-dir ./data
              sensorlog compact --data-dir ./data --target-segment-bytes 268435456 --json
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "Largest segment compaction writes, in bytes.") var targetSegmentBytes = 64 << 20
    @Option(name: .customLong("delete-sensor"),
            help: "Delete this sensor: a deletion record goes into the log (the aggregator drops its rows) and compaction drops its readings from closed segments. Repeatable.")
    var deleteSensors: [String] = []

    func validate() throws {
        guard targetSegmentBytes >= 64 << 10 else { throw ValidationError("--target-segment-bytes must be at least 65536") }
    }

    func run() throws {
        let dataDirectory = URL(fileURLWithPath: options.dataDir).standardizedFileURL.path
        if !deleteSensors.isEmpty { recordDeletions(dataDirectory) }
        let lock: DirectoryLock
        do { lock = try DirectoryLock(dataDirectory: dataDirectory) } catch { Terminal.fail(error.message, code: .locked) }
        defer { lock.release() }
        let progress = Progress(label: "compact")
        var done: Int64 = 0
        let result: Compactor.Result
        do {
            result = try Compactor.compact(dataDirectory: dataDirectory, held: lock, targetSegmentBytes: targetSegmentBytes) { bytes in
                done += bytes
                progress.update(done: done, total: max(done, 1))
            }
        } catch {
            Terminal.fail("compaction failed: \(error)", code: .ioError)
        }
        progress.finish()
        if options.json {
            Terminal.printJSON(["segments_before": result.segmentsBefore, "segments_after": result.segmentsAfter,
                                "bytes_rewritten_before": result.bytesBefore, "bytes_rewritten_after": result.bytesAfter,
                                "records": result.records, "seconds": result.seconds])
        } else if result.segmentsBefore == result.segmentsAfter && result.records == 0 {
            print("nothing to compact: \(result.segmentsBefore) segments, no run of closed segments to merge and no deleted sensor's readings left")
        } else {
            print(String(format: "compacted %d segments into %d; rewrote %lld records, %lld -> %lld bytes in %.2f s", result.segmentsBefore,
                         result.segmentsAfter, result.records, result.bytesBefore, result.bytesAfter, result.seconds))
        }
    }

    /// Appends the deletion records as the log's writer (this takes, and then releases, the
    /// directory lock), then closes the active segments: compaction rewrites closed segments
    /// only, and a deleted sensor's readings in the active one would otherwise still be served,
    /// still count as duplicates of a re-post and still bind its type.
    func recordDeletions(_ dataDirectory: String) {
        do {
            let existing = try LogDirectory(dataDirectory: dataDirectory)
            var limits = Limits()
            limits.partitions = existing.partitionCount
            let log = try Log.open(dataDirectory: dataDirectory, configuration: LogConfiguration(limits: limits, fsync: .always))
            defer { try? log.close() }
            let unknown = try deleteSensors.filter { id in
                try log.reader(partition: log.partition(for: id), from: 0).scan(sensorID: id, from: .min, to: .max, limit: 1).readings.isEmpty
            }
            guard unknown.isEmpty else {
                try? log.close()
                Terminal.fail("no readings of sensor \(unknown.map { "'\($0)'" }.joined(separator: ", ")) in the log: nothing to delete (a typo?); nothing was changed", code: .usage)
            }
            var byPartition: [Int: [String]] = [:]
            for id in Set(deleteSensors) { byPartition[log.partition(for: id), default: []].append(id) }
            for (p, ids) in byPartition { _ = try log.appendDeletions(ids.sorted(), toPartition: p) }
            try log.rollActiveSegments()
            try log.close()
        } catch let error as LogError where error.code == .locked {
            Terminal.fail(error.message, code: .locked)
        } catch {
            Terminal.fail("cannot record the deletions: \(error)", code: .ioError)
        }
    }
}
