public import ArgumentParser
import Aggregator
import Foundation
import HTTPAPI
import Ingest
import LogStore
import Logging
import Metrics
import Prometheus
import SensorLogCore
import ServiceLifecycle
import Synchronization
import UnixSignals

/// The sensorlog server: the log, the line-protocol listener, the HTTP API.
@main
struct SensorLogDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sensorlogd",
        abstract: "The sensorlog server: ingests sensor readings into a partitioned, append-only log.",
        discussion: """
            Starts on embedded defaults: data in ./data, line protocol on TCP 9009, HTTP on 8080, \
            both bound to 127.0.0.1, fsync every 100 ms, no API keys. SIGTERM or SIGINT stops \
            accepting, appends and fsyncs everything already read, and exits 0.

            Every flag has an environment equivalent: SENSORLOG_ plus the flag in capitals with \
            underscores (SENSORLOG_DATA_DIR, SENSORLOG_FSYNC, ...); a flag wins over the environment. \
            SENSORLOG_API_KEYS holds comma-separated API keys.

            Examples:
              sensorlogd
              sensorlogd --data-dir /var/lib/sensorlog --fsync always
              sensorlogd --bind 0.0.0.0 --api-keys-file /etc/sensorlog/keys --rate-limit 5000
              sensorlogd --sensor-type temperature --sensor-type humidity=0:100 --sensor-type co2=0:10000
            """)

    @Option(help: "Data directory (created when missing).")
    var dataDir = env("DATA_DIR") ?? "./data"

    @Option(help: "TCP port of the line-protocol listener (0 picks a free port).")
    var tcpPort = env("TCP_PORT").flatMap { Int($0) } ?? 9009

    @Option(help: "HTTP port (0 picks a free port).")
    var httpPort = env("HTTP_PORT").flatMap { Int($0) } ?? 8080

    @Option(help: "Address both listeners bind to. Beyond loopback, configure API keys.")
    var bind = env("BIND") ?? "127.0.0.1"

    @Option(help: "Partitions of a new log (fixed once the log exists).")
    var partitions = env("PARTITIONS").flatMap { Int($0) } ?? Limits().partitions

    @Option(help: "When an append is durable: always (fdatasync before acknowledging, group commit), interval, never.")
    var fsync = env("FSYNC").flatMap { FsyncPolicy(rawValue: $0) } ?? .interval

    @Option(help: "Fsync period in milliseconds under --fsync interval.")
    var fsyncIntervalMs = env("FSYNC_INTERVAL_MS").flatMap { Int($0) } ?? 100

    @Option(help: "Roll the active segment at this size in bytes (at least 65536).")
    var segmentBytes = env("SEGMENT_BYTES").flatMap { Int($0) } ?? Limits().segmentBytes

    @Option(help: "File of API keys, one per line (# comments). With keys, every route but /health and /metrics needs X-API-Key.")
    var apiKeysFile: String?

    @Option(help: "Readings a second per API key (per client address without keys); off when absent.")
    var rateLimit: Double?

    @Option(help: "Origin allowed by CORS (e.g. https://dashboard.example); off when absent.")
    var corsOrigin: String?

    @Option(help: "Largest POST body in bytes.")
    var maxBodyBytes = env("MAX_BODY_BYTES").flatMap { Int($0) } ?? Limits().maxBodyBytes

    @Option(help: "Most line-protocol connections at once.")
    var maxConnections = env("MAX_CONNECTIONS").flatMap { Int($0) } ?? Limits().maxConnections

    @Option(help: "Close a connection silent for this many seconds (a line-protocol one the server paused excepted; on HTTP, idle keep-alive or a stalled request).")
    var idleTimeoutSeconds = env("IDLE_TIMEOUT_SECONDS").flatMap { Int($0) } ?? 300

    @Option(help: "Longest line-protocol line in bytes; longer lines are skipped and counted.")
    var maxLineBytes = env("MAX_LINE_BYTES").flatMap { Int($0) } ?? Limits().maxLineBytes

    @Option(name: .customLong("sensor-type"),
            help: "An accepted type, optionally with its valid range: NAME or NAME=MIN:MAX. Repeat for each; replaces the default temperature, humidity=0:100, pressure.")
    var sensorTypes: [String] = env("SENSOR_TYPES").map { $0.split(separator: ",").map(String.init) } ?? []

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = env("LOG_LEVEL") ?? "info"

    static func env(_ name: String) -> String? {
        ProcessInfo.processInfo.environment["SENSORLOG_" + name].flatMap { $0.isEmpty ? nil : $0 }
    }

    // Optional flags fall back to the environment here (ArgumentParser wants no default on them).
    var keysFile: String? { apiKeysFile ?? Self.env("API_KEYS_FILE") }
    var readingsPerSecond: Double? { rateLimit ?? Self.env("RATE_LIMIT").flatMap { Double($0) } }
    var allowedOrigin: String? { corsOrigin ?? Self.env("CORS_ORIGIN") }

    func limits() throws -> Limits {
        var limits = Limits()
        limits.partitions = partitions
        limits.segmentBytes = segmentBytes
        limits.fsyncInterval = .milliseconds(fsyncIntervalMs)
        limits.maxBodyBytes = maxBodyBytes
        limits.maxConnections = maxConnections
        limits.idleTimeout = .seconds(idleTimeoutSeconds)
        limits.maxLineBytes = maxLineBytes
        do { try limits.validate() } catch { throw ValidationError(error.description) }
        return limits
    }

    func types() throws -> SensorTypes {
        guard !sensorTypes.isEmpty else { return .standard }
        var ranges: [String: ClosedRange<Double>?] = [:]
        for spec in sensorTypes {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            let name = parts[0].trimmingCharacters(in: .whitespaces)
            guard !name.isEmpty, name.utf8.count <= Limits().maxTypeBytes, name.utf8.allSatisfy({ $0 > 32 && $0 < 127 && $0 != 44 && $0 != 61 }) else {
                throw ValidationError("bad --sensor-type '\(spec)': a name of printable ASCII without spaces, commas or '='")
            }
            if parts.count == 2 {
                let bounds = parts[1].split(separator: ":").map { Double($0) }
                guard bounds.count == 2, let lo = bounds[0], let hi = bounds[1], lo.isFinite, hi.isFinite, lo <= hi else {
                    throw ValidationError("bad --sensor-type '\(spec)': the range is MIN:MAX with MIN <= MAX")
                }
                ranges[name] = .some(lo...hi)
            } else {
                ranges[name] = .some(nil)
            }
        }
        // The dedupe keeps a sensor's type in one byte.
        guard ranges.count <= 200 else { throw ValidationError("at most 200 --sensor-type values, got \(ranges.count)") }
        return SensorTypes(ranges: ranges)
    }

    func apiKeys() throws -> [String] {
        var keys: [String] = []
        if let file = keysFile {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read --api-keys-file \(file)")
            }
            keys += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        }
        if let env = ProcessInfo.processInfo.environment["SENSORLOG_API_KEYS"] {
            let given = env.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            // Set but empty is a mistake (an unset shell variable, a stray comma), and turning
            // authentication off for it would fail open.
            guard !given.isEmpty else {
                throw ValidationError("SENSORLOG_API_KEYS is set but holds no key; unset it to run without API keys")
            }
            keys += given
        }
        if let file = keysFile, keys.isEmpty { throw ValidationError("--api-keys-file \(file) holds no key") }
        return keys
    }

    func validate() throws {
        _ = try limits()
        _ = try types()
        _ = try apiKeys()
        guard (0...65535).contains(tcpPort), (0...65535).contains(httpPort) else { throw ValidationError("ports must be 0-65535") }
        guard fsyncIntervalMs > 0 else { throw ValidationError("--fsync-interval-ms must be positive") }
        guard idleTimeoutSeconds > 0 else { throw ValidationError("--idle-timeout-seconds must be positive") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown --log-level \(logLevel)") }
        if let rateLimit = readingsPerSecond { guard rateLimit > 0 && rateLimit.isFinite else { throw ValidationError("--rate-limit must be positive") } }
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = JSONLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "sensorlogd")

        let limits = try limits()
        let fsyncTimer = Metrics.Timer(label: "sensorlog_fsync_duration_seconds", preferredDisplayUnit: .seconds)
        let configuration = LogConfiguration(limits: limits, fsync: fsync, onSync: { _, ns in fsyncTimer.recordNanoseconds(ns) })
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
        for p in log.partitions { logRecovery(p.recovery, logger) }

        let metrics = IngestMetrics()
        let pipeline: IngestPipeline
        do {
            pipeline = try await IngestPipeline(log: log, validator: ReadingValidator(types: try types(), limits: limits), metrics: metrics)
        } catch {
            logger.critical("cannot read the log", metadata: ["error": "\(error)"])
            try? log.close()
            throw ExitCode(74)
        }

        let keys = try apiKeys()
        if keys.isEmpty {
            logger.info("API keys off: no --api-keys-file or SENSORLOG_API_KEYS (the embedded default)")
            if !Self.isLoopback(bind) {
                logger.warning("listening beyond loopback with no API keys: anyone who can reach this host can write", metadata: ["bind": "\(bind)"])
            }
        } else {
            logger.info("API keys on", metadata: ["keys": "\(keys.count)"])
        }

        let aggregator: AggregatorService
        do {
            aggregator = try AggregatorService(log: log, logger: logger)
        } catch {
            logger.critical("cannot open the aggregates store", metadata: ["error": "\(error)"])
            try? log.close()
            throw ExitCode(74)
        }
        let gauges = LogGauges(log: log, aggregator: aggregator)
        let tcp = LineProtocolServer(
            configuration: .init(host: bind, port: tcpPort, limits: limits), pipeline: pipeline, logger: logger)
        let http = HTTPServer.make(
            configuration: HTTPServerConfiguration(host: bind, port: httpPort, apiKeys: keys, rateLimit: readingsPerSecond,
                                                   corsOrigin: allowedOrigin, limits: limits),
            pipeline: pipeline, aggregator: aggregator, logger: logger,
            metricsText: {
                gauges.refresh()
                return registry.emitToString()
            },
            onRunning: { port in logger.info("http listening", metadata: ["address": "\(bind):\(port)"]) })
        let sensors = await pipeline.sensorCount()
        logger.info("sensorlogd ready", metadata: [
            "data_dir": "\(log.dataDirectory)", "partitions": "\(log.partitions.count)", "fsync": "\(fsync)",
            "sensors": "\(sensors)", "pid": "\(getpid())",
        ])

        // Shutdown runs in reverse: HTTP, the line protocol (drains into the log), the aggregator
        // (commits what it folded), the log.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: LogService(log: log, logger: logger)), .init(service: aggregator), .init(service: tcp),
                       .init(service: http)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    func logRecovery(_ r: PartitionRecovery, _ logger: Logger) {
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

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host.hasPrefix("127.") || host == "::1"
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

/// `sensorlog_log_end_offset{partition}`, `sensorlog_log_bytes{partition}` and
/// `sensorlog_consumer_lag{group,partition}`, set at scrape time.
final class LogGauges: Sendable {
    let log: Log
    let aggregator: AggregatorService
    let endOffsets: [Metrics.Gauge]
    let bytes: [Metrics.Gauge]
    let lags = Mutex<[String: Metrics.Gauge]>([:])

    init(log: Log, aggregator: AggregatorService) {
        self.log = log
        self.aggregator = aggregator
        endOffsets = log.partitions.map { Metrics.Gauge(label: "sensorlog_log_end_offset", dimensions: [("partition", String($0.id))]) }
        bytes = log.partitions.map { Metrics.Gauge(label: "sensorlog_log_bytes", dimensions: [("partition", String($0.id))]) }
    }

    func refresh() {
        for (i, p) in log.partitions.enumerated() {
            endOffsets[i].record(Double(p.endOffset))
            bytes[i].record(Double(p.bytes))
        }
        for group in GroupLag.all(log: log, aggregator: aggregator) {
            for p in group.partitions {
                let key = group.group + "/" + String(p.partition)
                let gauge = lags.withLock { g in
                    if let gauge = g[key] { return gauge }
                    let gauge = Metrics.Gauge(label: "sensorlog_consumer_lag", dimensions: [("group", group.group), ("partition", String(p.partition))])
                    g[key] = gauge
                    return gauge
                }
                gauge.record(Double(p.lag))
            }
        }
    }
}

extension FsyncPolicy: ExpressibleByArgument {}
