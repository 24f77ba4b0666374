public import ArgumentParser
import Cluster
import Daemon
import JetStream
import Foundation
import Ingest
import MQTT
import LogStore
import Logging
import Metrics
import Prometheus
import SensorLogCore

/// The sensorlog server: the log, the line-protocol listener, the HTTP API.
@main
struct SensorLogDaemon: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sensorlogd",
        abstract: "The sensorlog server: ingests sensor readings into a partitioned, append-only log.",
        discussion: """
            Starts on embedded defaults: data in ./data, line protocol on TCP 9009, HTTP on 8080, \
            both bound to 127.0.0.1, fsync every 100 ms, no API keys. SIGTERM or SIGINT stops \
            accepting, appends and fsyncs everything already read, and exits 0. SIGHUP reloads \
            the API keys file and the TLS certificate without dropping connections.

            Every flag has an environment equivalent: SENSORLOG_ plus the flag in capitals with \
            underscores (SENSORLOG_DATA_DIR, SENSORLOG_FSYNC, ...); a flag wins over the environment. \
            SENSORLOG_API_KEYS holds comma-separated API keys.

            Examples:
              sensorlogd
              sensorlogd --data-dir /var/lib/sensorlog --fsync always
              sensorlogd --bind 0.0.0.0 --api-keys-file /etc/sensorlog/keys --rate-limit 5000
              sensorlogd --bind 0.0.0.0 --tls-cert /etc/sensorlog/cert.pem --tls-key /etc/sensorlog/key.pem --api-keys-file /etc/sensorlog/keys
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

    @Option(help: "File of API keys, one per line (# comments): KEY (may ingest and read) or KEY role[,role] with roles ingest, read, admin. With keys, every route but /health and /metrics needs X-API-Key, and /admin/ the admin role.")
    var apiKeysFile: String?

    @Option(help: "Readings a second per API key (per client address without keys); off when absent.")
    var rateLimit: Double?

    @Option(help: "Origin allowed by CORS (e.g. https://dashboard.example); off when absent.")
    var corsOrigin: String?

    @Option(help: "Largest POST /sensor/data body in bytes (default 1048576).")
    var maxBodyBytes: Int?

    @Option(help: "Largest line-protocol body over HTTP (/write, /api/v2/write) in bytes, after gzip inflation (default 25000000, InfluxDB's).")
    var maxWriteBodyBytes: Int?

    @Option(help: "Most line-protocol connections at once (default 1024).")
    var maxConnections: Int?

    @Option(help: "Most distinct sensors the server takes; a reading of a new sensor past it is refused too_many_sensors (0: no bound; default 1000000).")
    var maxSensors: Int?

    @Option(help: "Most HTTP connections at once; one more is closed as it is accepted and counted (default 1024).")
    var maxHttpConnections: Int?

    @Option(help: "Close an HTTP connection that has not sent a whole request head (request line and headers) within this many seconds of connecting (default 10).")
    var httpHeaderTimeoutSeconds: Int?

    @Option(help: "Close an HTTP connection whose request body has not arrived whole within this many seconds of its head (default 60).")
    var httpRequestTimeoutSeconds: Int?

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

    @Option(help: "Delete closed segments whose readings are all older than this (e.g. 30d, 12h, 90m, 3600s); off when absent.")
    var retentionTime: String?

    @Option(help: "Delete the oldest closed segments while a partition holds more than this (bytes, or with K, M, G, T: 10G); off when absent.")
    var retentionBytes: String?

    @Option(help: "Seconds between maintenance passes: retention, then background compaction (default 60).")
    var maintenanceIntervalSeconds: Int?

    @Option(help: "Background compaction of closed segments written in small batches: on (the default) or off.")
    var compaction: Switch?

    @Option(help: "Bytes a second background compaction reads at most (or with K, M, G: 64M; default 32M, at least 1M).")
    var compactionBytesPerSecond: String?

    @Option(help: "Subscribe to this MQTT broker (mqtt://host[:port], or mqtts:// for TLS) at QoS 1 with a persistent session; each message is acknowledged once its readings are durable. Off when absent.")
    var mqttURL: String?

    @Option(help: "Topic filter to subscribe to (repeatable; default sensors/#).")
    var mqttTopic: [String] = []

    @Option(help: "Where a topic supplies what a payload leaves out, e.g. sensors/{location}/{sensor_id} (levels: literal, +, {sensor_id}, {location}, {type}; a last #).")
    var mqttTopicTemplate: String?

    @Option(help: "The MQTT client id: the name of the broker's session for sensorlogd (default sensorlogd).")
    var mqttClientID: String?

    @Option(help: "MQTT user name.")
    var mqttUsername: String?

    @Option(help: "MQTT password (prefer SENSORLOG_MQTT_PASSWORD: a flag shows in ps).")
    var mqttPassword: String?

    @Option(help: "PEM file of the CA certificates an mqtts:// broker's certificate is checked against (default: the system's).")
    var mqttCaFile: String?

    @Option(help: "PEM file of the server's certificate (then any intermediates): both listeners speak only TLS, HTTPS and the line protocol as QuestDB's tcps::. Needs --tls-key. Reloaded on SIGHUP.")
    var tlsCert: String?

    @Option(help: "PEM file of the private key of --tls-cert. Reloaded on SIGHUP.")
    var tlsKey: String?

    @Option(help: "PEM file of the CA certificates a client's certificate must chain to: with it, both listeners refuse a client without one (and the line protocol may listen on --bind). Reloaded on SIGHUP.")
    var tlsClientCa: String?

    @Flag(help: "With API keys configured and no --tcp-auth-file, let the unauthenticated line protocol listen on --bind beyond loopback anyway; without it, it listens on 127.0.0.1 only.")
    var tcpBeyondLoopback = false

    @Option(help: "Cluster mode: the NATS servers (nats://h1:4222,nats://h2:4222,nats://h3:4222) whose JetStream holds each partition's stream; every node follows every stream, and the node owning a partition writes it (docs/operations.md, \"Cluster\"). Needs --node-id. Off when absent.")
    var cluster: String?

    @Option(help: "This node's name in the cluster (unique; the holder of its leases).")
    var nodeId: String?

    @Option(help: "Copies of each partition's stream on the NATS servers (default 3).")
    var clusterReplicas: Int?

    @Option(help: "Seconds a partition's lease lasts without renewal (default 6): how long a dead owner's partitions wait before another node takes them over. At least 2.")
    var clusterLeaseSeconds: Int?

    @Option(help: ArgumentHelp("Seconds in which JetStream drops a repeated message id (default 120): only the guard of an owner's own retried write, never the dedupe of readings (that is the owner's, over the whole log). Set when the streams are created; an existing stream keeps its own.", valueName: "seconds"))
    var clusterDuplicateWindowSeconds: Int?

    @Option(help: "NATS credentials file (.creds) for --cluster.")
    var natsCreds: String?

    @Option(help: "NATS user for --cluster (with SENSORLOG_NATS_PASSWORD).")
    var natsUser: String?

    @Option(help: "NATS token for --cluster (prefer SENSORLOG_NATS_TOKEN: a flag shows in ps).")
    var natsToken: String?

    @Option(help: "PEM file of the CA the NATS servers' certificates are checked against (TLS to NATS).")
    var natsCaFile: String?

    @Option(help: "PEM client certificate for NATS (with --nats-key-file).")
    var natsCertFile: String?

    @Option(help: "PEM private key of --nats-cert-file.")
    var natsKeyFile: String?

    /// Cluster mode from the `--cluster` flags; nil without `--cluster`.
    func cluster(_ e: Environment) throws -> ClusterConfiguration? {
        guard let urls = try e.value(cluster, "CLUSTER") else {
            if try e.value(nodeId, "NODE_ID") != nil { throw ValidationError("--node-id needs --cluster") }
            return nil
        }
        let list = urls.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard !list.isEmpty, list.allSatisfy({ $0.hasPrefix("nats://") || $0.hasPrefix("tls://") }) else {
            throw ValidationError("--cluster takes nats:// URLs separated by commas, e.g. nats://h1:4222,nats://h2:4222,nats://h3:4222")
        }
        guard let node = try e.value(nodeId, "NODE_ID"), !node.isEmpty,
              node.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw ValidationError("--cluster needs --node-id NAME (letters, digits, - and _), unique in the cluster")
        }
        var nats = NATSConfiguration(urls: list, name: "sensorlogd-\(node)")
        nats.credentialsFile = try e.value(natsCreds, "NATS_CREDS")
        nats.user = try e.value(natsUser, "NATS_USER")
        nats.password = e.text("NATS_PASSWORD")
        nats.token = try e.value(natsToken, "NATS_TOKEN")
        nats.tlsCAFile = try e.value(natsCaFile, "NATS_CA_FILE")
        nats.tlsCertFile = try e.value(natsCertFile, "NATS_CERT_FILE")
        nats.tlsKeyFile = try e.value(natsKeyFile, "NATS_KEY_FILE")
        guard (nats.tlsCertFile == nil) == (nats.tlsKeyFile == nil) else { throw ValidationError("--nats-cert-file and --nats-key-file go together") }
        var c = ClusterConfiguration(nats: nats, nodeID: node)
        if let replicas = try e.value(clusterReplicas, "CLUSTER_REPLICAS") {
            guard (1...5).contains(replicas) else { throw ValidationError("--cluster-replicas must be 1 to 5") }
            c.replicas = replicas
        }
        if let lease = try e.value(clusterLeaseSeconds, "CLUSTER_LEASE_SECONDS") {
            guard (2...300).contains(lease) else { throw ValidationError("--cluster-lease-seconds must be 2 to 300") }
            c.leaseTTL = .seconds(lease)
            c.renewInterval = min(.seconds(1), c.leaseTTL / 4)
        }
        if let window = try e.value(clusterDuplicateWindowSeconds, "CLUSTER_DUPLICATE_WINDOW_SECONDS") {
            guard (1...86_400).contains(window) else { throw ValidationError("--cluster-duplicate-window-seconds must be 1 to 86400") }
            c.duplicateWindow = .seconds(window)
        }
        return c
    }

    /// Every flag's value, else its environment variable's, else the embedded default.
    func settings(_ environment: Environment = Environment()) throws -> Settings {
        let e = environment
        let defaults = DaemonConfiguration()
        let limits = defaults.limits
        return Settings(
            dataDir: try e.value(dataDir, "DATA_DIR") ?? defaults.dataDirectory,
            tcpPort: try e.value(tcpPort, "TCP_PORT") ?? defaults.tcpPort,
            httpPort: try e.value(httpPort, "HTTP_PORT") ?? defaults.httpPort,
            bind: try e.value(bind, "BIND") ?? defaults.bind,
            partitions: try e.value(partitions, "PARTITIONS"),
            fsync: try e.value(fsync, "FSYNC") ?? defaults.fsync,
            fsyncIntervalMs: try e.value(fsyncIntervalMs, "FSYNC_INTERVAL_MS") ?? Int(limits.fsyncInterval / .milliseconds(1)),
            segmentBytes: try e.value(segmentBytes, "SEGMENT_BYTES") ?? limits.segmentBytes,
            keysFile: try e.value(apiKeysFile, "API_KEYS_FILE"),
            rateLimit: try e.value(rateLimit, "RATE_LIMIT"),
            corsOrigin: try e.value(corsOrigin, "CORS_ORIGIN"),
            maxBodyBytes: try e.value(maxBodyBytes, "MAX_BODY_BYTES") ?? limits.maxBodyBytes,
            maxWriteBodyBytes: try e.value(maxWriteBodyBytes, "MAX_WRITE_BODY_BYTES") ?? limits.maxWriteBodyBytes,
            maxConnections: try e.value(maxConnections, "MAX_CONNECTIONS") ?? limits.maxConnections,
            maxSensors: try e.value(maxSensors, "MAX_SENSORS") ?? limits.maxSensors,
            maxHTTPConnections: try e.value(maxHttpConnections, "MAX_HTTP_CONNECTIONS") ?? limits.maxHTTPConnections,
            httpHeaderTimeoutSeconds: try e.value(httpHeaderTimeoutSeconds, "HTTP_HEADER_TIMEOUT_SECONDS") ?? Int(limits.httpHeaderTimeout / .seconds(1)),
            httpRequestTimeoutSeconds: try e.value(httpRequestTimeoutSeconds, "HTTP_REQUEST_TIMEOUT_SECONDS") ?? Int(limits.httpRequestTimeout / .seconds(1)),
            idleTimeoutSeconds: try e.value(idleTimeoutSeconds, "IDLE_TIMEOUT_SECONDS") ?? Int(limits.idleTimeout / .seconds(1)),
            maxLineBytes: try e.value(maxLineBytes, "MAX_LINE_BYTES") ?? limits.maxLineBytes,
            sensorTypes: sensorTypes.isEmpty ? (e.text("SENSOR_TYPES")?.split(separator: ",").map(String.init) ?? []) : sensorTypes,
            logLevel: try e.value(logLevel, "LOG_LEVEL") ?? .info,
            tcpAuthFile: try e.value(tcpAuthFile, "TCP_AUTH_FILE"),
            tcpBeyondLoopback: try tcpBeyondLoopback || (e.value(nil as Bool?, "TCP_BEYOND_LOOPBACK") ?? false),
            retention: try Self.retention(time: e.value(retentionTime, "RETENTION_TIME"), bytes: e.value(retentionBytes, "RETENTION_BYTES")),
            maintenanceIntervalSeconds: try e.value(maintenanceIntervalSeconds, "MAINTENANCE_INTERVAL_SECONDS")
                ?? Int(limits.maintenanceInterval / .seconds(1)),
            compaction: try e.value(compaction, "COMPACTION") ?? .on,
            compactionBytesPerSecond: try Self.size(e.value(compactionBytesPerSecond, "COMPACTION_BYTES_PER_SECOND"),
                                                    "--compaction-bytes-per-second (SENSORLOG_COMPACTION_BYTES_PER_SECOND)")
                ?? Int64(limits.compactionBytesPerSecond),
            mqtt: try mqtt(e),
            tls: try tls(e),
            cluster: try cluster(e))
    }

    /// The listeners' TLS files; nil without `--tls-cert`.
    func tls(_ e: Environment) throws -> ServerTLS.Files? {
        let ca = try e.value(tlsClientCa, "TLS_CLIENT_CA")
        switch (try e.value(tlsCert, "TLS_CERT"), try e.value(tlsKey, "TLS_KEY")) {
        case let (cert?, key?):
            return ServerTLS.Files(certificateChain: cert, privateKey: key, clientCA: ca)
        case (nil, nil):
            if ca != nil { throw ValidationError("--tls-client-ca (SENSORLOG_TLS_CLIENT_CA) needs --tls-cert and --tls-key") }
            return nil
        default:
            throw ValidationError("--tls-cert and --tls-key (SENSORLOG_TLS_CERT, SENSORLOG_TLS_KEY) go together")
        }
    }

    /// The MQTT subscription of the `--mqtt-` flags; nil without `--mqtt-url`.
    func mqtt(_ e: Environment) throws -> MQTTConfiguration? {
        guard let url = try e.value(mqttURL, "MQTT_URL") else { return nil }
        do {
            let (host, port, tls) = try MQTTConfiguration.parseURL(url)
            let caFile = try e.value(mqttCaFile, "MQTT_CA_FILE")
            if caFile != nil && !tls { throw ValidationError("--mqtt-ca-file needs an mqtts:// --mqtt-url") }
            let topics = mqttTopic.isEmpty ? (e.text("MQTT_TOPIC")?.split(separator: ",").map(String.init) ?? ["sensors/#"]) : mqttTopic
            guard !topics.contains(where: \.isEmpty) else { throw ValidationError("--mqtt-topic must not be empty") }
            let template = try e.value(mqttTopicTemplate, "MQTT_TOPIC_TEMPLATE").map { try TopicTemplate($0) }
            return MQTTConfiguration(host: host, port: port, topics: topics, clientID: try e.value(mqttClientID, "MQTT_CLIENT_ID") ?? "sensorlogd",
                                     username: try e.value(mqttUsername, "MQTT_USERNAME"), password: try e.value(mqttPassword, "MQTT_PASSWORD"),
                                     template: template, tls: tls ? .init(caFile: caFile) : nil)
        } catch let error as TopicTemplate.Invalid {
            throw ValidationError(error.description)
        }
    }

    /// The retention policy of `--retention-time` and `--retention-bytes`.
    static func retention(time: String?, bytes: String?) throws -> RetentionPolicy {
        var policy = RetentionPolicy()
        if let time {
            guard let age = DurationText.parse(time), age > .zero else {
                throw ValidationError("--retention-time (SENSORLOG_RETENTION_TIME) takes a positive whole number with d, h, m or s, got '\(time)'")
            }
            policy.maxAge = age
        }
        policy.maxBytes = try size(bytes, "--retention-bytes (SENSORLOG_RETENTION_BYTES)")
        return policy
    }

    /// A size in the grammar of `ByteSizeText`, or nil when not given.
    static func size(_ text: String?, _ name: String) throws -> Int64? {
        guard let text else { return nil }
        guard let size = ByteSizeText.parse(text) else {
            throw ValidationError("\(name) takes bytes, or a whole number with K, M, G or T, got '\(text)'")
        }
        return size
    }

    /// The names after `SENSORLOG_` that something reads (SENSORLOG_API_KEYS holds keys themselves).
    static let environmentNames: Set<String> = [
        "DATA_DIR", "TCP_PORT", "HTTP_PORT", "BIND", "PARTITIONS", "FSYNC", "FSYNC_INTERVAL_MS", "SEGMENT_BYTES",
        "API_KEYS_FILE", "RATE_LIMIT", "CORS_ORIGIN", "MAX_BODY_BYTES", "MAX_CONNECTIONS", "MAX_SENSORS", "MAX_HTTP_CONNECTIONS", "HTTP_HEADER_TIMEOUT_SECONDS", "HTTP_REQUEST_TIMEOUT_SECONDS", "IDLE_TIMEOUT_SECONDS",
        "MAX_LINE_BYTES", "SENSOR_TYPES", "LOG_LEVEL", "TCP_AUTH_FILE", "TCP_BEYOND_LOOPBACK", "API_KEYS",
        "RETENTION_TIME", "RETENTION_BYTES", "MAINTENANCE_INTERVAL_SECONDS", "COMPACTION", "COMPACTION_BYTES_PER_SECOND",
        "MAX_WRITE_BODY_BYTES", "MQTT_URL", "MQTT_TOPIC", "MQTT_TOPIC_TEMPLATE", "MQTT_CLIENT_ID", "MQTT_USERNAME", "MQTT_PASSWORD", "MQTT_CA_FILE",
        "TLS_CERT", "TLS_KEY", "TLS_CLIENT_CA",
    ]

    static func limits(_ s: Settings) throws -> Limits {
        var limits = DaemonConfiguration.defaultLimits
        limits.partitions = s.partitions ?? limits.partitions
        limits.segmentBytes = s.segmentBytes
        limits.fsyncInterval = .milliseconds(s.fsyncIntervalMs)
        limits.maxBodyBytes = s.maxBodyBytes
        limits.maxWriteBodyBytes = s.maxWriteBodyBytes
        limits.maxConnections = s.maxConnections
        limits.maxHTTPConnections = s.maxHTTPConnections
        limits.maxSensors = s.maxSensors
        limits.httpHeaderTimeout = .seconds(s.httpHeaderTimeoutSeconds)
        limits.httpRequestTimeout = .seconds(s.httpRequestTimeoutSeconds)
        limits.idleTimeout = .seconds(s.idleTimeoutSeconds)
        limits.maxLineBytes = s.maxLineBytes
        limits.maintenanceInterval = .seconds(s.maintenanceIntervalSeconds)
        limits.compactionBytesPerSecond = Int(clamping: s.compactionBytesPerSecond)
        do { try limits.validate() } catch { throw ValidationError(error.description) }
        return limits
    }

    static func types(_ specs: [String]) throws -> SensorTypes {
        do { return try SensorTypes(specs: specs) } catch { throw ValidationError(error.description) }
    }

    static func apiKeys(file: String?, environment: Environment = Environment()) throws -> [APIKey] {
        var keys: [APIKey] = []
        if let file {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read --api-keys-file \(file)")
            }
            let lines = text.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            for (n, line) in lines.enumerated() where !line.isEmpty && !line.hasPrefix("#") {
                do { keys.append(try APIKey.parse(line: line)) } catch {
                    throw ValidationError("--api-keys-file \(file) line \(n + 1): \(error)")
                }
            }
        }
        if let env = environment.variables["SENSORLOG_API_KEYS"] {
            let given = env.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            // Set but empty is a mistake (an unset shell variable, a stray comma), and turning
            // authentication off for it would fail open.
            guard !given.isEmpty else {
                throw ValidationError("SENSORLOG_API_KEYS is set but holds no key; unset it to run without API keys")
            }
            keys += given.map { APIKey($0) }
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
        if let files = s.tls {
            do { try ServerTLS.check(files) } catch { throw ValidationError(error.description) }
        }
        if let tls = s.mqtt?.tls {
            do { _ = try MQTTConfiguration.sslContext(tls) } catch { throw ValidationError("--mqtt-ca-file: \(error)") }
        }
        guard (0...65535).contains(s.tcpPort) else { throw ValidationError("--tcp-port (SENSORLOG_TCP_PORT) must be 0-65535, got \(s.tcpPort)") }
        guard (0...65535).contains(s.httpPort) else { throw ValidationError("--http-port (SENSORLOG_HTTP_PORT) must be 0-65535, got \(s.httpPort)") }
        guard s.fsyncIntervalMs > 0 else { throw ValidationError("--fsync-interval-ms (SENSORLOG_FSYNC_INTERVAL_MS) must be positive") }
        guard s.idleTimeoutSeconds > 0 else { throw ValidationError("--idle-timeout-seconds (SENSORLOG_IDLE_TIMEOUT_SECONDS) must be positive") }
        guard s.maintenanceIntervalSeconds > 0 else {
            throw ValidationError("--maintenance-interval-seconds (SENSORLOG_MAINTENANCE_INTERVAL_SECONDS) must be positive")
        }
        if let rate = s.rateLimit { guard rate > 0 && rate.isFinite else { throw ValidationError("--rate-limit (SENSORLOG_RATE_LIMIT) must be positive") } }
    }

    func run() async throws {
        // SIGHUP's default action ends the process: until the daemon listens for it (keys reload),
        // a `systemctl reload` during start-up must not kill the server.
        signal(SIGHUP, SIG_IGN)
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
        do {
            let daemon = try await Daemon.start(try configuration(settings), logger: logger, registry: registry)
            try await daemon.run()
        } catch let error as DaemonError {
            throw ExitCode(error.status.rawValue)
        }
    }

    /// The daemon's configuration from the resolved settings, the key files read.
    func configuration(_ s: Settings) throws -> DaemonConfiguration {
        var c = DaemonConfiguration()
        c.dataDirectory = s.dataDir
        c.tcpPort = s.tcpPort
        c.httpPort = s.httpPort
        c.bind = s.bind
        c.partitions = s.partitions
        c.fsync = s.fsync
        c.limits = try Self.limits(s)
        c.types = try Self.types(s.sensorTypes)
        c.apiKeys = try Self.apiKeys(file: s.keysFile)
        if let file = s.keysFile { c.reloadKeys = { try Self.apiKeys(file: file) } }
        c.rateLimit = s.rateLimit
        c.corsOrigin = s.corsOrigin
        c.lineProtocolKeys = try Self.lineProtocolKeys(file: s.tcpAuthFile)
        c.tcpBeyondLoopback = s.tcpBeyondLoopback
        c.retention = s.retention
        c.backgroundCompaction = s.compaction == .on
        c.mqtt = s.mqtt
        c.tls = s.tls
        c.cluster = s.cluster
        return c
    }
}
