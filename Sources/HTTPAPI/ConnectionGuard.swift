import HTTPTypes
import Ingest
import Metrics
import Foundation
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import SensorLogCore
import Synchronization

/// The HTTP connections open, against their cap; one instance per HTTP listener. At the cap a new
/// connection takes the slot of an idle one (between requests, or not yet sending), as nginx
/// reuses keep-alive connections: idle connections held open by one client cannot lock everyone
/// else out. The one idle longest goes first. Only when every connection is inside a request is
/// the new one refused.
final class HTTPConnections: Sendable {
    let limit: Int
    private let state = Mutex<State>(State())
    private struct State {
        var open = 0
        /// Idle connections with the tick they became idle at.
        var idle: [ObjectIdentifier: (channel: any Channel, since: UInt64)] = [:]
        var tick: UInt64 = 0

        mutating func setIdle(_ channel: any Channel) {
            tick += 1
            idle[ObjectIdentifier(channel)] = (channel, tick)
        }

        /// Removes and returns the connection idle longest (a scan, only at the cap).
        mutating func takeOldestIdle() -> (any Channel)? {
            guard let oldest = idle.min(by: { $0.value.since < $1.value.since }) else { return nil }
            idle.removeValue(forKey: oldest.key)
            return oldest.value.channel
        }
    }
    private let gauge = Gauge(label: "sensorlog_http_connections")
    private let refused = Counter(label: "sensorlog_http_connections_refused_total")
    private let evicted = Counter(label: "sensorlog_http_idle_connections_closed_total")
    private let slowHeaders = Counter(label: "sensorlog_http_slow_requests_closed_total", dimensions: [("phase", "headers")])
    private let slowBodies = Counter(label: "sensorlog_http_slow_requests_closed_total", dimensions: [("phase", "body")])

    init(limit: Int) {
        self.limit = limit
        gauge.record(0)
    }

    static let descriptions = [
        MetricDescription("sensorlog_http_connections", help: "HTTP connections open."),
        MetricDescription("sensorlog_http_connections_refused_total",
                          help: "HTTP connections closed as they were accepted: the cap was reached and none was idle."),
        MetricDescription("sensorlog_http_idle_connections_closed_total",
                          help: "Idle HTTP connections closed to make room for a new one at the connection cap."),
        MetricDescription("sensorlog_http_slow_requests_closed_total",
                          help: "HTTP connections closed because a request's head or body did not arrive in time, by phase."),
    ]

    /// Takes a slot for `channel` (idle until its first request), closing an idle connection
    /// when every slot is taken; refuses (and counts) when none is idle.
    func admit(_ channel: any Channel) -> Bool {
        let (admitted, victim, open) = state.withLock { s -> (Bool, (any Channel)?, Int) in
            var victim: (any Channel)?
            if s.open >= limit {
                guard let oldest = s.takeOldestIdle() else { return (false, nil, s.open) }
                victim = oldest
            }
            s.open += 1
            s.setIdle(channel)
            return (true, victim, s.open)
        }
        guard admitted else {
            refused.increment()
            return false
        }
        if let victim {
            evicted.increment()
            victim.close(promise: nil)
        }
        gauge.record(open)
        return true
    }

    func release(_ channel: any Channel) {
        let open = state.withLock { s in
            s.idle.removeValue(forKey: ObjectIdentifier(channel))
            s.open -= 1
            return s.open
        }
        gauge.record(open)
    }

    /// Between requests a connection may be closed for a newcomer; inside one it may not.
    func idle(_ channel: any Channel, _ idle: Bool) {
        state.withLock { s in
            if idle { s.setIdle(channel) } else { s.idle.removeValue(forKey: ObjectIdentifier(channel)) }
        }
    }

    enum Phase { case headers, body }

    func closedSlow(_ phase: Phase) {
        (phase == .headers ? slowHeaders : slowBodies).increment()
    }
}

