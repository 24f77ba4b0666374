import Aggregator
import Foundation
import Ingest
import LogStore
import Logging
import Metrics
import SensorLogCore
import ServiceLifecycle

extension Daemon {
    /// Loads the listeners' certificate before anything opens: a file that does not load stops
    /// start-up with its name (exit 64).
    static func loadTLS(_ c: DaemonConfiguration, logger: Logger) throws(DaemonError) -> ServerTLS? {
        guard let files = c.tls else { return nil }
        do {
            let tls = try ServerTLS(files: files, limits: c.limits)
            logger.info("TLS on both listeners", metadata: [
                "certificate": "\(files.certificateChain)", "client_certificates": "\(files.clientCA == nil ? "not asked" : "required")",
                "not_after": "\(Date(timeIntervalSince1970: TimeInterval(tls.notAfter)))",
            ])
            warnIfExpired(tls.notAfter, logger: logger)
            return tls
        } catch {
            logger.critical("cannot load the TLS certificate", metadata: ["error": "\(error)"])
            throw DaemonError(status: .usage, description: "cannot load the TLS certificate: \(error)")
        }
    }

    /// An expired certificate still loads (the operator may be mid-renewal), but every client
    /// that checks it will refuse the server: say so loudly.
    static func warnIfExpired(_ notAfter: Int, logger: Logger) {
        guard TimeInterval(notAfter) < Date().timeIntervalSince1970 else { return }
        logger.warning("the TLS certificate has expired: clients will refuse it; renew it and send SIGHUP",
                       metadata: ["not_after": "\(Date(timeIntervalSince1970: TimeInterval(notAfter)))"])
    }

    /// Opens (and recovers) the log, logging each partition's recovery.
    static func openLog(_ c: DaemonConfiguration, logger: Logger) throws(DaemonError) -> Log {
        let fsyncTimer = Metrics.Timer(label: "sensorlog_fsync_duration_seconds", preferredDisplayUnit: .seconds)
        var limits = c.limits
        if let asked = c.partitions { limits.partitions = asked }
        let configuration = LogConfiguration(limits: limits, fsync: c.fsync, onSync: { _, ns in fsyncTimer.recordNanoseconds(ns) }, time: c.time)
        let log: Log
        do {
            log = try Log.open(dataDirectory: c.dataDirectory, configuration: configuration)
        } catch {
            var metadata: Logger.Metadata = ["error": "\(error)", "code": "\(error.code)", "data_dir": "\(c.dataDirectory)"]
            if error.code != .locked && error.code != .io {
                metadata["hint"] = "run `sensorlog verify --data-dir \(c.dataDirectory)` to list the damage, then `sensorlog verify --repair` (server stopped) to salvage it"
            }
            logger.critical("cannot open the log", metadata: metadata)
            throw DaemonError(status: error.code == .locked ? .locked : .ioError, description: "cannot open the log: \(error)")
        }
        if let asked = c.partitions, log.metadata.partitions != asked {
            logger.warning("--partitions ignored: the log already exists with its own partition count",
                           metadata: ["partitions": "\(log.metadata.partitions)"])
        }
        for p in log.partitions { logRecovery(p.recovery, logger) }
        return log
    }

    /// A `verify --repair` interrupted between changing the log and rebuilding the aggregates
    /// leaves them holding folds of records the log no longer has; serving them would count a
    /// producer's resend twice. Finish the rebuild before anything is served.
    static func finishInterruptedRepair(_ log: Log, logger: Logger) throws {
        guard AggregateRebuild.isPending(dataDirectory: log.dataDirectory) else { return }
        logger.warning("an interrupted verify --repair left the aggregates to rebuild: rebuilding them from the log before serving")
        let result = try AggregateRebuild.rebuildInPlace(dataDirectory: log.dataDirectory, held: log.lock)
        logger.info("aggregates rebuilt", metadata: ["readings": "\(result.readings)"])
    }

    static func logRecovery(_ r: PartitionRecovery, _ logger: Logger) {
        var metadata: Logger.Metadata = [
            "partition": "\(r.partition)", "segments": "\(r.segments)", "start_offset": "\(r.startOffset)",
            "end_offset": "\(r.endOffset)", "bytes": "\(r.bytes)", "truncated_bytes": "\(r.truncatedBytes)",
            "rebuilt_indexes": "\(r.rebuiltIndexes)", "journal_batches": "\(r.journalBatches)",
        ]
        if let segment = r.truncatedSegment, let at = r.truncatedAtPosition {
            metadata["truncated_segment"] = "\(segment)"
            metadata["truncated_at"] = "\(at)"
            metadata["truncation_reason"] = "\(r.truncationReason ?? "")"
        }
        if let gap = r.journalGap {
            metadata["journal_gap"] = "\(gap)"
            logger.warning("partition recovered: commit journal records past a gap not replayed", metadata: metadata)
        } else {
            logger.info(r.truncatedBytes > 0 ? "partition recovered: torn tail truncated" : "partition opened", metadata: metadata)
        }
    }
}

/// Owns the log for the service group: when everything after it has stopped, closes it (fsync).
struct LogService: Service {
    let log: Log
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        do {
            try log.close()
            logger.info("log closed cleanly")
        } catch {
            logger.error("log close failed", metadata: ["error": "\(error)"])
            throw error
        }
    }
}
