import Foundation
import HTTPTypes
import LogStore
public import Hummingbird

/// Every error the API answers with: `{"error":{"code","message","field","index"}}`, never
/// internals. `code` is stable; `field` and `index` say where in the body the problem is;
/// `partition` and `offset` where in the log (a damaged batch).
public struct APIError: Error, HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var code: String
    public var message: String
    public var field: String?
    public var index: Int?
    public var partition: Int?
    public var offset: Int64?
    /// The line of a line-protocol body (from 1) the error is about.
    public var line: Int?
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, code: String, _ message: String, field: String? = nil, index: Int? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.index = index
    }

    /// 503 for an append the log refused (disk full, I/O), with `Retry-After`; `retry` says which
    /// resends the dedupe makes safe.
    static func logRefused(_ error: LogError, retryAfterSeconds: Int, retry: String) -> APIError {
        var api = APIError(.serviceUnavailable, code: error.code == .diskFull ? "disk_full" : "log_unavailable",
                           "the log cannot accept writes right now; retry later (\(retry))")
        api.headers[.retryAfter] = String(retryAfterSeconds)
        return api
    }

    struct Body: Encodable {
        struct Detail: Encodable {
            var code: String
            var message: String
            var field: String?
            var index: Int?
            var partition: Int?
            var offset: Int64?
        }
        var error: Detail
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var response: Response
        if let api = InfluxAPI(request) {
            response = influxResponse(api)
        } else {
            response = JSONBody.response(status, Body(error: .init(code: code, message: message, field: field, index: index, partition: partition, offset: offset)))
        }
        response.headers.append(contentsOf: headers)
        if status == .unauthorized, InfluxAPI(request) != nil {
            // Influx clients answer a Basic challenge with their user name and password (the key).
            response.headers[.wwwAuthenticate] = "Basic realm=\"sensorlog\""
        }
        return response
    }

    /// InfluxDB's error bodies, which its clients (and QuestDB's) parse: `{"error":...}` on 1.x,
    /// `{"code":...,"message":...}` on 2.x with the line when there is one.
    private func influxResponse(_ api: InfluxAPI) -> Response {
        struct V1: Encodable { var error: String }
        struct V2: Encodable { var code: String; var message: String; var line: Int? }
        var response = api == .v1 ? JSONBody.response(status, V1(error: message))
                                  : JSONBody.response(status, V2(code: Self.influxCode(status), message: message, line: line))
        // Exactly this: QuestDB's client parses an error body only under `application/json`.
        response.headers[.contentType] = "application/json"
        response.headers[LineProtocolRoutes.versionHeader] = LineProtocolRoutes.influxVersion
        if api == .v1 { response.headers[HTTPField.Name("X-Influxdb-Error")!] = String(message.prefix(1024)) }
        return response
    }

    /// InfluxDB 2.x's error codes (its `errors.go`), by status.
    static func influxCode(_ status: HTTPResponse.Status) -> String {
        switch status.code {
        case 400: "invalid"
        case 401: "unauthorized"
        case 403: "forbidden"
        case 404: "not found"
        case 405: "method not allowed"
        case 409: "conflict"
        case 413: "request too large"
        case 415: "unsupported media type"
        case 422: "unprocessable entity"
        case 429: "too many requests"
        case 503: "unavailable"
        default: "internal error"
        }
    }
}

/// The one JSON encoder setup of the API: sorted keys, no escaped slashes.
enum JSONBody {
    static func data(_ value: some Encodable) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            return try encoder.encode(value)
        } catch {
            fatalError("response bodies always encode: \(error)")
        }
    }

    static func response(_ status: HTTPResponse.Status, _ value: some Encodable) -> Response {
        var data = data(value)
        data.append(0x0A)
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// A body already in JSON (with its newline).
    static func response(_ status: HTTPResponse.Status, raw json: String) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(string: json)))
    }
}
