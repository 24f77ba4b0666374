import Foundation
public import Ingest
import LineProtocol
import LogStore
import Metrics
public import Logging
public import NIOCore
public import NIOPosix
public import NIOSSL
public import SensorLogCore
public import ServiceLifecycle
import Synchronization

/// Where and how sensorlogd subscribes (`--mqtt-url` and the flags around it).
public struct MQTTConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Topic filters subscribed to at QoS 1.
    public var topics: [String]
    /// The persistent session's name: the broker keeps unacknowledged messages under it.
    public var clientID: String
    public var username: String?
    public var password: String?
    public var template: TopicTemplate?
    /// TLS to the broker (`mqtts://`): nil speaks plain TCP.
    public var tls: TLS?

    /// How the broker's certificate is checked: against `caFile` (PEM) when given, else the
    /// system's trust roots; the name is the URL's host (its IP address for an IP).
    public struct TLS: Sendable {
        public var caFile: String?
        public init(caFile: String? = nil) { self.caFile = caFile }
    }

    public init(host: String, port: Int = 1883, topics: [String] = ["sensors/#"], clientID: String = "sensorlogd",
                username: String? = nil, password: String? = nil, template: TopicTemplate? = nil, tls: TLS? = nil) {
        self.host = host
        self.port = port
        self.tls = tls
        self.topics = topics
        self.clientID = clientID
        self.username = username
        self.password = password
        self.template = template
    }

    /// `mqtt://host[:port]` (port 1883) or `mqtts://host[:port]` (TLS, port 8883).
    public static func parseURL(_ url: String) throws(TopicTemplate.Invalid) -> (host: String, port: Int, tls: Bool) {
        let tls = url.hasPrefix("mqtts://")
        guard tls || url.hasPrefix("mqtt://") else {
            throw TopicTemplate.Invalid(description: "--mqtt-url must be mqtt://host[:port] or mqtts://host[:port], got '\(url)'")
        }
        let rest = url.dropFirst(tls ? "mqtts://".count : "mqtt://".count).split(separator: "/", maxSplits: 1).first.map(String.init) ?? ""
        if let colon = rest.lastIndex(of: ":"), !rest.hasSuffix("]") {
            guard let port = Int(rest[rest.index(after: colon)...]), (1...65535).contains(port) else {
                throw TopicTemplate.Invalid(description: "--mqtt-url has a bad port: '\(url)'")
            }
            return (String(rest[..<colon]).trimmingCharacters(in: ["[", "]"]), port, tls)
        }
        guard !rest.isEmpty else { throw TopicTemplate.Invalid(description: "--mqtt-url names no host: '\(url)'") }
        return (rest.trimmingCharacters(in: ["[", "]"]), tls ? 8883 : 1883, tls)
    }

    /// The TLS context of `tls`, checked at start-up (an unreadable CA file stops it with exit 64).
    public static func sslContext(_ tls: TLS) throws -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        if let ca = tls.caFile { configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
        return try NIOSSLContext(configuration: configuration)
    }
}

/// sensorlogd as a subscriber of an MQTT broker: a persistent session at QoS 1, each message
/// acknowledged only once its readings are durable. A crash before that makes the broker send it
/// again, and the exact dedupe makes the second delivery harmless: exactly-once storage from an
/// at-least-once transport. A payload that cannot be read is counted, logged and acknowledged
/// (it would come back for ever otherwise). The broker's absence is logged and retried with
/// backoff; the other doors do not notice.
public final class MQTTIngestService: Service, Sendable {
    let configuration: MQTTConfiguration
    let pipeline: IngestPipeline
    let limits: Limits
    let logger: Logger
    let group: any EventLoopGroup
    let sslContext: NIOSSLContext?
    private let channel = Mutex<(any Channel)?>(nil)
    private let connected = Atomic<Bool>(false)
    private let connectedGauge = Gauge(label: "sensorlog_mqtt_connected")

    /// The metrics of this service, with their help text.
    public static let metricDescriptions = [
        MetricDescription("sensorlog_mqtt_connected", help: "1 while sensorlogd is subscribed to its MQTT broker, else 0 (absent without --mqtt-url)."),
    ]

    /// - Throws: a TLS configuration that cannot be loaded (the CA file).
    public init(configuration: MQTTConfiguration, pipeline: IngestPipeline, limits: Limits, logger: Logger,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) throws {
        self.sslContext = try configuration.tls.map(MQTTConfiguration.sslContext)
        self.configuration = configuration
        self.pipeline = pipeline
        self.limits = limits
        self.logger = logger
        self.group = group
        pipeline.metrics.preregister(reasons: MQTTPayload.rejectionReasons, via: .mqtt)
        connectedGauge.record(0)
    }

    /// Whether a session with the broker is up (subscribed).
    public var isConnected: Bool { connected.load(ordering: .relaxed) }

    private func setConnected(_ up: Bool) {
        connected.store(up, ordering: .relaxed)
        connectedGauge.record(up ? 1 : 0)
    }

