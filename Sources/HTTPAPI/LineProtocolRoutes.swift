import Foundation
import HTTPTypes
import Hummingbird
import Ingest
import LineProtocol
import LogStore
import Logging
import NIOCore
import SensorLogCore
import Synchronization

/// The line protocol over HTTP, as InfluxDB 1.x and 2.x and QuestDB's `http::` transport take it:
/// `POST /write`, `POST /api/v2/write`, and what their clients ask around a write (`/ping`,
/// `/query` for `CREATE DATABASE`, QuestDB's `/settings`). A producer's configuration works by
/// changing only the address. Database, bucket and org names are logged, never used for routing.
final class LineProtocolRoutes: Sendable {
    let pipeline: IngestPipeline
    let limits: Limits
    let rateLimiter: RateLimiter?
    let logger: Logger
    private let questDB: LineParser
    private let influxDB: LineParser
    /// Database, bucket and org names seen, each logged once (bounded: a client inventing names
    /// cannot grow it without end).
    private let namesSeen = Mutex<Set<String>>([])
    static let maxNamesLogged = 1000

    /// What `/ping` and every answer of these routes say the server is: InfluxDB 1.8 serves both
    /// `/write` and `/api/v2/write`, as sensorlog does; clients that read the header see a
    /// version they know.
    static let influxVersion = "1.8.10"

    init(pipeline: IngestPipeline, limits: Limits, rateLimiter: RateLimiter?, logger: Logger) {
        self.pipeline = pipeline
        self.limits = limits
        self.rateLimiter = rateLimiter
        self.logger = logger
        self.questDB = LineParser(validator: pipeline.validator, dialect: .questDB)
        self.influxDB = LineParser(validator: pipeline.validator, dialect: .influxDB)
    }

    func add(to routes: Routes) {
        routes.post("/write") { [self] request, context in try await write(request, context, api: InfluxAPI(request) ?? .questDB) }
        routes.post("/api/v2/write") { [self] request, context in try await write(request, context, api: .v2) }
        routes.get("/ping") { request, _ in Self.ping(verbose: request.uri.queryParameters.get("verbose") == "true") }
        routes.get("/settings") { _, _ in Self.settings() }
        routes.post("/query") { [self] request, context in try await query(request, context) }
        routes.get("/query") { [self] request, context in try await query(request, context) }
    }

    // MARK: Writes

    private func write(_ request: Request, _ context: SensorRequestContext, api: InfluxAPI) async throws -> Response {
        let parameters = request.uri.queryParameters
        let precision = try precision(parameters, api: api)
        noteNames(api, parameters, context)
        let text = try await body(request)
        let parser = api == .v1 || api == .v2 ? influxDB : questDB
        let parsed = text.withUnsafeReadableBytes { bytes in
            LineBody.parse(bytes, parser: parser, precision: precision, maxLineBytes: limits.maxLineBytes, pipeline: pipeline)
        }
        try takeTokens(parsed.readingCount, context)
        let submitted: IngestPipeline.LinesSubmitted
        do {
            submitted = try await pipeline.submit(parsed, via: .httpLineProtocol)
        } catch {
            context.logger.error("append failed", metadata: ["error": "\(error)"])
            throw APIError.logRefused(error, retryAfterSeconds: limits.retryAfterSeconds, retry: "lines with timestamps are deduplicated")
        }
        if let refusal = submitted.firstRefusal { throw Self.partialWrite(refusal, submitted) }
        var response = Response(status: .noContent, headers: [Self.versionHeader: Self.influxVersion])
        response.headers[Self.storedHeader] = String(submitted.appended)
        response.headers[Self.duplicatesHeader] = String(submitted.duplicates)
        return response
    }

    /// The write routes' templates (their metrics series start at 204, not 201).
    static let writeTemplates: Set<String> = ["/write", "/api/v2/write"]

    static let storedHeader = HTTPField.Name("X-Sensorlog-Stored")!
    static let duplicatesHeader = HTTPField.Name("X-Sensorlog-Duplicates")!

