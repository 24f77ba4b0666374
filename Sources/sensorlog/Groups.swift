import Aggregator
import ArgumentParser
import Foundation
import SensorLogCore
import LogStore

/// `sensorlog groups`: consumer groups with committed offset, end offset and lag per partition.
struct Groups: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List consumer groups with committed offset, end offset and lag per partition.",
        discussion: """
            Reads only; works while sensorlogd runs. The aggregator's offsets come from \
            aggregates.sqlite, other groups' from groups/<name>.json.

            Examples:
              sensorlog groups --data-dir ./data
              sensorlog groups --data-dir ./data --json
            """)

    @OptionGroup var options: CommonOptions

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        let ends = try (0..<directory.partitionCount).map { p throws(LogError) in try directory.endOffset(partition: p) }
        var groups: [(String, [Int64])] = []
        let storePath = directory.layout.aggregates
        if FileManager.default.fileExists(atPath: storePath) {
            let store = try AggregateStore(path: storePath, readOnly: true)
            groups.append((AggregateStore.group, try store.offsets(partitions: directory.partitionCount)))
        }
        let files = ConsumerGroups(dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
        for name in files.list() { if let c = try files.committed(name) { groups.append((name, c)) } }
        if options.json {
            Terminal.printJSON(["groups": groups.map { name, committed in
                ["group": name, "partitions": committed.enumerated().map { p, c in
                    ["partition": p, "committed": c, "end": ends[p], "lag": max(0, ends[p] - c)]
                }] as [String: Any]
            }])
        } else {
            print("group                partition     committed           end           lag")
            for (name, committed) in groups {
                for (p, c) in committed.enumerated() {
                    print(String(format: "%-20@ %9d %13lld %13lld %13lld", name, p, c, ends[p], max(0, ends[p] - c)))
                }
            }
        }
    }
}
