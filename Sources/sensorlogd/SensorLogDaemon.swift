public import ArgumentParser
import Aggregator
import Foundation
import HTTPAPI
import Ingest
import LogStore
import Logging
import Metrics
import NIOCore
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
            """,
        version: SensorLogVersion.current)

    @Option(help: "Data directory (created when missing; default ./data).")
    var dataDir: String?

    @Option(help: "TCP port of the line-protocol listener (0 picks a free port; default 9009).")
    var tcpPort: Int?

    @Option(help: "HTTP port (0 picks a free port; default 8080).")
    var httpPort: Int?

    @Option(help: "Address both listeners bind to (default 127.0.0.1). Beyond loopback, configure API keys.")
    var bind: String?

    @Option(help: "Partitions of a new log (fixed once the log exists; default 8).")
    var partitions: Int?

    @Option(help: "When an append is durable: always (fdatasync before acknowledging, group commit), interval (the default), never.")
    var fsync: FsyncPolicy?

    @Option(help: "Fsync period in milliseconds under --fsync interval (default 100).")
    var fsyncIntervalMs: Int?

    @Option(help: "Roll the active segment at this size in bytes (at least 65536; default 67108864).")
    var segmentBytes: Int?

    @Option(help: "File of API keys, one per line (# comments). With keys, every route but /health and /metrics needs X-API-Key.")
    var apiKeysFile: String?

    @Option(help: "Readings a second per API key (per client address without keys); off when absent.")
    var rateLimit: Double?

    @Option(help: "Origin allowed by CORS (e.g. https://dashboard.example); off when absent.")
    var corsOrigin: String?

    @Option(help: "Largest POST body in bytes (default 1048576).")
    var maxBodyBytes: Int?

    @Option(help: "Most line-protocol connections at once (default 1024).")
    var maxConnections: Int?

    @Option(help: "Close a connection silent for this many seconds (a line-protocol one the server paused excepted; on HTTP, idle keep-alive or a stalled request; default 300).")
    var idleTimeoutSeconds: Int?

    @Option(help: "Longest line-protocol line in bytes; longer lines are skipped and counted (default 65536).")
    var maxLineBytes: Int?

    @Option(name: .customLong("sensor-type"),
            help: "An accepted type, optionally with its valid range: NAME or NAME=MIN:MAX. Repeat for each; replaces the default temperature, humidity=0:100, pressure.")
    var sensorTypes: [String] = []

    @Option(help: "Log level: trace, debug, info (the default), notice, warning, error, critical.")
    var logLevel: Logger.Level?

    @Option(help: "File of line-protocol public keys in QuestDB's auth.db form (KEY_ID ec-p-256-sha256 X Y a line): every line-protocol connection then authenticates as QuestDB's clients do (username/token settings), and the listener may listen on --bind.")
    var tcpAuthFile: String?

    @Flag(help: "With API keys configured and no --tcp-auth-file, let the unauthenticated line protocol listen on --bind beyond loopback anyway; without it, it listens on 127.0.0.1 only.")
    var tcpBeyondLoopback = false

    /// Every flag's value, else its environment variable's, else the embedded default.
    func settings(_ environment: Environment = Environment()) throws -> Settings {
        let e = environment
        let limits = Limits()
        return Settings(
            dataDir: try e.value(dataDir, "DATA_DIR") ?? "./data",
            tcpPort: try e.value(tcpPort, "TCP_PORT") ?? 9009,
            httpPort: try e.value(httpPort, "HTTP_PORT") ?? 8080,
            bind: try e.value(bind, "BIND") ?? "127.0.0.1",
            partitions: try e.value(partitions, "PARTITIONS"),
            fsync: try e.value(fsync, "FSYNC") ?? .interval,
            fsyncIntervalMs: try e.value(fsyncIntervalMs, "FSYNC_INTERVAL_MS") ?? 100,
            segmentBytes: try e.value(segmentBytes, "SEGMENT_BYTES") ?? limits.segmentBytes,
            keysFile: try e.value(apiKeysFile, "API_KEYS_FILE"),
            rateLimit: try e.value(rateLimit, "RATE_LIMIT"),
            corsOrigin: try e.value(corsOrigin, "CORS_ORIGIN"),
            maxBodyBytes: try e.value(maxBodyBytes, "MAX_BODY_BYTES") ?? limits.maxBodyBytes,
            maxConnections: try e.value(maxConnections, "MAX_CONNECTIONS") ?? limits.maxConnections,
            idleTimeoutSeconds: try e.value(idleTimeoutSeconds, "IDLE_TIMEOUT_SECONDS") ?? 300,
            maxLineBytes: try e.value(maxLineBytes, "MAX_LINE_BYTES") ?? limits.maxLineBytes,
            sensorTypes: sensorTypes.isEmpty ? (e.text("SENSOR_TYPES")?.split(separator: ",").map(String.init) ?? []) : sensorTypes,
            logLevel: try e.value(logLevel, "LOG_LEVEL") ?? .info,
            tcpAuthFile: try e.value(tcpAuthFile, "TCP_AUTH_FILE"),
            tcpBeyondLoopback: try tcpBeyondLoopback || (e.value(nil as Bool?, "TCP_BEYOND_LOOPBACK") ?? false))
    }

    /// The names after `SENSORLOG_` that something reads (SENSORLOG_API_KEYS holds keys themselves).
    static let environmentNames: Set<String> = [
        "DATA_DIR", "TCP_PORT", "HTTP_PORT", "BIND", "PARTITIONS", "FSYNC", "FSYNC_INTERVAL_MS", "SEGMENT_BYTES",
        "API_KEYS_FILE", "RATE_LIMIT", "CORS_ORIGIN", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "IDLE_TIMEOUT_SECONDS",
        "MAX_LINE_BYTES", "SENSOR_TYPES", "LOG_LEVEL", "TCP_AUTH_FILE", "TCP_BEYOND_LOOPBACK", "API_KEYS",
    ]

    static func limits(_ s: Settings) throws -> Limits {
        var limits = Limits()
        limits.partitions = s.partitions ?? limits.partitions
        limits.segmentBytes = s.segmentBytes
        limits.fsyncInterval = .milliseconds(s.fsyncIntervalMs)
        limits.maxBodyBytes = s.maxBodyBytes
        limits.maxConnections = s.maxConnections
        limits.idleTimeout = .seconds(s.idleTimeoutSeconds)
        limits.maxLineBytes = s.maxLineBytes
        do { try limits.validate() } catch { throw ValidationError(error.description) }
        return limits
    }

    static func types(_ specs: [String]) throws -> SensorTypes {
        guard !specs.isEmpty else { return .standard }
        var ranges: [String: ClosedRange<Double>?] = [:]
        for spec in specs {
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

    static func apiKeys(file: String?, environment: Environment = Environment()) throws -> [String] {
        var keys: [String] = []
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read --api-keys-file \(file)")
            }
            keys += text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        }
        if let env = environment.variables["SENSORLOG_API_KEYS"] {
            let given = env.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            // Set but empty is a mistake (an unset shell variable, a stray comma), and turning
            // authentication off for it would fail open.
            guard !given.isEmpty else {
                throw ValidationError("SENSORLOG_API_KEYS is set but holds no key; unset it to run without API keys")
            }
            keys += given
        }
        if let file, keys.isEmpty { throw ValidationError("--api-keys-file \(file) holds no key") }
        return keys
    }

    static func lineProtocolKeys(file: String?) throws -> LineProtocolKeys? {
        guard let file else { return nil }
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read --tcp-auth-file \(file)") }
        do { return try LineProtocolKeys(text: text) } catch { throw ValidationError("--tcp-auth-file \(file): \(error)") }
    }

    func validate() throws {
        let s = try settings()
        _ = try Self.lineProtocolKeys(file: s.tcpAuthFile)
        _ = try Self.limits(s)
        _ = try Self.types(s.sensorTypes)
        _ = try Self.apiKeys(file: s.keysFile)
        guard (0...65535).contains(s.tcpPort) else { throw ValidationError("--tcp-port (SENSORLOG_TCP_PORT) must be 0-65535, got \(s.tcpPort)") }
        guard (0...65535).contains(s.httpPort) else { throw ValidationError("--http-port (SENSORLOG_HTTP_PORT) must be 0-65535, got \(s.httpPort)") }
        guard s.fsyncIntervalMs > 0 else { throw ValidationError("--fsync-interval-ms (SENSORLOG_FSYNC_INTERVAL_MS) must be positive") }
        guard s.idleTimeoutSeconds > 0 else { throw ValidationError("--idle-timeout-seconds (SENSORLOG_IDLE_TIMEOUT_SECONDS) must be positive") }
        if let rate = s.rateLimit { guard rate > 0 && rate.isFinite else { throw ValidationError("--rate-limit (SENSORLOG_RATE_LIMIT) must be positive") } }
    }

    func run() async throws {
        let settings = try settings()
        LoggingSystem.bootstrap { label in
            var handler = JSONLogHandler(label: label)
            handler.logLevel = settings.logLevel
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(DescribedMetricsFactory(registry: registry))
        let logger = Logger(label: "sensorlogd")
        let unknown = Environment().unknownNames(known: Self.environmentNames)
        if !unknown.isEmpty {
            logger.warning("environment variables no flag reads (misspelt?)", metadata: ["names": "\(unknown.joined(separator: ","))"])
        }

        let limits = try Self.limits(settings)
        let log = try openLog(settings, limits: limits, logger: logger)
        let pipeline: IngestPipeline
        do {
            pipeline = try await IngestPipeline(log: log, validator: ReadingValidator(types: try Self.types(settings.sensorTypes), limits: limits),
                                                metrics: IngestMetrics())
        } catch {
            logger.critical("cannot read the log; run `sensorlog verify --data-dir \(settings.dataDir)` to find the damage and `--repair` to salvage it",
                            metadata: ["error": "\(error)"])
            try? log.close()
            throw ExitCode(74)
        }
        let keys = try Self.apiKeys(file: settings.keysFile)
        try finishInterruptedRepair(log, logger: logger)
        let aggregator: AggregatorService
        do {
            aggregator = try AggregatorService(log: log, logger: logger)
        } catch {
            logger.critical("cannot open the aggregates store", metadata: ["error": "\(error)"])
            try? log.close()
            throw ExitCode(74)
        }
        let tcpKeys = try Self.lineProtocolKeys(file: settings.tcpAuthFile)
        let tcpHost = Self.lineProtocolHost(settings, keysOn: !keys.isEmpty, tcpAuth: tcpKeys != nil)
        logAccess(settings, keys: keys, tcpKeys: tcpKeys, tcpHost: tcpHost, logger: logger)
        let tcp = LineProtocolServer(configuration: .init(host: tcpHost, port: settings.tcpPort, limits: limits, keys: tcpKeys),
                                     pipeline: pipeline, logger: logger)
        // Both listeners bind before `ready`: a port in use stops start-up with its name, not a
        // stack of errors after the server said it was up.
        do {
            try await tcp.start()
        } catch {
            try? log.close()
            Self.failToListen("line protocol", host: tcpHost, port: settings.tcpPort, error: error, logger: logger)
        }
        let http = makeHTTP(settings, keys: keys, limits: limits, pipeline: pipeline, aggregator: aggregator, registry: registry, logger: logger)

        // Shutdown runs in reverse: HTTP, the line protocol (drains into the log), the aggregator
        // (commits what it folded), the log.
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: LogService(log: log, logger: logger)), .init(service: aggregator), .init(service: tcp),
                       .init(service: http)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as ListenError {
            Self.failToListen("http", host: settings.bind, port: settings.httpPort, error: error.underlying, logger: logger)
        } catch {
            // A shutdown on a failing disk may both lose readings and fail to close the log:
            // the loss decides the exit status.
            try Self.exitIfLost(pipeline, logger: logger)
            throw error
        }
        try Self.exitIfLost(pipeline, logger: logger)
    }

    /// A `verify --repair` interrupted between changing the log and rebuilding the aggregates
    /// leaves them holding folds of records the log no longer has; serving them would count a
    /// producer's resend twice. Finish the rebuild before anything is served.
    func finishInterruptedRepair(_ log: Log, logger: Logger) throws {
        guard AggregateRebuild.isPending(dataDirectory: log.dataDirectory) else { return }
        logger.warning("an interrupted verify --repair left the aggregates to rebuild: rebuilding them from the log before serving")
        do {
            let result = try AggregateRebuild.rebuildInPlace(dataDirectory: log.dataDirectory)
            logger.info("aggregates rebuilt", metadata: ["readings": "\(result.readings)"])
        } catch {
            logger.critical("cannot rebuild the aggregates; run `sensorlog verify --repair` with the server stopped", metadata: ["error": "\(error)"])
            try? log.close()
            throw ExitCode(74)
        }
    }

    func openLog(_ settings: Settings, limits: Limits, logger: Logger) throws -> Log {
        let fsyncTimer = Metrics.Timer(label: "sensorlog_fsync_duration_seconds", preferredDisplayUnit: .seconds)
        let configuration = LogConfiguration(limits: limits, fsync: settings.fsync, onSync: { _, ns in fsyncTimer.recordNanoseconds(ns) })
        let log: Log
        do {
            log = try Log.open(dataDirectory: settings.dataDir, configuration: configuration)
        } catch {
            var metadata: Logger.Metadata = ["error": "\(error)", "code": "\(error.code)", "data_dir": "\(settings.dataDir)"]
            if error.code != .locked && error.code != .io {
                metadata["hint"] = "run `sensorlog verify --data-dir \(settings.dataDir)` to list the damage, then `sensorlog verify --repair` (server stopped) to salvage it"
            }
            logger.critical("cannot open the log", metadata: metadata)
            throw ExitCode(error.code == .locked ? 75 : 74)
        }
        if let asked = settings.partitions, log.metadata.partitions != asked {
            logger.warning("--partitions ignored: the log already exists with its own partition count",
                           metadata: ["partitions": "\(log.metadata.partitions)"])
        }
        for p in log.partitions { logRecovery(p.recovery, logger) }
        return log
    }

    func makeHTTP(_ settings: Settings, keys: [String], limits: Limits, pipeline: IngestPipeline, aggregator: AggregatorService,
                  registry: PrometheusCollectorRegistry, logger: Logger) -> ListeningService<HTTPServer.App> {
        let gauges = LogGauges(log: pipeline.log, aggregator: aggregator)
        let listener = ListeningService<HTTPServer.App>()
        let app = HTTPServer.make(
            configuration: HTTPServerConfiguration(host: settings.bind, port: settings.httpPort, apiKeys: keys, rateLimit: settings.rateLimit,
                                                   corsOrigin: settings.corsOrigin, limits: limits),
            pipeline: pipeline, aggregator: aggregator, logger: logger,
            metricsText: {
                gauges.refresh()
                return registry.emitToString()
            },
            onRunning: { port in
                listener.markListening()
                let sensors = await pipeline.sensorCount()
                logger.info("http listening", metadata: ["address": "\(settings.bind):\(port)"])
                logger.info("sensorlogd ready", metadata: [
                    "data_dir": "\(pipeline.log.dataDirectory)", "partitions": "\(pipeline.log.partitions.count)", "fsync": "\(settings.fsync)",
                    "sensors": "\(sensors)", "pid": "\(getpid())", "version": "\(SensorLogVersion.current)",
                ])
            })
        listener.wrap(app)
        return listener
    }

    /// Where the line protocol listens. Without its own keys it has no authentication, so with
    /// API keys on it stays on loopback unless the operator explicitly lets it out.
    static func lineProtocolHost(_ s: Settings, keysOn: Bool, tcpAuth: Bool) -> String {
        keysOn && !tcpAuth && !isLoopback(s.bind) && !s.tcpBeyondLoopback ? "127.0.0.1" : s.bind
    }

    func logAccess(_ s: Settings, keys: [String], tcpKeys: LineProtocolKeys?, tcpHost: String, logger: Logger) {
        let tcp = "\(tcpHost):\(s.tcpPort)"
        if let tcpKeys {
            logger.info("line protocol authenticates every connection (QuestDB's ECDSA challenge)",
                        metadata: ["line_protocol": "\(tcp)", "tcp_keys": "\(tcpKeys.count)", "http_keys": "\(keys.count)"])
            if keys.isEmpty && !Self.isLoopback(s.bind) {
                logger.warning("HTTP listens beyond loopback with no API keys: anyone who can reach it can write", metadata: ["bind": "\(s.bind)"])
            }
        } else if keys.isEmpty {
            logger.info("API keys off: no --api-keys-file or SENSORLOG_API_KEYS (the embedded default)")
            if !Self.isLoopback(s.bind) {
                logger.warning("listening beyond loopback with no API keys: anyone who can reach this host can write", metadata: ["bind": "\(s.bind)"])
            }
        } else if tcpHost != s.bind {
            logger.info("API keys on for HTTP; the line protocol has no authentication and listens on loopback only (--tcp-beyond-loopback to open it)",
                        metadata: ["keys": "\(keys.count)", "line_protocol": "\(tcp)"])
        } else if !Self.isLoopback(tcpHost) {
            logger.warning("API keys on for HTTP, but the line protocol listens beyond loopback WITHOUT authentication (--tcp-beyond-loopback): anyone who can reach this port can write",
                           metadata: ["keys": "\(keys.count)", "line_protocol": "\(tcp)"])
        } else {
            logger.info("API keys on for HTTP; the line protocol listens on loopback only", metadata: ["keys": "\(keys.count)", "line_protocol": "\(tcp)"])
        }
    }

    static func exitIfLost(_ pipeline: IngestPipeline, logger: Logger) throws {
        guard pipeline.lostReadings > 0 else { return }
        logger.error("shutdown lost readings that were read but could not be appended", metadata: ["readings": "\(pipeline.lostReadings)"])
        throw ExitCode(74)
    }

    /// A listener could not bind: say which, and exit 69 (EX_UNAVAILABLE).
    static func failToListen(_ name: String, host: String, port: Int, error: any Error, logger: Logger) -> Never {
        logger.critical("cannot listen: \(name) port \(port) on \(host)", metadata: [
            "listener": "\(name)", "address": "\(host):\(port)", "error": "\(error)",
        ])
        Glibc.exit(69)
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

    /// Only an address, never a name that merely starts like one (`127.example.com`).
    static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" { return true }
        guard let address = try? SocketAddress(ipAddress: host, port: 0) else { return false }
        switch address {
        case .v4(let v4): return UInt32(bigEndian: v4.address.sin_addr.s_addr) >> 24 == 127
        case .v6: return host == "::1" || address.ipAddress == "::1"
        default: return false
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