    /// 400 naming the first line refused; the good lines of the body are stored (InfluxDB's
    /// partial write).
    static func partialWrite(_ refusal: LineBody.Refusal, _ submitted: IngestPipeline.LinesSubmitted) -> APIError {
        let what = refusal.text.isEmpty ? "line \(refusal.line)" : "line \(refusal.line) '\(refusal.text)'"
        var message = "unable to parse \(what): \(refusal.message) (\(refusal.reason))"
        if submitted.appended + submitted.duplicates > 0 { message = "partial write: " + message }
        message += " dropped=\(submitted.refused)"
        var error = APIError(.badRequest, code: refusal.reason, message)
        error.line = refusal.line
        error.headers[storedHeader] = String(submitted.appended)
        error.headers[duplicatesHeader] = String(submitted.duplicates)
        return error
    }

    private func precision(_ parameters: Parameters, api: InfluxAPI) throws -> LineBody.Precision {
        guard let name = parameters.get("precision"), !name.isEmpty else { return .nanoseconds }
        let precision = api == .v2 ? LineBody.Precision(v2: name) : LineBody.Precision(v1: name)
        guard let precision else {
            let known = api == .v2 ? "ns, us, ms, s" : "n, u, ms, s, m, h"
            throw APIError(.badRequest, code: "invalid_precision", "precision '\(ReadingValidator.prefix(name))' is not one of \(known)")
        }
        return precision
    }

    /// The body, inflated when gzip, within `maxWriteBodyBytes` either way.
    private func body(_ request: Request) async throws -> ByteBuffer {
        let limit = limits.maxWriteBodyBytes
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit { throw reject(tooLarge()) }
        var request = request
        let raw: ByteBuffer
        do {
            raw = try await request.collectBody(upTo: limit)
        } catch {
            throw reject(tooLarge())
        }
        switch request.headers[.contentEncoding]?.lowercased().trimmingCharacters(in: .whitespaces) {
        case nil, "", "identity":
            return raw
        case "gzip", "x-gzip":
            do {
                return try Gzip.inflate(raw, limit: limit)
            } catch .tooLarge {
                throw reject(tooLarge())
            } catch .corrupt(let why) {
                throw reject(APIError(.badRequest, code: "invalid_gzip", "body is not valid gzip: \(why)"))
            }
        case let other?:
            throw reject(APIError(.unsupportedMediaType, code: "unsupported_encoding",
                                  "Content-Encoding '\(ReadingValidator.prefix(other))' is not supported (gzip or none)"))
        }
    }

    private func tooLarge() -> APIError {
        APIError(.contentTooLarge, code: "body_too_large", "request body over \(limits.maxWriteBodyBytes) bytes (after gzip inflation); send smaller batches")
    }

    private func takeTokens(_ count: Int, _ context: SensorRequestContext) throws {
        guard count > 0 else { return }
        do {
            try rateLimiter?.admit(count, context)
        } catch {
            pipeline.metrics.rejected(count, via: .httpLineProtocol, reason: error.code)
            throw error
        }
    }

    /// Counts a body refused whole (no line of it read) and passes the error on.
    private func reject(_ error: APIError) -> APIError {
        pipeline.metrics.rejected(1, via: .httpLineProtocol, reason: error.code)
        return error
    }

    /// Logs each database, retention policy, bucket or org name the first time it is seen.
    private func noteNames(_ api: InfluxAPI, _ parameters: Parameters, _ context: SensorRequestContext) {
        let names: [(String, String)] = ["db", "rp", "bucket", "org"].compactMap { key in parameters.get(key).map { (key, $0) } }
        for (key, name) in names {
            let new = namesSeen.withLock { seen in
                guard seen.count < Self.maxNamesLogged else { return false }
                return seen.insert(key + "=" + name).inserted
            }
            if new {
                context.logger.info("line protocol written with a name sensorlog records but does not route by",
                                    metadata: [key: "\(ReadingValidator.prefix(name))", "api": "\(api)"])
            }
        }
    }

    /// The reasons this door refuses a body or line for, created at 0 at start-up.
    static let rejectionReasons: [String] = IngestMetrics.tcpReasons.filter { $0 != LineProtocolError.Reason.partialLine.rawValue }
        + ["body_too_large", "invalid_gzip", "unsupported_encoding", "rate_limited", "disk_full", "io"]

