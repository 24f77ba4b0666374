import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog stats`: per partition, segments, offsets, readings and bytes.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show partitions, segments, offsets, readings and bytes on disk.",
        discussion: """
            Reads the log's files only, so it works while sensorlogd runs. A partition that cannot \
            be read (a corrupt batch) is shown as UNREADABLE with the error (`error` in --json), \
            the others as usual, and the exit code is 65.

            Examples:
              sensorlog stats --data-dir ./data
              sensorlog stats --data-dir ./data --json
            """)

    @OptionGroup var options: CommonOptions

    func run() throws {
        let directory: LogDirectory
        do {
            directory = try LogDirectory(dataDirectory: options.dataDir)
        } catch {
            Terminal.fail("\(error)", code: .noInput)
        }
        var partitions: [[String: Any]] = []
        for p in 0..<directory.partitionCount {
            // A corrupt partition is named and the others still shown, so that one bad segment
            // does not hide the state of the whole log.
            do { partitions.append(try partitionStats(p, directory)) } catch { partitions.append(["partition": p, "error": "\(error)"]) }
        }
        let healthy = partitions.filter { $0["error"] == nil }
        let totalReadings = healthy.reduce(Int64(0)) { $0 + ($1["readings"] as! Int64) }
        let totalBytes = healthy.reduce(Int64(0)) { $0 + ($1["bytes"] as! Int64) }
        let failed = partitions.count - healthy.count
        if options.json {
            Terminal.printJSON(["readings": totalReadings, "bytes": totalBytes, "partitions": partitions, "errors": failed])
        } else {
            printTable(partitions)
            print(String(format: "total readings %lld, %lld bytes, %.2f B/reading", totalReadings, totalBytes,
                         totalReadings > 0 ? Double(totalBytes) / Double(totalReadings) : 0)
                  + (failed > 0 ? " (\(failed) unreadable partition(s) not counted)" : ""))
        }
        if failed > 0 {
            Terminal.error("\(failed) partition(s) could not be read; `sensorlog verify` names every problem, `verify --repair` salvages")
            throw ExitCode(.dataError)
        }
    }

    func partitionStats(_ p: Int, _ directory: LogDirectory) throws -> [String: Any] {
        let bases = try directory.segmentBases(partition: p)
        let reader = directory.reader(partition: p, from: 0)
        var readings: Int64 = 0
        var minTimestamp = Int64.max
        var maxTimestamp = Int64.min
        // Decoded, not counted from headers: beside a running server a compaction may swap
        // segments, and the reader then goes on from a merged batch that begins before it was.
        var batch = DecodedBatch()
        while let first = try reader.next(into: &batch) {
            if batch.kind == .readings { readings += Int64(batch.count - first) }
            minTimestamp = min(minTimestamp, batch.header.minTimestamp)
            maxTimestamp = max(maxTimestamp, batch.header.maxTimestamp)
        }
        let bytes = directory.partitionBytes(partition: p)
        var entry: [String: Any] = [
            "partition": p, "segments": bases.count, "start_offset": bases.first ?? 0, "end_offset": reader.nextOffset,
            "readings": readings, "bytes": bytes,
        ]
        if readings > 0 {
            entry["bytes_per_reading"] = Double(bytes) / Double(readings)
            entry["min_timestamp"] = minTimestamp
            entry["max_timestamp"] = maxTimestamp
        }
        return entry
    }

    func printTable(_ partitions: [[String: Any]]) {
        print("partition  segments  start_offset    end_offset      readings         bytes  B/reading")
        for e in partitions {
            if let error = e["error"] as? String {
                print(String(format: "%9d  ", e["partition"] as! Int) + "UNREADABLE: " + error)
                continue
            }
            print(String(format: "%9d  %8d  %12lld  %12lld  %12lld  %12lld  %9.2f", e["partition"] as! Int, e["segments"] as! Int,
                         e["start_offset"] as! Int64, e["end_offset"] as! Int64, e["readings"] as! Int64, e["bytes"] as! Int64,
                         (e["bytes_per_reading"] as? Double) ?? 0))
        }
    }
}
