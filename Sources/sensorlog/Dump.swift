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
            protocol that another server's TCP port takes as it is (export, migration). --json is \
            --format json: one object a line. --from/--to keep the readings in that time range, \
            for a sensor or a whole partition.

            Examples:
              sensorlog dump --data-dir ./data --partition 0 --limit 10
              sensorlog dump --data-dir ./data --partition 3 --from-offset 1000 --format json
              sensorlog dump --data-dir ./data --partition 3 --from 2026-11-24T10:00:00Z --json
              sensorlog dump --data-dir ./data --sensor sensor-00042 --from 2026-11-24T10:00:00Z --to 2026-11-24T11:00:00Z
              for p in $(seq 0 7); do sensorlog dump --data-dir ./data --partition $p --format ilp; done | nc other-host 9009
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable { case text, json, ilp }

    @OptionGroup var options: CommonOptions
    @Option(help: "Partition to dump.") var partition: Int?
    @Option(help: "First offset (default: the partition's first).") var fromOffset: Int64?
    @Option(help: "Stop after this many records.") var limit: Int?
    @Option(help: "Dump this sensor's readings instead.") var sensor: String?
    @Option(help: "Readings from this time (ISO-8601 or epoch ns), inclusive.") var from: String?
    @Option(help: "Readings to this time, exclusive.") var to: String?
    @Option(help: "text (default), json (one object a line; as --json) or ilp (line protocol).") var format: Format?

    var outputFormat: Format { format ?? (options.json ? .json : .text) }
    var lowerBound: Int64 { from.flatMap(Timestamp.parse) ?? .min }
    /// Inclusive, as the sensor scan takes it.
    var upperBound: Int64 { to.flatMap(Timestamp.parse).map { $0 == .min ? .min : $0 - 1 } ?? .max }

    func validate() throws {
        guard (partition == nil) != (sensor == nil) else { throw ValidationError("give --partition or --sensor") }
        if sensor != nil && fromOffset != nil { throw ValidationError("--from-offset goes with --partition; a sensor's dump seeks with --from") }
        if let limit, limit < 1 { throw ValidationError("--limit must be positive") }
        for t in [from, to].compactMap({ $0 }) where Timestamp.parse(t) == nil {
            throw ValidationError("'\(t)' is not ISO-8601 with a zone or epoch nanoseconds")
        }
        if options.json, let format, format != .json { throw ValidationError("--json writes JSON lines; it does not go with --format \(format)") }
    }

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        let out = DumpOutput(format: outputFormat, limit: limit ?? .max)
        do {
            if let sensor {
                try dumpSensor(sensor, directory, out)
            } else {
                try dumpPartition(partition!, directory, out)
            }
        } catch {
            out.flush()
            Terminal.fail("\(error)", code: .dataError)
        }
        out.flush()
    }

    func dumpSensor(_ sensor: String, _ directory: LogDirectory, _ out: DumpOutput) throws(LogError) {
        let p = PartitionHash.partition(of: sensor, partitions: directory.partitionCount)
        let (lo, hi) = (lowerBound, upperBound)
        let start = lo == .min ? try directory.startOffset(partition: p) : try directory.offset(partition: p, atOrAfter: lo)
        let reader = directory.reader(partition: p, from: start)
        while !out.isFull {
            let (found, next) = try reader.scan(sensorID: sensor, from: lo, to: hi, limit: out.remaining)
            for f in found { out.reading(f.reading, partition: p, offset: f.offset) }
            if next == nil { break }
        }
    }

    func dumpPartition(_ p: Int, _ directory: LogDirectory, _ out: DumpOutput) throws(LogError) {
        guard (0..<directory.partitionCount).contains(p) else { Terminal.fail("no partition \(p) (the log has \(directory.partitionCount))", code: .usage) }
        let (lo, hi) = (lowerBound, upperBound)
        // Every batch before the time seek holds only readings older than --from; later batches
        // may still hold some (readings arrive out of order), so each reading is checked too.
        let seek = lo == .min ? 0 : try directory.offset(partition: p, atOrAfter: lo)
        let reader = directory.reader(partition: p, from: max(fromOffset ?? 0, seek))
        var batch = DecodedBatch()
        while !out.isFull, let first = try reader.next(into: &batch) {
            for i in first..<batch.count where !out.isFull {
                switch batch.kind {
                case .readings:
                    let t = batch.timestamps[i]
                    if t >= lo && t <= hi { out.reading(batch.reading(at: i), partition: p, offset: batch.offset(at: i)) }
                case .removed:
                    continue
                default:
                    out.deletion(batch.sensorID(at: i), partition: p, offset: batch.offset(at: i))
                }
            }
        }
    }
}

