import LineProtocol
import LogStore
public import Logging
public import NIOCore
public import NIOPosix
public import SensorLogCore
public import ServiceLifecycle
import NIOSSL
import Synchronization

/// The line-protocol listener (InfluxDB line protocol over TCP, no handshake, no acks).
///
/// Each connection parses lines in place and hands batches to the `IngestPipeline`. When the log
/// falls behind, a connection stops reading its socket (TCP backpressure) rather than queueing.
/// At shutdown it stops accepting, closes every connection, and waits until everything read has
/// been appended.
public final class LineProtocolServer: Service, Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var maxConnections: Int
        public var idleTimeout: TimeAmount
        public var maxLineBytes: Int
        /// Parsed readings a connection holds before it stops reading its socket.
        public var maxPendingReadings: Int
        /// Largest single socket read, and reads per wake-up: together the most a connection
        /// parses past `maxPendingReadings` before its pause takes effect.
        public var maxReadBytes: Int
        public var readsPerWakeup: Int
        /// When set, every connection authenticates (QuestDB's challenge-response) before its
        /// first line is read.
        public var keys: LineProtocolKeys?
        /// How long a connection may take to authenticate.
        public var authTimeout: TimeAmount
        /// When set, every connection speaks TLS (QuestDB's `tcps::`).
        public var tls: ServerTLS?

        public init(host: String = "127.0.0.1", port: Int = 9009, limits: Limits = Limits(), keys: LineProtocolKeys? = nil,
                    tls: ServerTLS? = nil) {
            self.host = host
            self.port = port
            self.keys = keys
            self.tls = tls
            self.authTimeout = .nanoseconds(Int64(limits.lineProtocolAuthTimeout / .nanoseconds(1)))
            self.maxConnections = limits.maxConnections
            self.idleTimeout = .nanoseconds(Int64(limits.idleTimeout / .nanoseconds(1)))
            self.maxLineBytes = limits.maxLineBytes
            self.maxPendingReadings = limits.maxPendingReadingsPerConnection
            self.maxReadBytes = limits.maxSocketReadBytes
            self.readsPerWakeup = limits.socketReadsPerWakeup
        }
    }

    let configuration: Configuration
    let pipeline: IngestPipeline
    let parser: LineParser
    let logger: Logger
    let group: any EventLoopGroup
    private let state = Mutex<(server: (any Channel)?, connections: [ObjectIdentifier: any Channel], nextID: Int)>((nil, [:], 0))

    public init(configuration: Configuration, pipeline: IngestPipeline, logger: Logger,
                group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.configuration = configuration
        self.pipeline = pipeline
        self.parser = LineParser(validator: pipeline.validator)
        self.logger = logger
        self.group = group
    }

    /// Binds and starts accepting.
    /// - Returns: the port bound (useful with port 0).
    @discardableResult
    public func start() async throws -> Int {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(
                minimum: 4096, initial: min(65536, configuration.maxReadBytes), maximum: configuration.maxReadBytes))
            .childChannelOption(.maxMessagesPerRead, value: UInt(configuration.readsPerWakeup))
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture { try self.admit(channel) }
            }
            .bind(host: configuration.host, port: configuration.port).get()
        state.withLock { $0.server = channel }
        let port = channel.localAddress?.port ?? configuration.port
        logger.info("line protocol listening", metadata: [
            "address": "\(configuration.host):\(port)", "max_connections": "\(configuration.maxConnections)", "tls": "\(configuration.tls != nil)",
        ])
        return port
    }

    /// Called on the new channel's event loop.
    private func admit(_ channel: any Channel) throws {
        let (id, admitted) = state.withLock { s -> (Int, Bool) in
            guard s.connections.count < configuration.maxConnections else { return (0, false) }
            s.nextID += 1
            s.connections[ObjectIdentifier(channel)] = channel
            return (s.nextID, true)
        }
        guard admitted else {
            pipeline.logRejection(logger, "connection refused: connection limit reached",
                                  metadata: ["limit": "\(configuration.maxConnections)", "remote": "\(channel.remoteAddress?.logDescription ?? "?")"])
            channel.close(promise: nil)
            return
        }
        pipeline.metrics.connections(state.withLock { $0.connections.count })
        channel.closeFuture.whenComplete { [self] _ in
            let count = state.withLock { s in
                s.connections.removeValue(forKey: ObjectIdentifier(channel))
                return s.connections.count
            }
            pipeline.metrics.connections(count)
        }
        var connectionLogger = logger
        connectionLogger[metadataKey: "connection_id"] = "\(id)"
        connectionLogger[metadataKey: "remote"] = "\(channel.remoteAddress?.logDescription ?? "?")"
        try configuration.tls?.addHandlers(to: channel, listener: "line_protocol")
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(ReadIdleHandler(timeout: configuration.idleTimeout))
        if let keys = configuration.keys {
            let refused = { [pipeline, connectionLogger] (message: String, metadata: Logger.Metadata) in
                pipeline.logRejection(connectionLogger, "\(message)", metadata: metadata, level: .warning)
            }
            try sync.addHandler(LineProtocolAuthHandler(keys: keys, timeout: configuration.authTimeout, logRefusal: refused))
        }
        try sync.addHandler(LineProtocolHandler(
            pipeline: pipeline, parser: parser, logger: connectionLogger, maxLineBytes: configuration.maxLineBytes,
            maxPendingReadings: configuration.maxPendingReadings))
    }

    /// Stops accepting, closes every connection and waits until what they read is appended.
    public func shutdown() async {
        let (server, connections) = state.withLock { s in (s.server, Array(s.connections.values)) }
        try? await server?.close()
        // Every close starts at once: a TLS connection's close waits for the peer's close_notify
        // (up to `ServerTLS`'s shutdown timeout), and one after another that would add up.
        for c in connections { c.close(promise: nil) }
        for c in connections { try? await c.closeFuture.get() }
        // channelInactive (which submits what a connection still holds) runs on the channel's
        // loop after the close; one more hop to each loop lets it run before draining.
        for c in connections { try? await c.eventLoop.submit {}.get() }
        await pipeline.drain()
        logger.info("line protocol listener stopped")
    }

    public func run() async throws {
        // sensorlogd binds before it says ready; a test or embedder may leave it to run().
        if state.withLock({ $0.server == nil }) { try await start() }
        // Suspends until the service group starts a graceful shutdown (SIGTERM/SIGINT).
        try? await gracefulShutdown()
        await shutdown()
    }
}

