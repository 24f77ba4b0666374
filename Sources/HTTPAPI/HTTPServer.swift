public import Aggregator
import Foundation
import HTTPTypes
public import Hummingbird
import HummingbirdCore
import NIOCore
public import Ingest
import LogStore
public import Logging
public import SensorLogCore

/// How the HTTP API is set up.
public struct HTTPServerConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Accepted `X-API-Key` values with their roles; empty turns authentication off (and
    /// `/admin/` answers on loopback only).
    public var apiKeys: [APIKey]
    /// Where the keys live while serving, for a reload to replace them; nil: a ring of `apiKeys`.
    public var keyRing: APIKeyRing?
    /// Readings a second per key (or client address); nil turns rate limiting off.
    public var rateLimit: Double?
    /// The origin allowed by CORS; nil answers no CORS headers.
    public var corsOrigin: String?
    public var limits: Limits
    /// When set, the API speaks only HTTPS.
    public var tls: ServerTLS?

    public init(host: String = "127.0.0.1", port: Int = 8080, apiKeys: [APIKey] = [], rateLimit: Double? = nil,
                corsOrigin: String? = nil, limits: Limits = Limits()) {
        self.host = host
        self.port = port
        self.apiKeys = apiKeys
        self.rateLimit = rateLimit
        self.corsOrigin = corsOrigin
        self.limits = limits
    }
}

/// An HTTP child channel with TLS in front of it, from `tls`'s context at the time each
/// connection is accepted: a reload applies to new connections and leaves open ones alone
/// (Hummingbird's own `.tls` holds one context for the server's life).
struct TLSServerChildChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let tls: ServerTLS

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try tls.addHandlers(to: channel, listener: "http")
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// What `/health` reports.
struct Health: Encodable {
    var status: String
    var partitions: Int
    var uptimeSeconds: Double
    var fsync: String
    var error: String?

    enum CodingKeys: String, CodingKey {
        case status, partitions, uptimeSeconds = "uptime_seconds", fsync, error
    }
}

/// The HTTP API as a Hummingbird application (a `Service`).
public enum HTTPServer {
    public typealias App = Application<RouterResponder<SensorRequestContext>>

    /// The metrics the API creates, with their help text.
    public static var metricDescriptions: [MetricDescription] { RouteMetrics.descriptions + HTTPConnections.descriptions }

    /// The statuses whose `sensorlog_http_requests_total` series exist from start-up, per method
    /// of a route: those alerts watch (errors, overload, an unavailable log) and the success.
    static func preregisteredStatuses(_ template: String, _ methods: [HTTPRequest.Method]) -> [Int] {
        let common: [Int] = [400, 401, 500, 503]
        if LineProtocolRoutes.writeTemplates.contains(template) { return [204, 413, 415, 429] + common }
        if methods.contains(.post) { return [201, 409, 413, 415, 429] + common }
        return [200] + common
    }

