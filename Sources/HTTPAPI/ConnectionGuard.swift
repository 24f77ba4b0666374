import HTTPTypes
import Ingest
import Metrics
import NIOCore
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
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let connections: HTTPConnections
    private let headerTimeout: TimeAmount
    private let requestTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var admitted = false
    private var deadline: Scheduled<Void>?

    init(connections: HTTPConnections, limits: Limits) {
        self.connections = connections
        headerTimeout = Self.amount(limits.httpHeaderTimeout)
        requestTimeout = Self.amount(limits.httpRequestTimeout)
        idleTimeout = Self.amount(limits.idleTimeout)
    }

    static func amount(_ d: Duration) -> TimeAmount { .nanoseconds(Int64(d / .nanoseconds(1))) }

    func handlerAdded(context: ChannelHandlerContext) {
        guard connections.admit(context.channel) else {
            context.close(promise: nil)
            return
        }
        admitted = true
        arm(context, after: headerTimeout, counting: .headers)
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
            connections.idle(context.channel, false)
            arm(context, after: requestTimeout, counting: .body)
        case .body: break
        // The request is whole; the handler's time is its own (a records wait is bounded).
        case .end: deadline?.cancel()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) {
            connections.idle(context.channel, true)
            // The next request's head may come after a keep-alive pause, up to the idle timeout.
            arm(context, after: idleTimeout, counting: nil)
        }
        context.write(data, promise: promise)
    }

    /// Closes the connection after `delay`, counted under `phase` (a keep-alive pause is not slow).
    private func arm(_ context: ChannelHandlerContext, after delay: TimeAmount, counting phase: HTTPConnections.Phase?) {
        deadline?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: delay) { [connections] in
            if let phase { connections.closedSlow(phase) }
            loopBound.value.close(promise: nil)
        }
    }
}
