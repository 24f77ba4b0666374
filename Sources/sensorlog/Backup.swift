import Aggregator
import ArgumentParser
import Foundation
import SensorLogCore
import LogStore

/// `sensorlog backup --to DIR`.
struct Backup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Take a consistent snapshot of a data directory, while sensorlogd runs.",
        discussion: """
            The aggregates first (SQLite's online backup), then the log: closed segments are \
            reflinked where the file system offers it (btrfs, XFS: instant, and independent of the \
            data) and copied otherwise; the active segment is copied up to its last complete batch. \
            The aggregates' offsets are therefore never past the copied log's end.

            Exit codes: 64 when the target is not empty, 66 when the data directory holds no log, \
            74 on an I/O error.

            Examples:
              sensorlog backup --data-dir ./data --to /backups/sensorlog-2026-11-25
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "The backup directory (must be empty or absent).") var to: String
    @Flag(help: """
        Hard-link closed segments instead of copying them. The backup then shares its bytes with \
        the data: a damaged or overwritten segment is damaged in both, so it is no protection \
        against a bad disk or a stray write. For a quick local snapshot only.
        """)
    var hardLink = false

    func run() throws {
        let source = URL(fileURLWithPath: options.dataDir).standardizedFileURL.path
        let target = URL(fileURLWithPath: to).standardizedFileURL.path
        let started = Date()
        do {
            let directory = try LogDirectory(dataDirectory: source)
            try LogBackup.makeEmptyDirectory(target)
            let storePath = directory.layout.aggregates
            if FileManager.default.fileExists(atPath: storePath) {
                try AggregateStore(path: storePath, readOnly: true).backup(to: DataLayout(target).aggregates)
            }
            let result = try LogBackup.backup(dataDirectory: source, to: target, segments: hardLink ? .hardLink : .copy)
            report(result, to: target, seconds: Date().timeIntervalSince(started))
        } catch {
            Terminal.fail("backup failed: \(error)", code: backupExitCode(error))
        }
    }

    func report(_ result: LogBackup.Result, to target: String, seconds: Double) {
        if options.json {
            Terminal.printJSON(["files": result.files, "reflinked": result.reflinked, "copied": result.copied, "hard_links": result.linked,
                                "bytes": result.bytes, "seconds": seconds, "to": target])
        } else {
            let how = "\(result.reflinked) reflinked, \(result.copied) copied" + (hardLink ? ", \(result.linked) hard links" : "")
            print("backed up \(result.files) files (\(how)), \(result.bytes) bytes of log, to \(target) in \(String(format: "%.2f", seconds)) s")
        }
    }
}

/// docs/cli.md's exit code of a failed backup or restore: 64 for a target that is not empty, 66
/// for a source that holds no log (or is not a backup), 74 for the rest.
func backupExitCode(_ error: any Error) -> ExitStatus {
    switch (error as? LogError)?.code {
    case .invalidArgument?: return .usage
    case .invalidLog?: return .noInput
    default: return .ioError
    }
}

/// `sensorlog restore --from DIR`.
struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Restore a backup into an empty data directory.",
        discussion: """
            Exit codes: 64 when the data directory is not empty, 66 when --from is not a backup, \
            74 on an I/O error.

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
            Terminal.fail("restore failed: \(error)", code: backupExitCode(error))
        }
    }
}
