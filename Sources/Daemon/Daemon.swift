public import Aggregator
import Foundation
import HTTPAPI
public import Ingest
public import LogStore
public import Logging
import Metrics
import MQTT
import NIOCore
public import Prometheus
public import SensorLogCore
public import ServiceLifecycle
public import Cluster
import JetStream
import Synchronization
public import UnixSignals

/// Why a daemon could not start or stopped badly, with the exit status sensorlogd gives it.
public struct DaemonError: Error, CustomStringConvertible {
    public let status: ExitStatus
    public let description: String
}

/// sensorlogd as a value: configuration in, services out. `start` opens the log (recovery), the
/// ingest pipeline and the aggregates and binds the line protocol; `run` serves until a signal
/// or `stop()`, then shuts the services down in the reverse of `serviceOrder`.
public final class Daemon: Sendable {
    /// The services in start order; shutdown runs in reverse: HTTP, MQTT (acknowledges what it
    /// wrote, leaves the rest with the broker), the line protocol (drains what it read into the
    /// log), maintenance (stops its job), the aggregator (commits what it folded), the log
    /// (fsync, close).
    /// In cluster mode the node stops after the listeners (its leases released once nothing
    /// more is read) and before the log.
    public static let serviceOrder = ["log", "aggregator", "maintenance", "cluster", "admin", "line protocol", "mqtt", "http"]

    public let configuration: DaemonConfiguration
    public let log: Log
    public let pipeline: IngestPipeline
    public let aggregator: AggregatorService
    /// Retention and background compaction, one job at a time.
    public let maintenance: MaintenanceService
    /// The operator's jobs (`/admin/` and the admin socket).
    let admin: AdminService
    let adminSocket: AdminSocketService
    /// The line protocol's port (the bound one when 0 was asked).
    public let tcpPort: Int
    let tcp: LineProtocolServer
    /// The MQTT subscriber, or a service that waits for the shutdown when there is none.
    let mqtt: any Service
    let http: ListeningService<HTTPServer.App>
    /// This node of a cluster (`--cluster`), or nil.
    public let cluster: ClusterNode?
    let logger: Logger
    private let boundHTTPPort = PortBox()
    /// The HTTP API's keys, which a SIGHUP replaces.
    let keyRing: APIKeyRing
    /// The listeners' certificate, which a SIGHUP reloads; nil without TLS.
    let tls: ServerTLS?
    private let group = Mutex<ServiceGroup?>(nil)
    private let stopped = StopLog()

    private init(configuration: DaemonConfiguration, log: Log, pipeline: IngestPipeline, aggregator: AggregatorService,
                 tcp: LineProtocolServer, tcpPort: Int, mqtt: any Service, http: ListeningService<HTTPServer.App>, tls: ServerTLS?,
                 cluster: ClusterNode?, logger: Logger) {
        self.configuration = configuration
        self.cluster = cluster
        self.tls = tls
        keyRing = APIKeyRing(configuration.apiKeys)
        self.log = log
        self.pipeline = pipeline
        self.aggregator = aggregator
        self.maintenance = MaintenanceService(log: log, pipeline: pipeline, aggregator: aggregator, policy: configuration.retention,
                                              compacts: configuration.backgroundCompaction, time: configuration.time, logger: logger)
        self.tcp = tcp
        self.mqtt = mqtt
        self.tcpPort = tcpPort
        self.http = http
        self.logger = logger
        admin = AdminService(log: log, pipeline: pipeline, aggregator: aggregator, maintenance: maintenance, logger: logger)
        adminSocket = AdminSocketService(admin: admin, layout: DataLayout(log.dataDirectory), limits: configuration.limits, logger: logger)
    }

