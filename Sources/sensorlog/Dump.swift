import ArgumentParser
import Foundation
import LineProtocol
import LogStore
import SensorLogCore

/// `sensorlog dump`: records of a partition, or of one sensor in a time range.
struct Dump: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print records of a partition or of one sensor (text, JSON lines, or line protocol).",
        discussion: """
            Reads the segment files only; works while sensorlogd runs. --format ilp writes line \
            protocol that another server's TCP port takes as it is (export, migration).

            Examples:
              sensorlog dump --data-dir ./data --partition 0 --limit 10
              sensorlog dump --data-dir ./data --partition 3 --from-offset 1000 --format json
              sensorlog dump --data-dir ./data --sensor sensor-00042 --from 2026-11-24T10:00:00Z --to 2026-11-24T11:00:00Z
              for p in $(seq 0 7); do sensorlog dump --data-dir ./data --partition $p --format ilp; done | nc other-host 9009
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json, ilp }

    @OptionGroup var options: CommonOptions
    @Option(help: "Partition to dump.") var partition: Int?
    @Option(help: "First offset (default: the partition's first).") var fromOffset: Int64?
    @Option(help: "Stop after this many records.") var limit: Int?
    @Option(help: "Dump this sensor's readings instead (with --from/--to).") var sensor: String?
    @Option(help: "With --sensor: from this time (ISO-8601 or epoch ns), inclusive.") var from: String?
    @Option(help: "With --sensor: to this time, exclusive.") var to: String?
    @Option(help: "text, json (one object a line) or ilp (line protocol).") var format: Format = .text

    func validate() throws {
        guard (partition == nil) != (sensor == nil) else { throw ValidationError("give --partition or --sensor") }
        if let limit, limit < 1 { throw ValidationError("--limit must be positive") }
        for t in [from, to].compactMap({ $0 }) where Timestamp.parse(t) == nil {
            throw ValidationError("'\(t)' is not ISO-8601 with a zone or epoch nanoseconds")
        }
    }

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: 66) }
        var out = FileHandle.standardOutput
        var buffer = ""
        var written = 0
        let max = limit ?? .max
        func emit(_ r: Reading, partition: Int, offset: Int64) {
            switch format {
            case .ilp: buffer += LineFormatter.line(for: r)
            case .json:
                let doc: [String: Any] = ["offset": offset, "partition": partition, "sensor_id": r.sensorID, "type": r.type, "value": r.value,
                                          "location": r.location, "timestamp": Timestamp.formatISO8601(r.timestamp), "timestamp_ns": r.timestamp]
                if let data = try? JSONSerialization.data(withJSONObject: doc, options: [.sortedKeys, .withoutEscapingSlashes]) {
                    buffer += String(decoding: data, as: UTF8.self) + "\n"
                }
            case .text:
                buffer += "\(partition)/\(offset) \(Timestamp.formatISO8601(r.timestamp)) \(r.sensorID) \(r.type) \(r.value) \(r.location)\n"
            }
            written += 1
            if buffer.utf8.count > 1 << 20 {
                out.write(Data(buffer.utf8))
                buffer = ""
            }
        }
        do {
            if let sensor {
                let p = PartitionHash.partition(of: sensor, partitions: directory.partitionCount)
                let lo = from.flatMap(Timestamp.parse) ?? .min
                let hi = to.flatMap(Timestamp.parse).map { $0 == .min ? .min : $0 - 1 } ?? .max
                let start = lo == .min ? try directory.startOffset(partition: p) : try directory.offset(partition: p, atOrAfter: lo)
                let reader = directory.reader(partition: p, from: start)
                while written < max {
                    let (found, next) = try reader.scan(sensorID: sensor, from: lo, to: hi, limit: max - written)
                    for f in found { emit(f.reading, partition: p, offset: f.offset) }
                    if next == nil { break }
                }
            } else {
                let p = partition!
                guard (0..<directory.partitionCount).contains(p) else { Terminal.fail("no partition \(p) (the log has \(directory.partitionCount))", code: 64) }
                let reader = directory.reader(partition: p, from: fromOffset ?? 0)
                var batch = DecodedBatch()
                outer: while let first = try reader.next(into: &batch) {
                    for i in first..<batch.count {
                        if written >= max { break outer }
                        if batch.kind == .readings {
                            emit(batch.reading(at: i), partition: p, offset: batch.offset(at: i))
                        } else if batch.kind == .removed {
                            continue
                        } else if format != .ilp {
                            buffer += format == .json
                                ? "{\"deleted_sensor\":\"\(batch.sensorID(at: i))\",\"offset\":\(batch.offset(at: i)),\"partition\":\(p)}\n"
                                : "\(p)/\(batch.offset(at: i)) delete sensor \(batch.sensorID(at: i))\n"
                            written += 1
                        }
                    }
                }
            }
        } catch {
            out.write(Data(buffer.utf8))
            Terminal.fail("\(error)", code: 65)
        }
        out.write(Data(buffer.utf8))
        _ = out
    }
}
