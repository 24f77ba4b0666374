import Aggregator
import ArgumentParser
import Foundation
import LogStore
import SensorLogCore

/// `sensorlog retention`.
struct Retention: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Delete whole closed segments older than an age, or beyond a size per partition.",
        discussion: """
            Deletes from the start of each partition only. With --older-than, an active segment \
            whose readings are all older is closed first and goes too (--max-bytes never takes the \
            active segment). Refuses while \
            a consumer group (the aggregator included) has not read a segment yet, unless --force. \
            Remembers, per partition, the newest timestamp it removed: sensorlogd then refuses older \
            readings as too old, so a late resend is never counted twice. While sensorlogd runs, \
            the server deletes as a job, and never past what its aggregator has folded (that part \
            is refused, saying why); --dry-run only reads.

            Examples:
              sensorlog retention --data-dir ./data --older-than 30d --dry-run
              sensorlog retention --data-dir ./data --older-than 720h
              sensorlog retention --data-dir ./data --max-bytes 10737418240
            """)

    @OptionGroup var options: CommonOptions
    @Option(help: "Delete segments whose readings are all older than this (e.g. 30d, 12h, 90m, 3600s).") var olderThan: String?
    @Option(help: "Delete the oldest segments until each partition holds at most this many bytes.") var maxBytes: Int64?
    @Flag(help: "Delete even what a consumer group has not read yet.") var force = false
    @Flag(help: "Only say what would be deleted.") var dryRun = false

    static func seconds(_ text: String) -> Int64? { DurationText.parse(text).map { $0.components.seconds } }

    func validate() throws {
        guard olderThan != nil || maxBytes != nil else { throw ValidationError("give --older-than or --max-bytes") }
        if let olderThan, Self.seconds(olderThan) == nil { throw ValidationError("--older-than takes a number with d, h, m or s") }
        if let maxBytes, maxBytes < 0 { throw ValidationError("--max-bytes must be >= 0") }
    }

    func run() throws {
        let directory: LogDirectory
        do { directory = try LogDirectory(dataDirectory: options.dataDir) } catch { Terminal.fail("\(error)", code: .noInput) }
        // A dry run only reads, so it runs beside sensorlogd (the disk-full runbook starts with it).
        let cutoff = olderThan.flatMap(Self.seconds).map { WallClock.nowNanoseconds() - $0 * 1_000_000_000 }
        var lock: DirectoryLock?
        if !dryRun {
            var parameters: [String: Any] = ["force": force]
            if let olderThan { parameters["older_than"] = olderThan }
            if let maxBytes { parameters["max_bytes"] = maxBytes }
            let probe = AdminClient.lockOrDelegate(directory.dataDirectory, operation: "retention", parameters: parameters, label: "retention",
                                                   json: options.json)
            // Closing stale active segments opens the log as its writer, which takes the lock.
            probe.release()
            if let cutoff { closeStaleActiveSegments(directory, cutoff: cutoff, force: force) }
            do { lock = try DirectoryLock(dataDirectory: directory.dataDirectory) } catch { Terminal.fail(error.message, code: .locked) }
        }
        defer { lock?.release() }
        let candidates: [LogStore.Retention.Candidate]
        let blocked: [String]
        do {
            candidates = try LogStore.Retention.plan(directory, olderThan: cutoff, maxBytes: maxBytes)
            blocked = try unread(candidates, directory)
        } catch {
            Terminal.fail("\(error)", code: .dataError)
        }
        let refused = !blocked.isEmpty && !force
        let deleting = !dryRun && !refused && !candidates.isEmpty
        if deleting, let lock {
            do { try LogStore.Retention.apply(candidates, dataDirectory: directory.dataDirectory, partitions: directory.partitionCount, held: lock) } catch {
                Terminal.fail("\(error)", code: .ioError)
            }
        }
        report(candidates, blocked: blocked, deleted: deleting)
        if refused {
            for b in blocked { Terminal.error("refusing: \(b)") }
            Terminal.fail("\(blocked.count) segment(s) not yet read by a consumer group; let it catch up or pass --force", code: .problemsFound)
        }
    }

    /// Closes the active segments whose readings are all older than the cutoff, as the log's
    /// writer (this takes and releases the directory lock), so that they can go whole like any
    /// closed segment: with 64 MiB segments a small log may never have closed one.
    /// Leaves them open when a consumer group has not read them (the run then refuses anyway).
    func closeStaleActiveSegments(_ directory: LogDirectory, cutoff: Int64, force: Bool) {
        do {
            let active = try LogStore.Retention.plan(directory, olderThan: cutoff, maxBytes: nil).filter(\.isActive)
            let stale = Set(active.map(\.partition))
            guard try !stale.isEmpty && (force || unread(active, directory).isEmpty) else { return }
            var limits = Limits()
            limits.partitions = directory.partitionCount
            let log = try Log.open(dataDirectory: directory.dataDirectory, configuration: LogConfiguration(limits: limits, fsync: .interval))
            defer { try? log.close() }
            try log.rollActiveSegments(only: stale)
        } catch let error as LogError where error.code == .locked {
            Terminal.fail(error.message, code: .locked)
        } catch {
            Terminal.fail("cannot close the active segments: \(error)", code: .ioError)
        }
    }

    /// Why each candidate may not go yet: a group (the aggregator included) has not read it.
    func unread(_ candidates: [LogStore.Retention.Candidate], _ directory: LogDirectory) throws -> [String] {
        try RetentionReport.unread(candidates, dataDirectory: directory.dataDirectory, partitions: directory.partitionCount)
    }

    func report(_ candidates: [LogStore.Retention.Candidate], blocked: [String], deleted: Bool) {
        let (json, lines) = RetentionReport.report(candidates, refused: force ? [] : blocked, deleted: deleted, dryRun: dryRun)
        if options.json { Terminal.printJSON(json) } else { for line in lines { print(line) } }
    }
}
