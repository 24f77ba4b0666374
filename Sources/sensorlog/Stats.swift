import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog stats`: per partition, segments, offsets, readings and bytes.
struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show partitions, segments, offsets, readings and bytes on disk.",
        discussion: """
            Reads the log's files only, so it works while sensorlogd runs.

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
            FileHandle.standardError.write(Data("sensorlog: \(error)\n".utf8))
            throw ExitCode(66)
        }
        var partitions: [[String: Any]] = []
        var totalReadings: Int64 = 0
        var totalBytes: Int64 = 0
        for p in 0..<directory.partitionCount {
            let bases = try directory.segmentBases(partition: p)
            let reader = directory.reader(partition: p, from: 0)
            var readings: Int64 = 0
            var minTimestamp = Int64.max
            var maxTimestamp = Int64.min
            while let batch = try reader.nextRaw() {
                if batch.header.kind == .readings { readings += Int64(batch.header.recordCount) }
                minTimestamp = min(minTimestamp, batch.header.minTimestamp)
                maxTimestamp = max(maxTimestamp, batch.header.maxTimestamp)
            }
            var bytes: Int64 = 0
            let dir = directory.dataDirectory + "/log/" + String(format: "partition-%03d", p)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                if let size = (try? FileManager.default.attributesOfItem(atPath: dir + "/" + name))?[.size] as? Int64 { bytes += size }
            }
            totalReadings += readings
            totalBytes += bytes
            var entry: [String: Any] = [
                "partition": p, "segments": bases.count, "start_offset": bases.first ?? 0, "end_offset": reader.nextOffset,
                "readings": readings, "bytes": bytes,
            ]
            if readings > 0 {
                entry["bytes_per_reading"] = Double(bytes) / Double(readings)
                entry["min_timestamp"] = minTimestamp
                entry["max_timestamp"] = maxTimestamp
            }
            partitions.append(entry)
        }
        if options.json {
            let doc: [String: Any] = ["readings": totalReadings, "bytes": totalBytes, "partitions": partitions]
            let data = try JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .withoutEscapingSlashes])
            FileHandle.standardOutput.write(data + Data("\n".utf8))
        } else {
            print("partition  segments  start_offset    end_offset      readings         bytes  B/reading")
            for e in partitions {
                print(String(format: "%9d  %8d  %12lld  %12lld  %12lld  %12lld  %9.2f", e["partition"] as! Int, e["segments"] as! Int,
                             e["start_offset"] as! Int64, e["end_offset"] as! Int64, e["readings"] as! Int64, e["bytes"] as! Int64,
                             (e["bytes_per_reading"] as? Double) ?? 0))
            }
            print(String(format: "total readings %lld, %lld bytes, %.2f B/reading", totalReadings, totalBytes,
                         totalReadings > 0 ? Double(totalBytes) / Double(totalReadings) : 0))
        }
    }
}
