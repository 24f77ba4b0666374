public import SensorLogCore
import Dispatch
import Foundation
import HTTPTypes
import Hummingbird
import Ingest
import Logging
import Metrics
import NIOCore
import Synchronization
import Crypto

/// Takes `X-Request-Id` from the request (when it is a sane token) or makes one, puts it on the
/// context's logger and echoes it in the response, errors included.
struct RequestIDMiddleware: RouterMiddleware {
    typealias Context = SensorRequestContext
    static let header = HTTPField.Name("X-Request-Id")!

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let id: String
        if let given = request.headers[Self.header], Self.isSane(given) {
            id = given
        } else {
            id = Self.generate()
        }
        context.requestID = id
        // One id a line: ours, which the response echoes, not Hummingbird's own `hb.request.id`.
        context.logger[metadataKey: "hb.request.id"] = nil
        context.logger[metadataKey: "request_id"] = .string(id)
        if let remote = context.remoteAddress { context.logger[metadataKey: "remote"] = .string(remote.logDescription) }
        let start = DispatchTime.now().uptimeNanoseconds
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as any HTTPResponseError {
            // Rendered here, not rethrown: an error on its way out may be wrapped by a middleware
            // (CORS adds its headers so), and the wrapper's response keeps our body and headers.
            response = try error.response(from: request, context: context)
        } catch {
            response = try APIErrorMiddleware.convert(error, logger: context.logger).response(from: request, context: context)
        }
        response.headers[Self.header] = id
        // A HEAD answer has the headers of the GET answer and no body, errors included.
        if request.method == .head { response = response.createHeadResponse() }
        // The access log, at debug level: one line a request is too many at thousands a second.
        context.logger.debug("request", metadata: [
            "method": "\(request.method)", "path": "\(request.uri.path)", "status": "\(response.status.code)",
            "duration_ms": "\(Double((DispatchTime.now().uptimeNanoseconds - start) / 1000) / 1000)",
        ])
        return response
    }

    static func isSane(_ id: String) -> Bool {
        id.utf8.count <= 128 && !id.isEmpty && id.utf8.allSatisfy { $0 > 32 && $0 < 127 }
    }

    /// 32 hex digits: a random prefix drawn once per process and a counter, so ids are unique
    /// without a getrandom call and a format string per request (a tenth of a small POST's cost).
    static func generate() -> String {
        let n = counter.add(1, ordering: .relaxed).newValue
        return String(unsafeUninitializedCapacity: 32) { out in
            hex(prefix, into: out, at: 0)
            hex(n, into: out, at: 16)
            return 32
        }
    }

    private static let prefix: UInt64 = UInt64.random(in: .min ... .max)
    private static let counter = Atomic<UInt64>(0)

    private static func hex(_ value: UInt64, into out: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        let digits: StaticString = "0123456789abcdef"
        for i in 0..<16 {
            out[start + i] = digits.utf8Start[Int((value >> (60 - 4 * UInt64(i))) & 0xF)]
        }
    }
}

/// The router, with a record of the methods each path answers, so that a known path asked with
/// another method gets 405 and `Allow` rather than 404.
struct Routes {
    let router: Router<SensorRequestContext>
    let table = RouteTable()

    typealias Handler = @Sendable (Request, SensorRequestContext) async throws -> Response

    func get(_ path: String, use handler: @escaping Handler) {
        table.add(.get, path)
        table.add(.head, path)
        router.get(RouterPath(path), use: handler)
        // HEAD as GET without the body (RequestIDMiddleware drops it): Hummingbird's router does
        // not answer HEAD by itself (it answered 405 with `Allow: GET, HEAD`).
        router.head(RouterPath(path), use: handler)
    }

    func post(_ path: String, use handler: @escaping Handler) {
        table.add(.post, path)
        router.post(RouterPath(path), use: handler)
    }

    func delete(_ path: String, use handler: @escaping Handler) {
        table.add(.delete, path)
        router.delete(RouterPath(path), use: handler)
    }
}

/// Path patterns (`:name` matches one segment) and their methods.
final class RouteTable: Sendable {
    private let routes = Mutex<[(method: HTTPRequest.Method, segments: [String], template: String)]>([])

    func add(_ method: HTTPRequest.Method, _ path: String) {
        let segments = path.split(separator: "/").map(String.init)
        // The template as Hummingbird names a matched route (`/sensors/{id}/readings`), so a 405
        // and a 200 of one path share the metrics label.
        let template = RouterPath(path).description
        routes.withLock { $0.append((method, segments, template)) }
    }

