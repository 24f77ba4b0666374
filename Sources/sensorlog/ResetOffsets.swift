import Aggregator
import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog reset-offsets`: moves a consumer group's committed offsets (a dry run unless --execute).
struct ResetOffsets: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reset-offsets",
        abstract: "Move a consumer group to the earliest or latest offset, an offset, or a time.",
        discussion: """
            A dry run unless --execute: prints the offsets the group would get. Refuses the \
            aggregator group (its reset is rebuild-aggregates: moving its offsets would count \
            readings twice or never). Refuses a group that has no committed offsets (exit 64, naming \
            the groups there are), so that a mistyped name never creates a group: pass --create to \
            start a new one. With --execute while sensorlogd runs, the server moves the offsets.

            Examples:
              sensorlog reset-offsets --data-dir ./data --group exporter --to-earliest
              sensorlog reset-offsets --data-dir ./data --group exporter --to-earliest --create --execute
              sensorlog reset-offsets --data-dir ./data --group exporter --to-datetime 2026-11-24T10:00:00Z --execute
              sensorlog reset-offsets --data-dir ./data --group exporter --to-offset 5000 --partition 3 --execute
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "The consumer group.") var group: String
    @Flag(help: "To each partition's first offset.") var toEarliest = false
    @Flag(help: "To each partition's end (skip everything written so far).") var toLatest = false
    @Option(help: "To this offset (clamped to the partition's range).") var toOffset: Int64?
    @Option(help: "To the first batch holding a reading at or after this time (ISO-8601 or epoch ns).") var toDatetime: String?
    @Option(help: "Only this partition.") var partition: Int?
    @Flag(help: "Write the new offsets (otherwise a dry run).") var execute = false
    @Flag(help: "Create the group when it does not exist yet (otherwise an unknown group is refused).") var create = false

    func validate() throws {
        let targets = [toEarliest, toLatest, toOffset != nil, toDatetime != nil].filter { $0 }.count
        guard targets == 1 else { throw ValidationError("give exactly one of --to-earliest, --to-latest, --to-offset, --to-datetime") }
        if let toDatetime, Timestamp.parse(toDatetime) == nil { throw ValidationError("--to-datetime must be ISO-8601 with a zone or epoch ns") }
        guard group != AggregateStore.group else {
            throw ValidationError("the aggregator group is reset by `sensorlog rebuild-aggregates`, which replays the log into a new store")
        }
    }

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        if let partition, !(0..<directory.partitionCount).contains(partition) { Terminal.fail("no partition \(partition)", code: .usage) }
        var lock: DirectoryLock?
        if execute {
            var parameters: [String: Any] = ["group": group, "create": create, "execute": true]
            if toEarliest { parameters["to"] = "earliest" }
            if toLatest { parameters["to"] = "latest" }
            if let toOffset { parameters["to_offset"] = toOffset }
            if let toDatetime { parameters["to_datetime"] = toDatetime }
            if let partition { parameters["partition"] = partition }
            lock = AdminClient.lockOrDelegate(directory.dataDirectory, operation: "reset-offsets", parameters: parameters, label: "reset",
                                              json: options.json)
        }
        defer { lock?.release() }
        let groups = ConsumerGroups(dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
        let target: ConsumerGroups.ResetTarget =
            toEarliest ? .earliest : toLatest ? .latest : toOffset.map { .offset($0) } ?? .timestamp(Timestamp.parse(toDatetime!)!)
        let before: [Int64]?
        do { before = try groups.committed(group) } catch { Terminal.fail("\(error)", code: error.code == .invalidArgument ? .usage : .dataError) }
        if before == nil && !create {
            let known = groups.list()
            Terminal.fail("no consumer group '\(group)' (groups: \(known.isEmpty ? "none" : known.joined(separator: ", "))); pass --create to start it", code: .usage)
        }
        let after: [Int64]
        do {
            after = try groups.resetOffsets(
                group, to: target, partition: partition,
                start: { (p: Int) throws(LogError) -> Int64 in try directory.startOffset(partition: p) },
                end: { (p: Int) throws(LogError) -> Int64 in try directory.endOffset(partition: p) },
                seek: { (p: Int, t: Int64) throws(LogError) -> Int64 in try directory.offset(partition: p, atOrAfter: t) })
            if execute { try groups.commit(group, offsets: after) }
        } catch {
            Terminal.fail("\(error)", code: .dataError)
        }
        if options.json {
            Terminal.printJSON(["group": group, "executed": execute, "before": before.map { $0 as Any } ?? NSNull(), "after": after])
        } else {
            for (p, o) in after.enumerated() where partition == nil || partition == p {
                print("\(group) partition \(p): \(before.map { String($0[p]) } ?? "none") -> \(o)")
            }
            print(execute ? "offsets written" : "dry run: add --execute to write them")
        }
    }
}