/// Formats records into a buffer written to stdout a megabyte at a time.
final class DumpOutput {
    let format: Dump.Format
    let limit: Int
    private(set) var written = 0
    private var buffer = ""

    init(format: Dump.Format, limit: Int) {
        self.format = format
        self.limit = limit
        buffer.reserveCapacity(1 << 20 + 4096)
    }

    var isFull: Bool { written >= limit }
    var remaining: Int { limit - written }

    func reading(_ r: Reading, partition: Int, offset: Int64) {
        switch format {
        case .ilp: buffer += LineFormatter.line(for: r)
        case .json: appendJSON(r, partition: partition, offset: offset)
        case .text:
            buffer += "\(partition)/\(offset) \(Timestamp.formatISO8601(r.timestamp)) \(r.sensorID) \(r.type) \(r.value) \(r.location)\n"
        }
        counted()
    }

    /// A sensor deletion record; line protocol has no way to say it, so ilp skips it.
    func deletion(_ sensorID: String, partition: Int, offset: Int64) {
        switch format {
        case .ilp: return
        case .json:
            buffer += "{\"deleted_sensor\":"
            JSONText.appendString(sensorID, to: &buffer)
            buffer += ",\"offset\":\(offset),\"partition\":\(partition)}\n"
        case .text: buffer += "\(partition)/\(offset) delete sensor \(sensorID)\n"
        }
        counted()
    }

    /// The keys sorted, as JSONSerialization wrote them before: by hand it is 50 times faster.
    private func appendJSON(_ r: Reading, partition: Int, offset: Int64) {
        buffer += "{\"location\":"
        JSONText.appendString(r.location, to: &buffer)
        buffer += ",\"offset\":\(offset),\"partition\":\(partition),\"sensor_id\":"
        JSONText.appendString(r.sensorID, to: &buffer)
        buffer += ",\"timestamp\":\"\(Timestamp.formatISO8601(r.timestamp))\",\"timestamp_ns\":\(r.timestamp),\"type\":"
        JSONText.appendString(r.type, to: &buffer)
        // Values are finite (validation refuses the rest), and Swift's shortest round-trip form
        // of a finite Double is a JSON number.
        buffer += ",\"value\":\(r.value)}\n"
    }

    private func counted() {
        written += 1
        if buffer.utf8.count >= 1 << 20 { flush() }
    }

    func flush() {
        FileHandle.standardOutput.write(Data(buffer.utf8))
        buffer.removeAll(keepingCapacity: true)
    }
}

/// JSON strings written by hand, for the tool's streams.
enum JSONText {
    /// Appends `s` quoted: `"` and `\` escaped, control characters as `\n`, `\t`… or `\u00XX`;
    /// everything else as it is (JSON text is UTF-8).
    static func appendString(_ s: String, to out: inout String) {
        out += "\""
        if s.utf8.allSatisfy({ $0 >= 0x20 && $0 != 0x22 && $0 != 0x5C }) {
            out += s
        } else {
            for c in s.unicodeScalars { appendScalar(c, to: &out) }
        }
        out += "\""
    }

    private static func appendScalar(_ c: Unicode.Scalar, to out: inout String) {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where c.value < 0x20:
            let hex = String(c.value, radix: 16)
            out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: out.unicodeScalars.append(c)
        }
    }
}