    private func matching(_ path: String) -> [(method: HTTPRequest.Method, segments: [String], template: String)] {
        let asked = path.split(separator: "/")
        return routes.withLock { routes in
            routes.filter { route in
                route.segments.count == asked.count
                    && zip(route.segments, asked).allSatisfy { $0.hasPrefix(":") || $0 == $1 }
            }
        }
    }

    /// The methods `path` is served with, in the order the routes were added.
    func methods(for path: String) -> [HTTPRequest.Method] {
        matching(path).map(\.method)
    }

    /// The template of the route serving `path` with any method, or nil when no route does.
    func template(for path: String) -> String? {
        matching(path).first?.template
    }

    /// Every route template with the methods it answers, in the order added.
    var templates: [(template: String, methods: [HTTPRequest.Method])] {
        routes.withLock { routes in
            var out: [(template: String, methods: [HTTPRequest.Method])] = []
            for route in routes {
                if let i = out.firstIndex(where: { $0.template == route.template }) {
                    out[i].methods.append(route.method)
                } else {
                    out.append((route.template, [route.method]))
                }
            }
            return out
        }
    }
}

/// Innermost: turns every error that is not already an `APIError` (the router's 404, a body
/// over the limit, anything unexpected) into one, so the middlewares outside see one kind of
/// error and every answer has the API's error body.
struct APIErrorMiddleware: RouterMiddleware {
    typealias Context = SensorRequestContext
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as APIError {
            throw error
        } catch let error as any HTTPResponseError where error.status == .notFound {
            let allowed = routes.methods(for: request.uri.path)
            guard !allowed.isEmpty else { throw Self.convert(error, logger: context.logger) }
            let list = allowed.map(\.rawValue).joined(separator: ", ")
            var notAllowed = APIError(.methodNotAllowed, code: "method_not_allowed", "\(request.uri.path) answers \(list), not \(request.method)")
            notAllowed.headers[.allow] = list
            throw notAllowed
        } catch {
            throw Self.convert(error, logger: context.logger)
        }
    }

    static func convert(_ error: any Error, logger: Logger) -> APIError {
        if let error = error as? APIError { return error }
        if let error = error as? any HTTPResponseError {
            return APIError(error.status, code: code(error.status), error.status.reasonPhrase)
        }
        logger.error("unexpected error", metadata: ["error": "\(error)"])
        return APIError(.internalServerError, code: "internal_error", "internal error")
    }

    /// The code of an error Hummingbird raised: a closed set, each listed in docs/protocol.md.
    static func code(_ status: HTTPResponse.Status) -> String {
        switch status.code {
        case 401: return "unauthorized"
        case 404: return "not_found"
        case 405: return "method_not_allowed"
        case 413: return "body_too_large"
        case 415: return "unsupported_media_type"
        case 500...: return "internal_error"
        default: return "bad_request"
        }
    }
}

/// `sensorlog_http_requests_total{route,status}` and `sensorlog_http_request_duration_seconds{route}`,
/// labelled by route template, never by raw path: a known path asked with another method (405)
/// counts under its template too; only a path no route serves is `route="unmatched"`.
struct HTTPMetricsMiddleware: RouterMiddleware {
    typealias Context = SensorRequestContext
    let metrics: RouteMetrics
    let routes: RouteTable

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let start = DispatchTime.now().uptimeNanoseconds
        do {
            let response = try await next(request, context)
            record(request, context, status: response.status.code, since: start)
            return response
        } catch let error as any HTTPResponseError {
            record(request, context, status: error.status.code, since: start)
            throw error
        }
    }

    private func record(_ request: Request, _ context: Context, status: Int, since start: UInt64) {
        metrics.record(route: route(request, context), status: status, nanoseconds: Int64(DispatchTime.now().uptimeNanoseconds - start))
    }

    private func route(_ request: Request, _ context: Context) -> String {
        // Hummingbird sets the matched template, or "NotFound" when no route took the method.
        if let path = context.endpointPath, path != "NotFound" { return path }
        return routes.template(for: request.uri.path) ?? RouteMetrics.unmatched
    }
}

/// The per-route metrics, created once per (route, status).
final class RouteMetrics: Sendable {
    static let descriptions = [
        MetricDescription("sensorlog_http_requests_total", help: "HTTP requests answered, by route template and status."),
        MetricDescription("sensorlog_http_request_duration_seconds", help: "HTTP request durations in seconds, by route template."),
    ]
    /// The label of requests for paths no route serves.
    static let unmatched = "unmatched"

    private let counters = Mutex<[String: Counter]>([:])
    private let timers = Mutex<[String: Metrics.Timer]>([:])

