package import Ingest
package import LineProtocol
import LogStore
import Logging
package import NIOCore
package import SensorLogCore
import Synchronization

/// One connection to the broker: the handshake, then messages in and acknowledgements out.
///
/// Messages are parsed as they arrive and submitted a batch at a time (what one socket read
/// brought, at most); once a batch is durable, each of its QoS 1 messages is acknowledged, in the
/// order received as MQTT requires. While a batch is being written the next one gathers, and the
/// socket stops being read when it grows past the pending bound (the broker then holds the rest).
/// Whether a session was closed by this side for a failed append (shared with the subscriber).
final class FailedAppend: Sendable {
    let flag = Atomic<Bool>(false)
}

final class MQTTSession: ChannelInboundHandler, RemovableChannelHandler {
    /// Set when this side closed the session because the log refused a batch (a full disk),
    /// perhaps before the subscription was even acknowledged: the subscriber then reconnects
    /// after the append retry delay, not with the backoff of an unreachable broker.
    let closedForFailedAppend: FailedAppend
    typealias InboundIn = MQTTPacket
    typealias OutboundOut = MQTTPacket

    /// A message read: what to acknowledge, and its readings by partition (none for a message
    /// refused whole).
    struct Message {
        var packetID: UInt16?
        var groups: [[Reading]]
    }

    let pipeline: IngestPipeline
    let configuration: MQTTConfiguration
    let limits: Limits
    let logger: Logger
    let parser: LineParser
    /// Fulfilled with `session present` once subscribed; failed when the broker refuses.
    var established: EventLoopPromise<Bool>!
    private var subscribed = false
    private var pending: [Message] = []
    private var pendingReadings = 0
    private var submitting = false
    private var readPaused = false
    private var finishing = false
    private var lastHeard = NIODeadline.now()
    private var keepAlive: RepeatedTask?

    init(pipeline: IngestPipeline, configuration: MQTTConfiguration, limits: Limits, logger: Logger,
         closedForFailedAppend: FailedAppend) {
        self.closedForFailedAppend = closedForFailedAppend
        self.pipeline = pipeline
        self.configuration = configuration
        self.limits = limits
        self.logger = logger
        self.parser = LineParser(validator: pipeline.validator, dialect: .questDB)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        established = context.eventLoop.makePromise(of: Bool.self)
    }

    /// Also when the connection never opened (no channelInactive then): the promise must end.
    func handlerRemoved(context: ChannelHandlerContext) {
        keepAlive?.cancel()
        established.fail(MQTTProtocolError("the connection closed before the subscription"))
    }

