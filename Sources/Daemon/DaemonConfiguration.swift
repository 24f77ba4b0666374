public import Ingest
public import LogStore
public import MQTT
public import SensorLogCore
public import Cluster

/// What a `Daemon` runs with: every flag, environment variable and file already read and
/// parsed (sensorlogd does that). The defaults are the embedded ones, defined here once.
public struct DaemonConfiguration: Sendable {
    public var dataDirectory = "./data"
    /// TCP port of the line protocol (0 picks a free one).
    public var tcpPort = 9009
    /// HTTP port (0 picks a free one).
    public var httpPort = 8080
    /// Address both listeners bind to.
    public var bind = "127.0.0.1"
    /// Partitions asked for; nil leaves a new log at `limits.partitions` and an old one as it is.
    public var partitions: Int?
    public var fsync: FsyncPolicy = .interval
    public var limits = DaemonConfiguration.defaultLimits
    public var types: SensorTypes = .standard
    /// HTTP API keys with their roles; empty turns authentication off (and `/admin/` answers on
    /// loopback only).
    public var apiKeys: [APIKey] = []
    /// Reads the keys again (SIGHUP); nil when they come from nowhere that can change.
    public var reloadKeys: (@Sendable () throws -> [APIKey])?
    /// Readings a second per key (per client address without keys); nil is off.
    public var rateLimit: Double?
    public var corsOrigin: String?
    /// The line protocol's public keys (`--tcp-auth-file`); nil means no authentication.
    public var lineProtocolKeys: LineProtocolKeys?
    /// TLS on both listeners (`--tls-cert`, `--tls-key`, `--tls-client-ca`); nil: plain text.
    public var tls: ServerTLS.Files?
    /// With API keys and no line-protocol keys, listen beyond loopback anyway.
    public var tcpBeyondLoopback = false
    /// What the server deletes by itself (off by default).
    public var retention = RetentionPolicy()
    /// Rewrite closed segments written in small batches in the background (on by default).
    public var backgroundCompaction = true
    public var time: any TimeSource = SystemTime()
    /// The MQTT broker to subscribe to; nil (the default) subscribes to none.
    public var mqtt: MQTTConfiguration?
    /// Cluster mode (`--cluster`, `--node-id`): the partitions' streams on NATS JetStream; nil
    /// (the default) is one node on its own.
    public var cluster: ClusterConfiguration?

    public init() {}

    /// `Limits()` with the server's own defaults where they differ.
    public static var defaultLimits: Limits { Limits() }
}
