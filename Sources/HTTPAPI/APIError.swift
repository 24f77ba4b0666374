import Foundation
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
    public var headers: HTTPFields = [:]

    public init(_ status: HTTPResponse.Status, code: String, _ message: String, field: String? = nil, index: Int? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.index = index
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
        var response = JSONBody.response(status, Body(error: .init(code: code, message: message, field: field, index: index, partition: partition, offset: offset)))
        response.headers.append(contentsOf: headers)
        return response
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