    public func run() async throws {
        var backoff = Duration.seconds(1)
        var lastError = ""
        var failedAppend = FailedAppend()
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            do {
                // A shutdown (or the group's cancellation, when another service failed) closes
                // the session at any stage, so the daemon never waits on the broker.
                // Each session its own flag: a late append of the last one cannot mark this one.
                failedAppend = FailedAppend()
                let closed = try await withTaskCancellationOrGracefulShutdownHandler { [failedAppend] in
                    try await self.connect(failedAppend)
                } onCancelOrGracefulShutdown: { [self] in closeSession() }
                let since = ContinuousClock.now
                lastError = ""
                try? await withTaskCancellationOrGracefulShutdownHandler {
                    try await closed.get()
                } onCancelOrGracefulShutdown: { [self] in closeSession() }
                setConnected(false)
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                // Only a connection that lasted resets the backoff: a broker that takes the
                // session and drops it at once (another sensorlogd with the same client id) is
                // not retried every second.
                if failedAppend.flag.load(ordering: .relaxed) {
                    try await retryAppend()
                    backoff = .seconds(1)
                    continue
                }
                if ContinuousClock.now - since > limits.mqttKeepAlive { backoff = .seconds(1) }
                logger.warning("MQTT connection lost; reconnecting", metadata: ["broker": "\(configuration.host):\(configuration.port)"])
            } catch {
                setConnected(false)
                if Task.isShuttingDownGracefully || Task.isCancelled { break }
                // Closed by this side before the subscription was acknowledged (the redelivered
                // batch came first): the broker is fine, the log was not.
                if failedAppend.flag.load(ordering: .relaxed) {
                    try? await retryAppend()
                    backoff = .seconds(1)
                    continue
                }
                let text = "\(error)"
                // Once per kind of failure, not once per retry: a broker down for an hour is one line.
                if text != lastError {
                    logger.error("cannot reach the MQTT broker; retrying with backoff", metadata: [
                        "broker": "\(configuration.host):\(configuration.port)", "error": "\(text)", "max_backoff_s": "\(limits.mqttMaxBackoff.components.seconds)",
                    ])
                    lastError = text
                }
            }
            let wait = backoff
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: wait) }
            backoff = min(backoff * 2, limits.mqttMaxBackoff)
        }
        // What this door submitted is waited for by the line protocol's drain, which stops after
        // it: draining here would also wait for TCP producers still being served.
        logger.info("MQTT subscriber stopped")
    }

    /// After a batch the log refused (a full disk): try again as the other doors do, so that MQTT
    /// resumes with them once the disk has room.
    private func retryAppend() async throws {
        try await cancelWhenGracefulShutdown { try await Task.sleep(for: self.limits.appendRetryDelay) }
    }

    /// Opens a session: TCP, CONNECT, CONNACK, SUBSCRIBE, SUBACK.
    /// - Returns: the future of the connection's close.
    private func connect(_ failedAppend: FailedAppend) async throws -> EventLoopFuture<Void> {
        let session = MQTTSession(pipeline: pipeline, configuration: configuration, limits: limits, logger: logger,
                                  closedForFailedAppend: failedAppend)
        let channel = try await ClientBootstrap(group: group)
            .connectTimeout(.seconds(5))
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let sslContext = self.sslContext {
                        // The name checked is the URL's host; an IP address is checked as one.
                        let isAddress = (try? SocketAddress(ipAddress: self.configuration.host, port: 0)) != nil
                        try sync.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: isAddress ? nil : self.configuration.host))
                    }
                    try sync.addHandler(ByteToMessageHandler(MQTTDecoder(maxPacketBytes: self.limits.maxMQTTPayloadBytes)))
                    try sync.addHandler(MessageToByteHandler(MQTTEncoder()))
                    try sync.addHandler(session)
                }
            }
            .connect(host: configuration.host, port: configuration.port).get()
        self.channel.withLock { $0 = channel }
        do {
            let present = try await session.established.futureResult.get()
            setConnected(true)
            logger.info("MQTT subscribed", metadata: [
                "broker": "\(configuration.host):\(configuration.port)", "topics": "\(configuration.topics.joined(separator: ","))",
                "client_id": "\(configuration.clientID)", "session_present": "\(present)",
            ])
        } catch {
            channel.close(promise: nil)
            throw error
        }
        return channel.closeFuture
    }

    /// At shutdown: stop reading, let a submission under way finish and acknowledge, then
    /// DISCONNECT. What was not acknowledged stays in the broker's session for the next start.
    private func closeSession() {
        guard let channel = channel.withLock({ $0 }), channel.isActive else { return }
        channel.eventLoop.execute {
            _ = channel.setOption(ChannelOptions.autoRead, value: false)
            (try? channel.pipeline.syncOperations.handler(type: MQTTSession.self))?.finish(channel)
        }
    }
}