    /// Builds the application.
    /// - Parameters:
    ///   - metricsText: renders the Prometheus exposition (the executable owns the registry).
    ///   - onRunning: called with the bound port once the server listens.
    public static func make(
        configuration: HTTPServerConfiguration, pipeline: IngestPipeline, aggregator: AggregatorService? = nil,
        admin: (any AdminOperations)? = nil, logger: Logger,
        clusterStatus: (@Sendable () async -> any Encodable & Sendable)? = nil,
        metricsText: @escaping @Sendable () -> String,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) -> App {
        let router = Router(context: SensorRequestContext.self)
        let routes = Routes(router: router)
        let routeMetrics = RouteMetrics()
        router.add(middleware: RequestIDMiddleware())
        router.add(middleware: HTTPMetricsMiddleware(metrics: routeMetrics, routes: routes.table))
        if let origin = configuration.corsOrigin {
            router.add(middleware: CORSMiddleware(
                allowOrigin: .custom(origin),
                allowHeaders: [.accept, .contentType, .contentEncoding, .authorization, .origin, APIKeyMiddleware.header, RequestIDMiddleware.header],
                allowMethods: [.get, .post, .options], exposedHeaders: ["X-Request-Id", "Retry-After"], maxAge: .seconds(600)))
        }
        let keyRing = configuration.keyRing ?? APIKeyRing(configuration.apiKeys)
        if !keyRing.isEmpty {
            router.add(middleware: APIKeyMiddleware(keys: keyRing))
        }
        router.add(middleware: APIErrorMiddleware(routes: routes.table))

        let started = Date()
        // One bucket per client for both doors: a producer cannot double its rate by using both.
        let rateLimiter = configuration.rateLimit.map { RateLimiter(readingsPerSecond: $0, time: pipeline.time) }
        let route = SensorDataRoute(pipeline: pipeline, limits: configuration.limits, rateLimiter: rateLimiter)
        routes.post("/sensor/data") { request, context in try await route.handle(request, context: context) }
        LineProtocolRoutes(pipeline: pipeline, limits: configuration.limits, rateLimiter: rateLimiter, logger: logger).add(to: routes)
        routes.get("/health") { _, _ -> Response in
            let failure = pipeline.unavailableReason
            let health = Health(
                status: failure == nil ? "ok" : "unavailable", partitions: pipeline.log.partitions.count,
                uptimeSeconds: (Date().timeIntervalSince(started) * 1000).rounded() / 1000,
                fsync: pipeline.log.configuration.fsync.rawValue, error: failure.map { "\($0.code): \($0.message)" })
            var response = JSONBody.response(failure == nil ? .ok : .serviceUnavailable, health)
            if failure != nil { response.headers[.retryAfter] = String(pipeline.log.configuration.limits.retryAfterSeconds) }
            return response
        }
        QueryRoutes(log: pipeline.log, aggregator: aggregator,
                    reader: AggregateReader(path: DataLayout(pipeline.log.dataDirectory).aggregates)).add(to: routes)
        GroupRoutes(log: pipeline.log).add(to: routes, maxBodyBytes: configuration.limits.maxBodyBytes)
        if let admin { AdminRoutes.add(admin, to: routes, maxBodyBytes: configuration.limits.maxBodyBytes) }
        routes.get("/cluster") { _, _ -> Response in
            guard let clusterStatus else {
                throw APIError(.notFound, code: "not_clustered", "this server runs on its own (started without --cluster)")
            }
            return JSONBody.response(.ok, await clusterStatus())
        }
        ConsoleRoutes.add(to: routes, keysRequired: !keyRing.isEmpty)
        routes.get("/metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: ResponseBody(byteBuffer: ByteBuffer(string: metricsText())))
        }

        for (template, methods) in routes.table.templates {
            routeMetrics.preregister(route: template, statuses: preregisteredStatuses(template, methods))
        }
        routeMetrics.preregister(route: RouteMetrics.unmatched, statuses: [404])
        pipeline.metrics.preregister(reasons: SensorDataRoute.rejectionReasons, via: .http)
        pipeline.metrics.preregister(reasons: LineProtocolRoutes.rejectionReasons, via: .httpLineProtocol)

        // Idle keep-alive connections and stalled requests (a slow-loris body) are closed after
        // the idle timeout, as on the line-protocol listener; a shutdown waits at most that long.
        let limits = configuration.limits
        let connections = HTTPConnections(limit: limits.maxHTTPConnections)
        let http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [ConnectionGuard(connections: connections, limits: limits)],
            idleTimeout: ConnectionGuard.amount(limits.idleTimeout),
            httpDecoderConfiguration: .init(maxHeaderFieldSize: limits.maxHTTPHeaderBytes, maxHeaderListSize: limits.maxHTTPHeaderBytes))
        let server = configuration.tls.map { tls in
            HTTPServerBuilder { responder in TLSServerChildChannel(base: HTTP1Channel(responder: responder, configuration: http1), tls: tls) }
        } ?? .http1(configuration: http1)
        return Application(
            router: router, server: server,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "sensorlog"),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? configuration.port) },
            logger: logger)
    }

    /// The admin routes alone on a Unix domain socket (`sensorlog` finds it in the data
    /// directory): no keys, since whoever may open the socket may touch the files.
    public static func makeAdminSocket(path: String, admin: any AdminOperations, limits: Limits, logger: Logger,
                                       onRunning: @escaping @Sendable () async -> Void) -> App {
        let router = Router(context: SensorRequestContext.self)
        let routes = Routes(router: router)
        router.add(middleware: RequestIDMiddleware())
        router.add(middleware: APIErrorMiddleware(routes: routes.table))
        router.add(middleware: AdminSocketTrust())
        AdminRoutes.add(admin, to: routes, maxBodyBytes: limits.maxBodyBytes)
        let idle = TimeAmount.nanoseconds(Int64(limits.idleTimeout / .nanoseconds(1)))
        return Application(
            router: router, server: .http1(configuration: .init(idleTimeout: idle)),
            configuration: .init(address: .unixDomainSocket(path: path), serverName: "sensorlog"),
            onServerRunning: { _ in await onRunning() }, logger: logger)
    }
}