    func channelActive(context: ChannelHandlerContext) {
        let seconds = UInt16(clamping: limits.mqttKeepAlive.components.seconds)
        context.writeAndFlush(wrapOutboundOut(.connect(.init(
            clientID: configuration.clientID, cleanSession: false, keepAliveSeconds: seconds,
            username: configuration.username, password: configuration.password))), promise: nil)
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        loop.scheduleTask(in: .seconds(10)) {
            let (session, context) = bound.value
            if !session.subscribed { session.fail(context, MQTTProtocolError("no CONNACK and SUBACK within 10 s")) }
        }
        // PINGREQ at half the keep-alive; a broker silent for 1.5 keep-alives is gone.
        let interval = TimeAmount.seconds(Int64(max(1, seconds / 2)))
        keepAlive = loop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            let (session, context) = bound.value
            // While reading is paused (the log is behind) silence is ours, not the broker's.
            if session.readPaused { session.lastHeard = .now() }
            if NIODeadline.now() - session.lastHeard > .seconds(Int64(seconds) * 3 / 2) {
                session.logger.warning("MQTT broker silent past the keep-alive; reconnecting")
                context.close(promise: nil)
            } else {
                context.writeAndFlush(session.wrapOutboundOut(.pingReq), promise: nil)
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        keepAlive?.cancel()
        established.fail(MQTTProtocolError("the broker closed the connection"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(context, error)
    }

    private func fail(_ context: ChannelHandlerContext, _ error: any Error) {
        established.fail(error)
        if subscribed { logger.warning("MQTT connection failed", metadata: ["error": "\(error)"]) }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastHeard = .now()
        switch unwrapInboundIn(data) {
        case .connAck(let present, let code):
            guard code == 0 else { return fail(context, MQTTProtocolError(Self.connAckReason(code))) }
            let filters = configuration.topics.map { ($0, UInt8(1)) }
            context.writeAndFlush(wrapOutboundOut(.subscribe(packetID: 1, filters: filters)), promise: nil)
            sessionPresent = present
        case .subAck(_, let codes):
            if let refused = codes.firstIndex(of: 0x80) {
                return fail(context, MQTTProtocolError("the broker refused the subscription to '\(configuration.topics[min(refused, configuration.topics.count - 1)])'"))
            }
            if let downgraded = codes.firstIndex(of: 0) {
                // QoS 0 messages are never redelivered: what arrives while sensorlogd is away is lost.
                logger.warning("the MQTT broker granted QoS 0, not 1: messages sent while sensorlogd is away or failing are lost",
                               metadata: ["topic": "\(configuration.topics[min(downgraded, configuration.topics.count - 1)])"])
            }
            subscribed = true
            established.succeed(sessionPresent)
        case .publish(let message):
            // QoS 2 was never asked for (the subscription is at 1); its handshake is not spoken.
            guard message.qos < 2 else { return fail(context, MQTTProtocolError("the broker sent a QoS 2 message to a QoS 1 subscription")) }
            receive(message)
        case .oversizedPublish(let qos, let id, let bytes):
            pipeline.metrics.rejected(1, via: .mqtt, reason: "payload_too_large")
            pipeline.logRejection(logger, "MQTT message refused", metadata: [
                "reason": "payload_too_large", "bytes": "\(bytes)", "limit": "\(limits.maxMQTTPayloadBytes)"])
            pending.append(Message(packetID: qos > 0 ? id : nil, groups: []))
        case .pingResp, .pubAck, .pingReq, .connect, .subscribe, .disconnect:
            break
        }
    }

    private var sessionPresent = false

    private func receive(_ message: MQTTPacket.Publish) {
        let fields = configuration.template?.fields(of: message.topic) ?? [:]
        let body = MQTTPayload.decode(message.payload, fields: fields, parser: parser, limits: limits, pipeline: pipeline)
        for (reason, n) in body.refused { pipeline.metrics.rejected(n, via: .mqtt, reason: reason) }
        if let refusal = body.firstRefusal {
            pipeline.logRejection(logger, "MQTT message refused in part or whole", metadata: [
                "topic": "\(message.topic.prefix(200))", "reason": "\(refusal.reason)", "line_number": "\(refusal.line)",
                "error": "\(refusal.message)", "refused": "\(body.refusedCount)", "readings": "\(body.readingCount)"])
        }
        pending.append(Message(packetID: message.qos > 0 ? message.packetID : nil, groups: body.groups))
        pendingReadings += body.readingCount
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        submit(context)
    }

    /// Writes what is pending, unless a batch is already being written: then it waits, and the
    /// socket stops being read once the pending bound is passed.
    private func submit(_ context: ChannelHandlerContext) {
        guard !submitting, !pending.isEmpty else {
            if submitting && pendingReadings >= limits.maxPendingReadingsPerConnection { pause(context) }
            return
        }
        let batch = pending
        pending = []
        pendingReadings = 0
        var groups = [[Reading]](repeating: [], count: pipeline.log.partitions.count)
        for message in batch {
            for (p, group) in message.groups.enumerated() where !group.isEmpty { groups[p].append(contentsOf: group) }
        }
        submitting = true
        let (pipeline, logger) = (self.pipeline, self.logger)
        let loop = context.eventLoop
        let bound = NIOLoopBound((self, context), eventLoop: loop)
        pipeline.begin()  // a shutdown's drain() waits for it
        Task {
            var failure: LogError?
            do throws(LogError) {
                if groups.contains(where: { !$0.isEmpty }) { try await pipeline.submitCounting(groups, via: .mqtt) }
            } catch {
                failure = error
            }
            loop.execute {
                let (session, context) = bound.value
                session.submitting = false
                if let failure {
                    // Nothing of the batch is acknowledged: the broker sends it again after the
                    // reconnect, and the dedupe skips what did land.
                    logger.error("MQTT readings could not be appended; reconnecting so the broker redelivers them", metadata: [
                        "error": "\(failure)", "messages": "\(batch.count)"])
                    session.closedForFailedAppend.flag.store(true, ordering: .relaxed)
                    context.close(promise: nil)
                } else {
                    for message in batch { if let id = message.packetID { context.write(session.wrapOutboundOut(.pubAck(packetID: id)), promise: nil) } }
                    context.flush()
                    session.resume(context)
                    if session.finishing {
                        session.disconnect(context)
                    } else if context.channel.isActive {
                        session.submit(context)
                    }
                }
                pipeline.end()
            }
        }
    }

    private func pause(_ context: ChannelHandlerContext) {
        guard !readPaused else { return }
        readPaused = true
        _ = context.channel.setOption(ChannelOptions.autoRead, value: false)
    }

    private func resume(_ context: ChannelHandlerContext) {
        guard readPaused, !finishing else { return }
        readPaused = false
        _ = context.channel.setOption(ChannelOptions.autoRead, value: true)
        context.read()
    }

    /// Shutdown: once the batch under way is acknowledged, DISCONNECT. Messages read but not
    /// written are not acknowledged: the broker keeps them in the session for the next start.
    func finish(_ channel: any Channel) {
        finishing = true
        guard !submitting, let context = try? channel.pipeline.syncOperations.context(handler: self) else { return }
        disconnect(context)
    }

    private func disconnect(_ context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(.disconnect)).whenComplete { _ in context.close(promise: nil) }
    }

    static func connAckReason(_ code: UInt8) -> String {
        switch code {
        case 1: "the broker refused the connection: unacceptable protocol version (MQTT 3.1.1 is spoken)"
        case 2: "the broker refused the connection: client id rejected"
        case 3: "the broker refused the connection: server unavailable"
        case 4: "the broker refused the connection: bad user name or password"
        case 5: "the broker refused the connection: not authorized"
        default: "the broker refused the connection: return code \(code)"
        }
    }
}

/// A message's payload as readings: line-protocol text, or a JSON reading or array of them, as
/// on the other doors. The topic may supply what a payload leaves out.
package enum MQTTPayload {
    /// What this door refuses for, created at 0 at start-up.
    static let rejectionReasons: [String] = IngestMetrics.tcpReasons.filter { $0 != LineProtocolError.Reason.partialLine.rawValue }
        + ["invalid_json", "missing_field", "payload_too_large", "empty_payload"]

    package static func decode(_ payload: ByteBuffer, fields: [TopicTemplate.Field: String], parser: LineParser, limits: Limits,
                       pipeline: IngestPipeline) -> LineBody {
        payload.withUnsafeReadableBytes { bytes in
            let first = bytes.first(where: { $0 != 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D })
            guard let first else {
                var body = LineBody(partitions: 0)
                body.refuse(reason: "empty_payload", message: "the message has no payload")
                return body
            }
            if first == UInt8(ascii: "{") || first == UInt8(ascii: "[") {
                return json(bytes, fields: fields, validator: parser.validator, pipeline: pipeline)
            }
            let defaults = fields.isEmpty ? nil : LineParser.Defaults(sensorID: fields[.sensorID], location: fields[.location])
            return LineBody.parse(bytes, parser: parser, precision: .nanoseconds, maxLineBytes: limits.maxLineBytes, defaults: defaults, pipeline: pipeline)
        }
    }

    /// Each item of a JSON payload on its own: a bad one is refused, the others kept (an MQTT
    /// message has no answer to refuse it whole with).
    private static func json(_ bytes: UnsafeRawBufferPointer, fields: [TopicTemplate.Field: String], validator: ReadingValidator,
                             pipeline: IngestPipeline) -> LineBody {
        var body = LineBody(partitions: pipeline.log.partitions.count)
        let parsed: (items: [PostedReading], isArray: Bool)
        do {
            parsed = try ReadingJSON.parse(bytes)
        } catch {
            body.refuse(reason: "invalid_json", message: "\(error.message) at byte \(error.position)")
            return body
        }
        for (i, var item) in parsed.items.enumerated() {
            if item.sensorID == nil, let id = fields[.sensorID] { item.sensorID = .string(id) }
            if item.location == nil, let location = fields[.location] { item.location = .string(location) }
            if item.type == nil, let type = fields[.type] { item.type = .string(type) }
            do {
                let reading = try item.reading(index: parsed.isArray ? i : nil, validator: validator)
                body.append(reading, line: i + 1, partition: pipeline.partition(for: reading.sensorID))
            } catch {
                body.refuse(reason: error.code, message: error.message, line: i + 1)
            }
        }
        return body
    }
}