    /// Creates the series of `route` at 0 for each status, so that the first of them is seen by
    /// `rate()` and `increase()` rather than starting the series at 1.
    func preregister(route: String, statuses: [Int]) {
        for status in statuses { _ = counter(route, status) }
        _ = timer(route)
    }

    func record(route: String, status: Int, nanoseconds: Int64) {
        counter(route, status).increment()
        timer(route).recordNanoseconds(nanoseconds)
    }

    private func counter(_ route: String, _ status: Int) -> Counter {
        let key = route + " " + String(status)
        return counters.withLock { c in
            if let counter = c[key] { return counter }
            let counter = Counter(label: "sensorlog_http_requests_total", dimensions: [("route", route), ("status", String(status))])
            c[key] = counter
            return counter
        }
    }

    private func timer(_ route: String) -> Metrics.Timer {
        timers.withLock { t in
            if let timer = t[route] { return timer }
            let timer = Metrics.Timer(label: "sensorlog_http_request_duration_seconds", dimensions: [("route", route)], preferredDisplayUnit: .seconds)
            t[route] = timer
            return timer
        }
    }
}

/// An API key on every route but `/health`, `/metrics` and what InfluxDB and QuestDB clients
/// probe unauthenticated (`/ping`, `/settings`), when keys are configured, and the key's role for
/// the route (`APIRole`): 403 naming the role it lacks. Keys are compared in constant time,
/// against every configured key, so timing reveals nothing.
///
/// The key is taken where each kind of client puts its credential: `X-API-Key`, or
/// `Authorization: Token K` (InfluxDB 2.x), `Bearer K` (QuestDB's `token=`), `Basic` with the
/// key as password (InfluxDB 1.x, QuestDB's `username`/`password`), or the `p` query parameter
/// (InfluxDB 1.x's `u`/`p`).
struct APIKeyMiddleware: RouterMiddleware {
    typealias Context = SensorRequestContext
    static let header = HTTPField.Name("X-API-Key")!
    static let open: Set<String> = ["/health", "/metrics", "/ping", "/settings"]
    let keys: APIKeyRing

    init(keys: APIKeyRing) { self.keys = keys }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if Self.open.contains(path) || ConsoleRoutes.isOpen(path) || request.method == .options {
            // An open route still learns the roles of a key it is given (`/session` tells them).
            var context = context
            if let given = Self.credential(request), let (key, roles) = match(Array(given.utf8)) {
                context.apiKey = key
                context.roles = roles
            }
            return try await next(request, context)
        }
        guard let given = Self.credential(request), let (key, roles) = match(Array(given.utf8)) else {
            var error = APIError(.unauthorized, code: "unauthorized", "missing or unknown API key (X-API-Key, or Authorization: Token/Bearer/Basic)")
            error.headers[.wwwAuthenticate] = "X-API-Key"
            throw error
        }
        let needed = Self.role(method: request.method, path: path)
        guard roles.contains(needed) else {
            throw APIError(.forbidden, code: "forbidden", "this API key lacks the \(needed.rawValue) role this route needs")
        }
        var context = context
        context.apiKey = key
        context.roles = roles
        return try await next(request, context)
    }

    /// The key a request offers, wherever its client put it.
    static func credential(_ request: Request) -> String? {
        if let key = request.headers[header] { return key }
        // InfluxDB's forms only on InfluxDB's routes: a key in a URL ends up in proxy logs.
        let influx = InfluxAPI(request) != nil
        if let authorization = request.headers[.authorization] {
            let parts = authorization.split(separator: " ", maxSplits: 1)
            guard parts.count == 2 else { return nil }
            let scheme = parts[0].lowercased()
            let value = parts[1].trimmingCharacters(in: .whitespaces)
            switch scheme {
            case "token", "bearer": return value
            case "basic" where influx:
                guard let decoded = Data(base64Encoded: value).flatMap({ String(data: $0, encoding: .utf8) }),
                      let colon = decoded.firstIndex(of: ":") else { return nil }
                return String(decoded[decoded.index(after: colon)...])
            default: return nil
            }
        }
        return influx ? request.uri.queryParameters.get("p") : nil
    }

    /// The role a route needs: `/admin/` admin, `/groups` read (a consumer's own doors), a write
    /// ingest, anything else read. The admin routes check the admin role again themselves
    /// (`AdminRoutes.authorize`): the router matches paths this prefix test does not (`//admin/…`).
    static func role(method: HTTPRequest.Method, path: String) -> APIRole {
        let first = path.split(separator: "/").first
        if first == "admin" { return .admin }
        // A consumer reads: creating its group, committing and deleting are part of reading.
        if first == "groups" { return .read }
        return method == .post ? .ingest : .read
    }

    private func match(_ given: [UInt8]) -> (String, Set<APIRole>)? { keys.match(given) }
}