    /// Opens everything and binds the line protocol (HTTP binds in `run`, before "ready").
    /// - Parameter registry: where `/metrics` is read from (the one MetricsSystem was bootstrapped with).
    public static func start(_ c: DaemonConfiguration, logger: Logger, registry: PrometheusCollectorRegistry) async throws(DaemonError) -> Daemon {
        var c = c
        c.limits = OpenFiles.fit(c.limits, logger: logger)
        let tls = try loadTLS(c, logger: logger)
        let log = try openLog(c, logger: logger)
        func fail(_ status: ExitStatus, _ message: String, _ error: any Error) -> DaemonError {
            logger.critical("\(message)", metadata: ["error": "\(error)"])
            try? log.close()
            return DaemonError(status: status, description: "\(message): \(error)")
        }
        let pipeline: IngestPipeline
        do {
            pipeline = try await IngestPipeline(log: log, validator: ReadingValidator(types: c.types, limits: c.limits), metrics: IngestMetrics(),
                                                time: c.time)
        } catch {
            throw fail(.ioError, "cannot read the log; run `sensorlog verify --data-dir \(c.dataDirectory)` to find the damage and `--repair` to salvage it", error)
        }
        do {
            try finishInterruptedRepair(log, logger: logger)
        } catch {
            throw fail(.ioError, "cannot rebuild the aggregates; run `sensorlog verify --repair` with the server stopped", error)
        }
        let aggregator: AggregatorService
        do {
            aggregator = try AggregatorService(log: log, logger: logger, time: c.time)
        } catch {
            throw fail(.ioError, "cannot open the aggregates store", error)
        }
        // Before any listener binds: a refusal here leaves nothing open.
        var cluster: ClusterNode?
        if let clusterConfiguration = c.cluster {
            do {
                cluster = try await ClusterNode(clusterConfiguration, log: log, pipeline: pipeline, logger: logger)
            } catch {
                throw fail(.unavailable, "cannot join the cluster at \(clusterConfiguration.nats.urls.joined(separator: ","))", error)
            }
        }
        let mqtt: any Service
        do {
            mqtt = try c.mqtt.map { try MQTTIngestService(configuration: $0, pipeline: pipeline, limits: c.limits, logger: logger) } ?? IdleService()
        } catch {
            throw fail(.usage, "cannot load the MQTT TLS configuration (--mqtt-ca-file)", error)
        }
        let tcpHost = Access.lineProtocolHost(c)
        Access.log(c, tcpHost: tcpHost, logger: logger)
        let tcp = LineProtocolServer(configuration: .init(host: tcpHost, port: c.tcpPort, limits: c.limits, keys: c.lineProtocolKeys, tls: tls),
                                     pipeline: pipeline, logger: logger)
        // Both listeners bind before `ready`: a port in use stops start-up with its name.
        let tcpPort: Int
        do {
            tcpPort = try await tcp.start()
        } catch {
            try? log.close()
            throw listenFailure("line protocol", host: tcpHost, port: c.tcpPort, error: error, logger: logger)
        }
        let http = ListeningService<HTTPServer.App>()
        let daemon = Daemon(configuration: c, log: log, pipeline: pipeline, aggregator: aggregator, tcp: tcp, tcpPort: tcpPort,
                            mqtt: mqtt, http: http, tls: tls, cluster: cluster, logger: logger)
        http.wrap(daemon.makeHTTP(registry: registry))
        return daemon
    }

    /// Serves until one of `signals` (or `stop()`), then shuts down in order.
    /// - Throws: `DaemonError` for a port that cannot be bound (69), readings lost at shutdown or
    ///   a log that would not close (74).
    public func run(signals: [UnixSignal] = [.sigterm, .sigint]) async throws(DaemonError) {
        let node: any Service = cluster.map { ClusterService(node: $0) } ?? IdleService()
        let services: [any Service] = [LogService(log: log, logger: logger), aggregator, maintenance, node, adminSocket, tcp, mqtt, http]
        let named = zip(Self.serviceOrder, services).map { name, service in
            ServiceGroupConfiguration.ServiceConfiguration(service: StopRecorder(name: name, service: service, stopped: stopped))
        }
        let group = ServiceGroup(configuration: .init(services: named, gracefulShutdownSignals: signals, logger: logger))
        self.group.withLock { $0 = group }
        let reloader = Task { [self] in
            for await _ in await UnixSignalsSequence(trapping: .sighup) {
                reloadKeys()
                reloadTLS()
            }
        }
        defer { reloader.cancel() }
        do {
            try await group.run()
        } catch let error as ListenError {
            throw Self.listenFailure("http", host: configuration.bind, port: configuration.httpPort, error: error.underlying, logger: logger)
        } catch {
            // A service failed (the log would not close on a failing disk). A shutdown may both
            // lose readings and fail to close the log: the loss decides the exit status.
            logger.critical("a service failed; shutting down", metadata: ["error": "\(error)"])
            try exitIfLost()
            throw DaemonError(status: .ioError, description: "\(error)")
        }
        try exitIfLost()
    }

    /// SIGHUP: the API keys are read again and replace the old ones for every request from now
    /// on; a file that cannot be read or holds no key keeps the old keys (and says why). A server
    /// started without keys stays without: turning them on takes a restart.
    func reloadKeys() {
        guard let read = configuration.reloadKeys, !keyRing.isEmpty else {
            logger.info("SIGHUP: no API keys file to reload")
            return
        }
        do {
            let keys = try read()
            guard !keys.isEmpty else { throw DaemonError(status: .usage, description: "no key in it") }
            keyRing.replace(keys)
            logger.info("SIGHUP: API keys reloaded", metadata: ["keys": "\(keys.count)", "hashed": "\(keys.count { $0.sha256 != nil })"])
        } catch {
            logger.error("SIGHUP: API keys not reloaded; the old ones stay", metadata: ["error": "\(error)"])
        }
    }

