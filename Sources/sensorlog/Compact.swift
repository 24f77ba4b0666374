import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog compact`.
struct Compact: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Merge runs of adjacent closed segments into larger ones with large LZ4 batches; offsets are kept.",
        discussion: """
            While sensorlogd runs, the command asks it to compact as a job (through the admin socket \
            in the data directory) and follows the job; otherwise it works on the files. \
            Crash-safe: a kill at any moment leaves the old segments or the new one, never a mix; \
            the next open finishes or discards the swap. After compaction, rebuild-aggregates gives \
            the same aggregates as before.

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
        let parameters: [String: Any] = ["target_segment_bytes": targetSegmentBytes, "delete_sensors": deleteSensors]
        Self.offline(dataDirectory, deleteSensors: deleteSensors, targetSegmentBytes: targetSegmentBytes, json: options.json,
                     lock: AdminClient.lockOrDelegate(dataDirectory, operation: "compact", parameters: parameters, label: "compact", json: options.json))
    }

    /// Compaction of a stopped server's files (`lock` held).
    static func offline(_ dataDirectory: String, deleteSensors: [String], targetSegmentBytes: Int, json: Bool, lock probe: DirectoryLock) {
        var lock = probe
        if !deleteSensors.isEmpty {
            // Appending the deletion records opens the log as its writer, which takes the lock.
            probe.release()
            recordDeletions(dataDirectory, deleteSensors)
            do { lock = try DirectoryLock(dataDirectory: dataDirectory) } catch { Terminal.fail(error.message, code: .locked) }
        }
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
        if json {
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

    /// The timestamp of the newest reading of `sensorID` still in the log (nil when none is).
    static func newestReading(of sensorID: String, in log: Log) throws(LogError) -> Int64? {
        let reader = log.reader(partition: log.partition(for: sensorID), from: 0)
        var newest: Int64?
        while true {
            let (page, next) = try reader.scan(sensorID: sensorID, from: .min, to: .max, limit: .max, maxBatches: 64)
            if let last = page.map(\.reading.timestamp).max() { newest = max(newest ?? .min, last) }
            if next == nil { return newest }
        }
    }

    /// Appends the deletion records as the log's writer (this takes, and then releases, the
    /// directory lock), then closes the active segments: compaction rewrites closed segments
    /// only, and a deleted sensor's readings in the active one would otherwise still be served,
    /// still count as duplicates of a re-post and still bind its type.
    static func recordDeletions(_ dataDirectory: String, _ deleteSensors: [String]) {
        do {
            let existing = try LogDirectory(dataDirectory: dataDirectory)
            var limits = Limits()
            limits.partitions = existing.partitionCount
            let log = try Log.open(dataDirectory: dataDirectory, configuration: LogConfiguration(limits: limits, fsync: .always))
            defer { try? log.close() }
            var newest: [String: Int64] = [:]
            for id in Set(deleteSensors) { newest[id] = try newestReading(of: id, in: log) }
            let unknown = deleteSensors.filter { newest[$0] == nil }
            guard unknown.isEmpty else {
                try? log.close()
                Terminal.fail("no readings of sensor \(unknown.map { "'\($0)'" }.joined(separator: ", ")) in the log: nothing to delete (a typo?); nothing was changed", code: .usage)
            }
            for (id, last) in newest.sorted(by: { $0.key < $1.key }) {
                _ = try log.appendDeletionBlocking(id, lastReading: last, toPartition: log.partition(for: id))
            }
            try log.rollActiveSegments()
            try log.close()
        } catch where error.code == .locked {
            Terminal.fail(error.message, code: .locked)
        } catch {
            Terminal.fail("cannot record the deletions: \(error)", code: .ioError)
        }
    }
}

/// `sensorlog delete-sensor`.
struct DeleteSensor: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete-sensor",
        abstract: "Delete sensors: their readings, their aggregate rows and their type; resends of the deleted readings are refused.",
        discussion: """
            A deletion record goes into the log; the aggregator drops the sensor's rows when it \
            folds it; the readings are rewritten out of every closed segment as removed records \
            (offsets kept) after the active segment is closed. The sensor's type is released, and \
            a later reading of it with a timestamp at or before the newest one deleted is refused \
            with reason `deleted` (409 over HTTP), so deleted readings never come back; newer \
            readings start the sensor afresh. A sensor with no readings in the log is refused \
            (exit 64, nothing changed).

            While sensorlogd runs, it deletes as a job: its readers stop seeing the readings at \
            once, and the job ends when they are gone from the closed segments. Otherwise the \
            command works on the files.

            Examples:
              sensorlog delete-sensor --data-dir ./data sensor-0042
              sensorlog delete-sensor --data-dir ./data sensor-0042 sensor-0043 --json
            """)

    @OptionGroup var options: CommonOptions
    @Argument(help: "The sensors to delete.") var sensors: [String]

    func validate() throws {
        guard !sensors.isEmpty else { throw ValidationError("name at least one sensor") }
    }

    func run() throws {
        let dataDirectory = URL(fileURLWithPath: options.dataDir).standardizedFileURL.path
        let lock = AdminClient.lockOrDelegate(dataDirectory, operation: "delete-sensor", parameters: ["sensors": sensors], label: "delete",
                                              json: options.json)
        // Segments are rewritten one by one (a run of one never merges), only where readings go.
        Compact.offline(dataDirectory, deleteSensors: sensors, targetSegmentBytes: 0, json: options.json, lock: lock)
    }
}