/// The API keys a server takes, replaced whole by a reload (SIGHUP) while requests go on.
public final class APIKeyRing: Sendable {
    private struct Entry {
        var name: String
        var key: [UInt8]
        var sha256: [UInt8]?
        var roles: Set<APIRole>
    }

    private let entries: Mutex<(all: [Entry], anyHashed: Bool)>

    public init(_ keys: [APIKey]) { entries = Mutex(Self.entries(keys)) }

    public var isEmpty: Bool { entries.withLock { $0.all.isEmpty } }

    public func replace(_ keys: [APIKey]) { entries.withLock { $0 = Self.entries(keys) } }

    private static func entries(_ keys: [APIKey]) -> (all: [Entry], anyHashed: Bool) {
        let all = keys.map { Entry(name: $0.key, key: Array($0.key.utf8), sha256: $0.sha256, roles: $0.roles) }
        return (all, all.contains { $0.sha256 != nil })
    }

    /// The key `given` is (its name: the key, or its `sha256:` entry) and its roles. Every
    /// entry is compared whole whatever matched, so timing says nothing about which one or how
    /// much of it.
    func match(_ given: [UInt8]) -> (String, Set<APIRole>)? {
        let (all, anyHashed) = entries.withLock { $0 }
        let digest = anyHashed ? Array(SHA256.hash(data: given)) : []
        var found: (String, Set<APIRole>)?
        for entry in all {
            let equal = entry.sha256.map { Self.same($0, digest) } ?? Self.same(entry.key, given)
            if equal && found == nil { found = (entry.name, entry.roles) }
        }
        return found
    }

    /// The whole length difference counts (a key plus 256 bytes must not match), and the loop's
    /// length is the configured key's, so timing says nothing about the given one.
    private static func same(_ key: [UInt8], _ given: [UInt8]) -> Bool {
        var difference = key.count ^ given.count
        for i in 0..<key.count { difference |= Int(key[i] ^ (i < given.count ? given[i] : 0)) }
        return difference == 0
    }
}

extension RateLimiter {
    /// Takes `count` readings from the bucket of the request's key (or address, without keys).
    /// - Throws: 429 `rate_limited` with `Retry-After` when the bucket is short.
    func admit(_ count: Int, _ context: SensorRequestContext) throws(APIError) {
        let client = context.apiKey ?? context.remoteAddress?.ipAddress ?? "unknown"
        guard let wait = take(count, client: client) else { return }
        var error = APIError(.tooManyRequests, code: "rate_limited", "over \(Int(rate)) readings a second")
        error.headers[.retryAfter] = String(wait)
        throw error
    }
}

/// A token bucket per API key (or per client address when keys are off): `rate` readings a
/// second, bursts up to one second's worth.
final class RateLimiter: Sendable {
    let rate: Double
    private let buckets = Mutex<(clients: [String: (tokens: Double, at: UInt64)], sweepAt: Int)>(([:], RateLimiter.maxClients))
    /// Past this many clients, those whose bucket has refilled (idle ones) are forgotten.
    static let maxClients = 100_000

    let time: any TimeSource

    init(readingsPerSecond: Double, time: any TimeSource) {
        self.rate = readingsPerSecond
        self.time = time
    }

    /// Takes `count` tokens from `client`'s bucket.
    /// - Returns: nil when allowed, else the seconds to wait before retrying.
    func take(_ count: Int, client: String) -> Int? {
        let now = UInt64(time.monotonicNanoseconds)
        let rate = self.rate
        func refilled(_ bucket: (tokens: Double, at: UInt64)) -> Double { bucket.tokens + Double(now - bucket.at) / 1e9 * rate }
        return buckets.withLock { b -> Int? in
            var bucket = b.clients[client] ?? (rate, now)
            bucket.tokens = min(rate, refilled(bucket))
            bucket.at = now
            defer {
                b.clients[client] = bucket
                if b.clients.count > b.sweepAt {
                    // A full bucket is the same as none. The next sweep waits until the table has
                    // doubled again, so a crowd of active clients does not make every request O(n).
                    b.clients = b.clients.filter { refilled($0.value) < rate }
                    b.sweepAt = max(Self.maxClients, b.clients.count * 2)
                }
            }
            // A request larger than a second's worth passes only on a full bucket, and leaves it
            // in debt: that client then waits until the debt is repaid.
            let need = Double(count)
            if bucket.tokens >= need || (bucket.tokens >= rate && need > rate) {
                bucket.tokens -= need
                return nil
            }
            return max(1, Int(((need - bucket.tokens) / rate).rounded(.up)))
        }
    }
}
