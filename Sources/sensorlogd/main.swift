public import ArgumentParser
import Foundation
import LogStore
import Logging
import SensorLogCore

/// The sensorlog server. Today it owns the log (open, recover, close cleanly); the line-protocol
/// and HTTP listeners arrive with the ingest work.
struct SensorLogDaemon: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sensorlogd",
        abstract: "The sensorlog server: a partitioned, append-only log of sensor readings.",
        discussion: """
            Starts on embedded defaults: data in ./data, line protocol on TCP 9009, HTTP on 8080, \
            both bound to 127.0.0.1, fsync every 100 ms. SIGTERM or SIGINT closes the log cleanly.

            Examples:
              sensorlogd
              sensorlogd --data-dir /var/lib/sensorlog --fsync always
            """)

    @Option(help: "Data directory (created when missing).")
    var dataDir = "./data"

    @Option(help: "TCP port of the line-protocol listener.")
    var tcpPort = 9009

    @Option(help: "HTTP port.")
    var httpPort = 8080

    @Option(help: "Address the listeners bind to.")
    var bind = "127.0.0.1"

    @Option(help: "Partitions of a new log (fixed once the log exists).")
    var partitions = Limits().partitions

    @Option(help: "When an append is durable: always (fdatasync before acknowledging, group commit), interval, never.")
    var fsync: FsyncPolicy = .interval

    @Option(help: "Fsync period in milliseconds under --fsync interval.")
    var fsyncIntervalMs = 100

    @Option(help: "Roll the active segment at this size in bytes (at least 65536).")
    var segmentBytes = Limits().segmentBytes

    func limits() throws -> Limits {
        var limits = Limits()
        limits.partitions = partitions
        limits.segmentBytes = segmentBytes
        limits.fsyncInterval = .milliseconds(fsyncIntervalMs)
        do { try limits.validate() } catch { throw ValidationError(error.description) }
        return limits
    }

    func validate() throws {
        _ = try limits()
        guard (1...65535).contains(tcpPort), (1...65535).contains(httpPort) else { throw ValidationError("ports must be 1-65535") }
        guard fsyncIntervalMs > 0 else { throw ValidationError("--fsync-interval-ms must be positive") }
    }

    func run() throws {
        LoggingSystem.bootstrap { JSONLogHandler(label: $0) }
        let logger = Logger(label: "sensorlogd")
        let configuration = LogConfiguration(limits: try limits(), fsync: fsync)
        let log: Log
        do {
            log = try Log.open(dataDirectory: dataDir, configuration: configuration)
        } catch {
            logger.critical("cannot open the log", metadata: ["error": "\(error)", "code": "\(error.code)", "data_dir": "\(dataDir)"])
            throw ExitCode(error.code == .locked ? 75 : 74)
        }
        if log.metadata.partitions != partitions && partitions != Limits().partitions {
            logger.warning("--partitions ignored: the log already exists with its own partition count",
                           metadata: ["partitions": "\(log.metadata.partitions)"])
        }
        for p in log.partitions {
            let r = p.recovery
            var metadata: Logger.Metadata = [
                "partition": "\(r.partition)", "segments": "\(r.segments)", "start_offset": "\(r.startOffset)",
                "end_offset": "\(r.endOffset)", "bytes": "\(r.bytes)", "truncated_bytes": "\(r.truncatedBytes)",
                "rebuilt_indexes": "\(r.rebuiltIndexes)",
            ]
            if let segment = r.truncatedSegment, let at = r.truncatedAtPosition {
                metadata["truncated_segment"] = "\(segment)"
                metadata["truncated_at"] = "\(at)"
                metadata["truncation_reason"] = "\(r.truncationReason ?? "")"
            }
            logger.info(r.truncatedBytes > 0 ? "partition recovered: torn tail truncated" : "partition opened", metadata: metadata)
        }
        logger.info("sensorlogd ready", metadata: [
            "data_dir": "\(log.dataDirectory)", "partitions": "\(log.partitions.count)", "fsync": "\(fsync)",
            "pid": "\(getpid())",
        ])

        let stop = DispatchSemaphore(value: 0)
        var sources: [any DispatchSourceSignal] = []
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { stop.signal() }
            source.resume()
            sources.append(source)
        }
        stop.wait()
        logger.info("shutting down")
        do {
            try log.close()
        } catch {
            logger.error("close failed", metadata: ["error": "\(error)"])
            throw ExitCode(74)
        }
        logger.info("log closed cleanly")
        _ = sources
    }
}

extension FsyncPolicy: ExpressibleByArgument {}

SensorLogDaemon.main()
