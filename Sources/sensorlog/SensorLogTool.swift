import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// Options every subcommand shares.
struct CommonOptions: ParsableArguments {
    @Option(help: "Data directory of the log.")
    var dataDir = "./data"

    @Flag(help: "Write one JSON document to stdout (dump: one object a line).")
    var json = false
}

/// The operator tool.
@main
struct SensorLogTool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sensorlog",
        abstract: "Inspect and maintain a sensorlog data directory.",
        version: SensorLogVersion.current,
        subcommands: [Stats.self, Dump.self, Verify.self, Groups.self, Sensors.self, ResetOffsets.self, Compact.self, DeleteSensor.self, Retention.self, Backup.self, Restore.self, RebuildAggregates.self, Keys.self, ClusterCommand.self])
}