/// First in every HTTP connection's pipeline after the HTTP codec: admits the connection against
/// the cap, tells the cap when it is between requests, and closes it when a request's head or
/// body trickles in (slow-loris): the idle timeout alone cannot, since a byte every few seconds
/// keeps a connection from being idle.
///
/// Deadlines: a new connection's first head within `httpHeaderTimeout` (one that sends nothing,
/// a browser's preconnect, is closed then too); a request's body within `httpRequestTimeout` of
/// its head plus the time its bytes take at `minBodyBytesPerSecond`, so a large body on a slow
/// link is not cut while a trickle is; between requests, the idle timeout.
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let connections: HTTPConnections
    private let headerTimeout: TimeAmount
    private let requestTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private let minBodyBytesPerSecond: Int64
    private let maxHeaderBytes: Int
    private var admitted = false
    private var deadline: Scheduled<Void>?
    private var deadlineAt = NIODeadline.distantPast
    /// Requests whose response has not ended (pipelining may make it more than one), and
    /// whether a request's body is still being read (an early response, a 401 or a 413, ends
    /// before it): the connection is idle only when both are clear.
    private var unanswered = 0
    private var reading = false
    private var headAt = NIODeadline.distantPast
    private var bodyBytes: Int64 = 0

    init(connections: HTTPConnections, limits: Limits) {
        self.connections = connections
        headerTimeout = Self.amount(limits.httpHeaderTimeout)
        requestTimeout = Self.amount(limits.httpRequestTimeout)
        idleTimeout = Self.amount(limits.idleTimeout)
        minBodyBytesPerSecond = Int64(limits.minBodyBytesPerSecond)
        maxHeaderBytes = limits.maxHTTPHeaderBytes
    }

    static func amount(_ d: Duration) -> TimeAmount { .nanoseconds(Int64(d / .nanoseconds(1))) }

    func handlerAdded(context: ChannelHandlerContext) {
        guard connections.admit(context.channel) else {
            context.close(promise: nil)
            return
        }
        admitted = true
        arm(context, at: .now() + headerTimeout, counting: .headers)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        if admitted {
            admitted = false
            connections.release(context.channel)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            unanswered += 1
            reading = true
            headAt = .now()
            bodyBytes = 0
            connections.idle(context.channel, false)
            arm(context, at: headAt + requestTimeout, counting: .body)
        case .body(let part):
            bodyBytes += Int64(part.readableBytes)
            // Each second of body at the minimum rate adds a second; re-armed once a second gained.
            let due = headAt + requestTimeout + .nanoseconds(bodyBytes * 1_000_000_000 / max(1, minBodyBytesPerSecond))
            if due - deadlineAt >= .seconds(1) { arm(context, at: due, counting: .body) }
        case .end:
            reading = false
            // The request is whole; the handler's time is its own (a records wait is bounded).
            deadline?.cancel()
            if unanswered == 0 { becameIdle(context) }
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            unanswered = max(0, unanswered - 1)
            if unanswered == 0 && !reading { becameIdle(context) }
        }
        context.write(data, promise: promise)
    }

    /// A request NIO's parser refused (a head past `maxHTTPHeaderBytes`, bytes that are not
    /// HTTP) is answered here with a status and a JSON body that say why, then the connection
    /// closes: Hummingbird's own answer is a bare 400. Only between requests: with a request
    /// still being answered, a second response would interleave, so Hummingbird keeps the case.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parse = error as? HTTPParserError, unanswered == 0, !reading else {
            context.fireErrorCaught(error)
            return
        }
        let tooLarge = parse == .headerOverflow
        let detail = APIError.Body(error: .init(
            code: tooLarge ? "headers_too_large" : "bad_request",
            message: tooLarge ? "the request line and headers exceed \(maxHeaderBytes) bytes" : "not an HTTP/1.1 request (\(parse))"))
        let body = ByteBuffer(bytes: JSONBody.data(detail))
        let head = HTTPResponse(status: tooLarge ? .requestHeaderFieldsTooLarge : .badRequest, headerFields: [
            .contentType: "application/json", .contentLength: "\(body.readableBytes)", .connection: "close",
        ])
        unanswered += 1
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(body)), promise: nil)
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in loopBound.value.close(promise: nil) }
    }

    /// Between requests: another connection may take its slot, and the next head may come after
    /// a keep-alive pause up to the idle timeout.
    private func becameIdle(_ context: ChannelHandlerContext) {
        connections.idle(context.channel, true)
        arm(context, at: .now() + idleTimeout, counting: nil)
    }

    /// Closes the connection at `when`, counted under `phase` (a keep-alive pause is not slow).
    private func arm(_ context: ChannelHandlerContext, at when: NIODeadline, counting phase: HTTPConnections.Phase?) {
        deadline?.cancel()
        deadlineAt = when
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(deadline: when) { [connections] in
            if let phase { connections.closedSlow(phase) }
            loopBound.value.close(promise: nil)
        }
    }
}
