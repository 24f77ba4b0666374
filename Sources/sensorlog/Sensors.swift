import Aggregator
import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog sensors`: the sensor catalogue, as `GET /sensors` gives it, from the files.
struct Sensors: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List sensors with their type, latest location, first and last reading and readings count.",
        discussion: """
            Reads only (the aggregates store); works while sensorlogd runs. The same as GET /sensors: \
            what the aggregator has folded.

            Examples:
              sensorlog sensors --data-dir ./data
              sensorlog sensors --data-dir ./data --type humidity --prefix hall- --json
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "Only sensors of this type.") var type: String?
    @Option(help: "Only sensors whose latest location is this.") var location: String?
    @Option(help: "Only sensors whose id starts with this.") var prefix: String?
    @Option(help: "At most this many sensors (default: all).") var limit: Int?

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        let storePath = directory.layout.aggregates
        guard FileManager.default.fileExists(atPath: storePath) else { Terminal.fail("no aggregates store in \(options.dataDir)", code: .noInput) }
        let store = try AggregateStore(path: storePath, readOnly: true)
        let filter = SensorFilter(type: type, location: location, prefix: prefix)
        var all: [SensorSummary] = []
        var cursor: String?
        // Page through, as a client of GET /sensors would: bounded memory per step.
        while limit.map({ all.count < $0 }) ?? true {
            let page = try store.sensors(filter, after: cursor, limit: min(10_000, (limit ?? Int.max) - all.count))
            all += page
            guard page.count == 10_000, let last = page.last else { break }
            cursor = last.sensorID
        }
        if options.json {
            Terminal.printJSON(["sensors": all.map { ["sensor_id": $0.sensorID, "type": $0.type, "location": $0.location,
                                                      "first_reading": $0.firstReading, "last_reading": $0.lastReading, "count": $0.count] as [String: Any] }])
        } else {
            print("sensor_id            type          location             first_reading              last_reading                  count")
            for s in all {
                print(String(format: "%-20@ %-13@ %-20@ %-26@ %-26@ %9lld", s.sensorID, s.type, s.location, s.firstReading, s.lastReading, s.count))
            }
        }
    }
}