    // MARK: What clients ask around a write

    /// 204, as InfluxDB answers it: clients (`influxdb-client`'s `ping()`) check the status and
    /// read the version header.
    static func ping(verbose: Bool) -> Response {
        guard verbose else { return Response(status: .noContent, headers: [versionHeader: influxVersion, buildHeader: "OSS"]) }
        var response = JSONBody.response(.ok, raw: "{\"version\":\"\(influxVersion)\"}\n")
        response.headers[versionHeader] = influxVersion
        return response
    }

    static let versionHeader = HTTPField.Name("X-Influxdb-Version")!
    static let buildHeader = HTTPField.Name("X-Influxdb-Build")!

    /// What QuestDB's clients read before their first write over `http::`: the line-protocol
    /// versions the server takes. Only version 1 (text) is offered, so they never send binary
    /// doubles.
    static func settings() -> Response {
        JSONBody.response(.ok, raw: #"{"config":{"line.proto.support.versions":[1],"ilp.proto.transports":["tcp","http"],"cairo.max.file.name.length":127},"preferences.version":0,"preferences":{}}"# + "\n")
    }

    /// `/query`: Telegraf's `outputs.influxdb` asks `CREATE DATABASE "telegraf"` before writing;
    /// that is answered as InfluxDB does (there is nothing to create). Any other statement is
    /// refused: readings are read at `/sensors/{id}/readings`, not with InfluxQL.
    private func query(_ request: Request, _ context: SensorRequestContext) async throws -> Response {
        // By hand: clients encode the statement's spaces as `+`, which the URI decoder keeps.
        var statement = Self.formValue("q", in: request.uri.query ?? "")
        if statement == nil, request.method == .post {
            var request = request
            let form = try await request.collectBody(upTo: limits.maxBodyBytes)
            statement = Self.formValue("q", in: String(buffer: form))
        }
        let words = (statement ?? "").split(whereSeparator: \.isWhitespace).prefix(3).map { $0.uppercased() }
        guard words.count == 3, words[0] == "CREATE", words[1] == "DATABASE" else {
            throw APIError(.badRequest, code: "unsupported_query",
                           "sensorlog answers only CREATE DATABASE on /query (names are not used); read readings at /sensors/{id}/readings")
        }
        context.logger.info("CREATE DATABASE answered; sensorlog keeps every database's readings in one log",
                            metadata: ["database": "\(ReadingValidator.prefix(String(words[2])))"])
        return JSONBody.response(.ok, raw: #"{"results":[{"statement_id":0}]}"# + "\n")
    }

    /// One field of an `application/x-www-form-urlencoded` body.
    static func formValue(_ name: String, in form: String) -> String? {
        for pair in form.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0] == name else { continue }
            return String(parts[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
        }
        return nil
    }
}

/// Which client's API a line-protocol request speaks, for the shape of its answers (InfluxDB's
/// clients parse their own error bodies) and the backslash dialect of its lines.
enum InfluxAPI: CustomStringConvertible {
    /// InfluxDB 1.x: `/write` with a `db`, `/query`. Errors are `{"error":"..."}`.
    case v1
    /// InfluxDB 2.x: `/api/v2/write`. Errors are `{"code":"invalid","message":"...","line":N}`.
    case v2
    /// QuestDB's `http::` transport: `/write` without a `db` (InfluxDB 1.x requires one). Errors
    /// as 2.x's, which QuestDB's own server also answers with.
    case questDB

    /// The API of `request`, or nil for a route that is not InfluxDB's.
    init?(_ request: Request) {
        // As the router matches it: `//write` is `/write`.
        switch "/" + request.uri.path.split(separator: "/").joined(separator: "/") {
        case "/write": self = request.uri.queryParameters.get("db") == nil ? .questDB : .v1
        case "/api/v2/write": self = .v2
        case "/query": self = .v1
        default: return nil
        }
    }

    var description: String {
        switch self {
        case .v1: "influxdb-v1"
        case .v2: "influxdb-v2"
        case .questDB: "questdb"
        }
    }
}
