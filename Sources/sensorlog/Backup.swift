import Aggregator
import ArgumentParser
import Foundation
import LogStore

/// `sensorlog backup --to DIR`.
struct Backup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a consistent snapshot of a data directory, while sensorlogd runs.",
        discussion: """
            The aggregates first (SQLite's online backup), then the log: closed segments are hard \
            links (copies across file systems), the active segment is copied up to its last complete \
            batch. The aggregates' offsets are therefore never past the copied log's end.

            Examples:
              sensorlog backup --data-dir ./data --to /backups/sensorlog-2026-11-25
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "The backup directory (must be empty or absent).") var to: String

    func run() throws {
        let source = URL(fileURLWithPath: options.dataDir).standardizedFileURL.path
        let target = URL(fileURLWithPath: to).standardizedFileURL.path
        let started = Date()
        do {
            try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
            guard try FileManager.default.contentsOfDirectory(atPath: target).isEmpty else { Terminal.fail("\(target) is not empty", code: 64) }
            let storePath = source + "/" + AggregateStore.fileName
            if FileManager.default.fileExists(atPath: storePath) {
                try AggregateStore(path: storePath, readOnly: true).backup(to: target + "/" + AggregateStore.fileName)
            }
            let result = try LogBackup.backup(dataDirectory: source, to: target)
            let seconds = Date().timeIntervalSince(started)
            if options.json {
                Terminal.printJSON(["files": result.files, "hard_links": result.linked, "bytes": result.bytes, "seconds": seconds, "to": target])
            } else {
                print("backed up \(result.files) files (\(result.linked) hard links), \(result.bytes) bytes of log, to \(target) in \(String(format: "%.2f", seconds)) s")
            }
        } catch {
            Terminal.fail("backup failed: \(error)", code: 74)
        }
    }
}

/// `sensorlog restore --from DIR`.
struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a backup into an empty data directory.",
        discussion: """
            Examples:
              sensorlog restore --from /backups/sensorlog-2026-11-25 --data-dir ./data
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "The backup directory.") var from: String

    func run() throws {
        do {
            let result = try LogBackup.restore(from: URL(fileURLWithPath: from).standardizedFileURL.path,
                                               into: URL(fileURLWithPath: options.dataDir).standardizedFileURL.path)
            if options.json {
                Terminal.printJSON(["files": result.files, "bytes": result.bytes])
            } else {
                print("restored \(result.files) files, \(result.bytes) bytes into \(options.dataDir); start sensorlogd on it")
            }
        } catch {
            Terminal.fail("restore failed: \(error)", code: 74)
        }
    }
}