/// One connection: frames and parses lines in place, batches readings, submits them one batch at
/// a time (so a connection's readings keep their order) and stops reading while the pipeline is
/// behind.
final class LineProtocolHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    let pipeline: IngestPipeline
    let parser: LineParser
    let logger: Logger
    let maxPendingReadings: Int
    private var framer: LineFramer
    /// Parsed readings by partition, and how many in all.
    private var pending: [[Reading]]
    private var pendingCount = 0
    private var lineNumber = 0
    private var submitting = false
    /// A failed submission's readings are back in `pending`, waiting for the retry timer.
    private var retryScheduled = false
    private var warnedBinary = false
    private var readPaused = false
    private var closed = false
    /// Rejections counted per reason since the last flush (one metric update per batch, not per line).
    private var rejections: [String: Int] = [:]

    init(pipeline: IngestPipeline, parser: LineParser, logger: Logger, maxLineBytes: Int, maxPendingReadings: Int) {
        self.pipeline = pipeline
        self.parser = parser
        self.logger = logger
        self.maxPendingReadings = maxPendingReadings
        self.framer = LineFramer(maxLineBytes: maxLineBytes)
        self.pending = [[Reading]](repeating: [], count: pipeline.partitions.count)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        let maxLineBytes = framer.maxLineBytes  // not read inside feed: that would overlap its exclusive access
        // The per-line work touches locals only: a stored property of a class costs a dynamic
        // exclusivity check on every access.
        var pending = self.pending
        self.pending = []
        var pendingCount = self.pendingCount
        var lineNumber = self.lineNumber
        let parser = self.parser
        let pipeline = self.pipeline
        buffer.withUnsafeReadableBytes { bytes in
            framer.feed(bytes, line: { line in
                lineNumber += 1
                do throws(LineProtocolError) {
                    if var reading = try parser.parse(line, receiveTime: LineParser.noTimestamp) {
                        if reading.timestamp == LineParser.noTimestamp { reading.timestamp = pipeline.serverTimestamp() }
                        pending[pipeline.partition(for: reading.sensorID)].append(reading)
                        pendingCount += 1
                    }
                } catch {
                    reject(error, line: line, lineNumber: lineNumber)
                }
            }, tooLong: { start in
                lineNumber += 1
                reject(LineProtocolError(.lineTooLong, "line longer than \(maxLineBytes) bytes skipped"), line: start, lineNumber: lineNumber)
            })
        }
        self.pending = pending
        self.pendingCount = pendingCount
        self.lineNumber = lineNumber
        if pendingCount >= maxPendingReadings { flush(context) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            // A connection the server paused (backpressure, a retry after disk full) is silent
            // because of us: closing it would drop what its producer believes delivered.
            guard !readPaused && !submitting && !retryScheduled else { return }
            logger.info("closing idle connection")
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        if let dropped = framer.finish(), !LineParser.isBlankOrComment(dropped) {
            dropped.withUnsafeBytes {
                reject(LineProtocolError(.partialLine, "connection closed in the middle of a line"), line: $0, lineNumber: lineNumber + 1)
            }
        }
        flush(context)
        countRejections()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A TLS producer that closes its socket without close_notify (most do) is a normal end of
        // a connection here: a line it cut short is counted by the framer.
        if case .uncleanShutdown = error as? NIOSSLError {} else {
            logger.info("connection error", metadata: ["error": "\(error)"])
        }
        context.close(promise: nil)
    }

    private func reject(_ error: LineProtocolError, line: UnsafeRawBufferPointer?, lineNumber: Int? = nil) {
        let lineNumber = lineNumber ?? self.lineNumber
        rejections[error.reason.rawValue, default: 0] += 1
        var metadata: Logger.Metadata = ["reason": "\(error.reason)", "line_number": "\(lineNumber)", "error": "\(error.message)"]
        if let line {
            metadata["line_prefix"] = "\(String(decoding: UnsafeRawBufferPointer(rebasing: line.prefix(80)), as: UTF8.self))"
        }
        if error.reason == .binaryProtocol && !warnedBinary {
            // Once per connection, whatever the rate limit: the one line that explains the rest.
            warnedBinary = true
            logger.warning("binary ILP v2 is not supported: configure the client for line protocol text (protocol_version=1)", metadata: metadata)
        } else {
            pipeline.logRejection(logger, "line rejected", metadata: metadata)
        }
    }

    private func countRejections() {
        for (reason, count) in rejections { pipeline.metrics.rejected(count, via: .tcp, reason: reason) }
        rejections.removeAll(keepingCapacity: true)
    }

    /// Submits what is pending, unless a submission is already under way (or a failed one waits
    /// to be retried): then it waits, and the socket stops being read once `maxPendingReadings`
    /// pile up.
    private func flush(_ context: ChannelHandlerContext) {
        countRejections()
        guard pendingCount > 0 else { return }
        if submitting || retryScheduled {
            if pendingCount >= maxPendingReadings || retryScheduled { pauseReading(context) }
            return
        }
        let batch = pending
        let batchCount = pendingCount
        for p in pending.indices {
            pending[p] = []
            pending[p].reserveCapacity(min(batch[p].count, maxPendingReadings))
        }
        pendingCount = 0
        submitting = true
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        let pipeline = self.pipeline
        let logger = self.logger
        pipeline.begin()  // before the task exists: a shutdown's drain() must wait for it
        Task {
            var failure: LogError?
            do throws(LogError) {
                let counted = try await pipeline.submitCounting(batch, via: .tcp)
                LineProtocolHandler.logRefused(counted, pipeline: pipeline, logger: logger)
            } catch {
                failure = error
            }
            loop.execute {
                let (handler, context) = bound.value
                handler.submitting = false
                if let failure {
                    handler.submissionFailed(batch, count: batchCount, failure, context)
                } else {
                    handler.resumeReading(context)
                }
                handler.flush(context)
                // Only now: what the connection read meanwhile (say, at its close) was submitted
                // by the flush above, so a shutdown's drain() cannot return before it.
                pipeline.end()
            }
        }
    }

    /// Readings that parsed but were refused (duplicates, type mismatches, too old) are known
    /// only after the append, a batch at a time: one line a batch, with the counts and the first.
    static func logRefused(_ counted: IngestPipeline.Counted, pipeline: IngestPipeline, logger: Logger) {
        guard let (reading, outcome) = counted.example, let reason = outcome.reason else { return }
        var metadata: Logger.Metadata = ["sensor_id": "\(reading.sensorID)", "timestamp": "\(reading.timestamp)", "reason": "\(reason)"]
        for (reason, n) in counted.refused { metadata[reason] = "\(n)" }
        if case .typeMismatch(let expected) = outcome { metadata["expected_type"] = "\(expected)" }
        pipeline.logRejection(logger, "readings refused", metadata: metadata)
    }

    /// Stops reading the socket (TCP backpressure), unless already stopped or closed.
    private func pauseReading(_ context: ChannelHandlerContext) {
        guard !readPaused && !closed else { return }
        readPaused = true
        context.channel.setOption(ChannelOptions.autoRead, value: false).whenComplete { _ in }
    }

    /// Reads the socket again after `pauseReading`.
    private func resumeReading(_ context: ChannelHandlerContext) {
        guard readPaused && !closed else { return }
        readPaused = false
        context.channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        context.read()
    }

    /// The log refused a batch (disk full, I/O error). TCP has no acks, so the producer believes
    /// those readings delivered: keep them, stop reading, retry every second. Exact dedupe makes
    /// the retry safe when part of the batch did land. At shutdown they cannot be kept: said loudly
    /// (after a short while of retries, when a cluster's partition had no owner to answer).
    private func submissionFailed(_ batch: [[Reading]], count: Int, _ error: LogError, _ context: ChannelHandlerContext) {
        if pipeline.isDraining && !pipeline.retriesWhileDraining(error) {
            logger.error("readings lost at shutdown: the log cannot accept writes",
                         metadata: ["error": "\(error)", "readings": "\(count + pendingCount)"])
            pipeline.recordLost(count + pendingCount, via: .tcp)
            for p in pending.indices { pending[p].removeAll() }
            pendingCount = 0
            return
        }
        let delay = pipeline.log.configuration.limits.appendRetryDelay
        pipeline.logRejection(logger, "readings could not be appended; retrying in \(delay.components.seconds) s with the socket paused",
                              metadata: ["error": "\(error)", "readings": "\(count)"], level: .error)
        for p in pending.indices where !batch[p].isEmpty { pending[p] = batch[p] + pending[p] }
        pendingCount += count
        retryScheduled = true
        pauseReading(context)
        let pipeline = self.pipeline
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        pipeline.begin()  // the retry is a submission under way: drain() waits for it
        context.eventLoop.scheduleTask(in: .nanoseconds(Int64(delay / .nanoseconds(1)))) {
            let (handler, context) = bound.value
            handler.retryScheduled = false
            if handler.pendingCount < handler.maxPendingReadings { handler.resumeReading(context) }
            handler.flush(context)
            pipeline.end()
        }
    }
}