    /// SIGHUP: the certificate, key and client CA are read again; connections accepted from now
    /// on use them, open ones keep theirs. Files that do not load keep the old ones (and say why).
    func reloadTLS() {
        guard let tls else { return }
        do {
            let notAfter = try tls.reload()
            logger.info("SIGHUP: TLS certificate reloaded", metadata: [
                "certificate": "\(tls.files.certificateChain)", "not_after": "\(Date(timeIntervalSince1970: TimeInterval(notAfter)))",
            ])
            Self.warnIfExpired(notAfter, logger: logger)
        } catch {
            logger.error("SIGHUP: TLS certificate not reloaded; the old one stays", metadata: ["error": "\(error)"])
        }
    }

    /// Starts the graceful shutdown `run` performs on a signal.
    public func stop() async {
        await group.withLock { $0 }?.triggerGracefulShutdown()
    }

    /// The HTTP port once it listens (the bound one when 0 was asked).
    public var httpPort: Int? { boundHTTPPort.port.withLock { $0 } }

    /// The services that have stopped, in the order they stopped.
    public var stoppedServices: [String] { stopped.names.withLock { $0 } }

    private func exitIfLost() throws(DaemonError) {
        guard pipeline.lostReadings > 0 else { return }
        logger.error("shutdown lost readings that were read but could not be appended", metadata: ["readings": "\(pipeline.lostReadings)"])
        throw DaemonError(status: .ioError, description: "\(pipeline.lostReadings) readings lost at shutdown")
    }

    /// A listener could not bind: say which.
    static func listenFailure(_ name: String, host: String, port: Int, error: any Error, logger: Logger) -> DaemonError {
        logger.critical("cannot listen: \(name) port \(port) on \(host)", metadata: [
            "listener": "\(name)", "address": "\(host):\(port)", "error": "\(error)",
        ])
        return DaemonError(status: .unavailable, description: "cannot listen: \(name) port \(port) on \(host): \(error)")
    }

    private func makeHTTP(registry: PrometheusCollectorRegistry) -> HTTPServer.App {
        let c = configuration
        let gauges = LogGauges(log: log, aggregator: aggregator)
        let (pipeline, logger, http, bound, tls) = (pipeline, logger, http, boundHTTPPort, tls)
        var clusterStatus: (@Sendable () async -> any Encodable & Sendable)?
        if let node = cluster { clusterStatus = { await node.status() } }
        return HTTPServer.make(
            configuration: {
                var http = HTTPServerConfiguration(host: c.bind, port: c.httpPort, apiKeys: c.apiKeys, rateLimit: c.rateLimit,
                                                   corsOrigin: c.corsOrigin, limits: c.limits)
                http.keyRing = keyRing
                http.tls = tls
                return http
            }(),
            pipeline: pipeline, aggregator: aggregator, admin: admin, logger: logger,
            clusterStatus: clusterStatus,
            metricsText: {
                gauges.refresh()
                return registry.emitToString()
            },
            // `http` weakly: it holds this app, and the cycle would keep a stopped server (and
            // through it the log) in memory (the address sanitizer's leak report).
            onRunning: { [weak http] port in
                http?.markListening()
                bound.port.withLock { $0 = port }
                let sensors = await pipeline.sensorCount()
                logger.info("http listening", metadata: ["address": "\(c.bind):\(port)", "tls": "\(tls != nil)"])
                logger.info("sensorlogd ready", metadata: [
                    "data_dir": "\(pipeline.log.dataDirectory)", "partitions": "\(pipeline.log.partitions.count)", "fsync": "\(c.fsync)",
                    "sensors": "\(sensors)", "pid": "\(getpid())", "version": "\(SensorLogVersion.current)",
                ])
            })
    }
}

/// A door that is off: runs until the shutdown.
struct IdleService: Service {
    func run() async throws {
        try? await gracefulShutdown()
    }
}

/// Runs a cluster node until the shutdown reaches it (after the listeners stopped).
struct ClusterService: Service {
    let node: ClusterNode

    func run() async throws {
        let loop = Task { await node.run() }
        try? await gracefulShutdown()
        loop.cancel()
        await loop.value
    }
}

/// The HTTP port, once bound.
final class PortBox: Sendable {
    let port = Mutex<Int?>(nil)
}

/// The services that stopped, in order.
final class StopLog: Sendable {
    let names = Mutex<[String]>([])
}

/// Records when a service's `run` returns: the shutdown order, observed.
struct StopRecorder: Service {
    let name: String
    let service: any Service
    let stopped: StopLog

    func run() async throws {
        defer { stopped.names.withLock { $0.append(name) } }
        try await service.run()
    }
}
