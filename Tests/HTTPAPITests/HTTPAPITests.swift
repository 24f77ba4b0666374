import Foundation
import HTTPAPI
import HTTPTypes
import Logging
import Hummingbird
import HummingbirdTesting
import Ingest
import LogStore
import NIOCore
import NIOPosix
import SensorLogCore
import Synchronization
import Testing

import TestSupport

@Suite struct HTTPAPITests {
    static let json: HTTPFields = [.contentType: "application/json"]

    /// `time` is the clock of the log and the rate limiter: tests of the limiter pass a
    /// `ManualTime`, so a slow machine never refills a bucket between two requests.
    func withApp(_ configuration: HTTPServerConfiguration = HTTPServerConfiguration(), time: any TimeSource = SystemTime(),
                 _ body: @Sendable (any TestClientProtocol, Fixture) async throws -> Void) async throws {
        let f = try await Fixture.make(time: time)
        defer { f.close() }
        let app = HTTPServer.make(configuration: configuration, pipeline: f.pipeline, logger: .init(label: "test"), metricsText: { "# metrics\n" })
        try await app.test(.router) { client in try await body(client, f) }
    }

    func post(_ client: any TestClientProtocol, _ body: String, headers: HTTPFields = HTTPAPITests.json) async throws -> (Int, String, HTTPFields) {
        try await client.execute(uri: "/sensor/data", method: .post, headers: headers, body: ByteBuffer(string: body)) { response in
            (response.status.code, String(buffer: response.body), response.headers)
        }
    }

    let valid = #"{"sensor_id":"rest-1","type":"temperature","value":21.5,"location":"lab","timestamp":"2025-11-24T10:00:00Z"}"#

    @Test func statusCodes() async throws {
        try await withApp { client, f in
            var (status, body, headers) = try await post(client, valid)
            #expect(status == 201)
            #expect(body.contains("\"offset\":0"))
            #expect(headers[HTTPField.Name("X-Request-Id")!] != nil)
            (status, body, _) = try await post(client, valid)
            #expect(status == 409)
            #expect(body.contains("\"code\":\"duplicate\""))
            (status, body, _) = try await post(client, "{not json")
            #expect(status == 400)
            #expect(body.contains("invalid_json"))
            (status, body, _) = try await post(client, valid.replacingOccurrences(of: "temperature", with: "voltage"))
            #expect(status == 400 && body.contains("\"field\":\"type\""))
            (status, body, _) = try await post(client, valid.replacingOccurrences(of: "21.5", with: "\"hot\""))
            #expect(status == 400 && body.contains("\"field\":\"value\""))
            (status, body, _) = try await post(client, valid.replacingOccurrences(of: #","location":"lab""#, with: ""))
            #expect(status == 400 && body.contains("\"field\":\"location\""))
            (status, body, _) = try await post(client, valid.replacingOccurrences(of: "2025-11-24T10:00:00Z", with: "yesterday"))
            #expect(status == 400 && body.contains("\"field\":\"timestamp\""))
            (status, _, _) = try await post(client, valid, headers: [.contentType: "text/plain"])
            #expect(status == 415)
            (status, body, _) = try await post(client, valid.replacingOccurrences(of: "temperature", with: "humidity"))
            #expect(status == 400 && body.contains("type_mismatch"))
            // Validation before the duplicate check.
            (status, _, _) = try await post(client, valid.replacingOccurrences(of: "21.5", with: "true"))
            #expect(status == 400)
            _ = f
        }
    }

    @Test func arraysAreValidatedWholeAndDuplicatesListed() async throws {
        try await withApp { client, f in
            func item(_ id: String, _ t: String, value: String = "20.5") -> String {
                #"{"sensor_id":"\#(id)","type":"temperature","value":\#(value),"location":"lab","timestamp":"\#(t)"}"#
            }
            var (status, body, _) = try await post(client, "[" + item("a", "2025-11-24T10:00:00Z") + "," + item("b", "2025-11-24T10:00:00.123456789+01:00", value: "NaN") + "]")
            #expect(status == 400)
            #expect(try f.stored().isEmpty, "nothing of an invalid array is written")
            (status, body, _) = try await post(client, "[" + item("a", "2025-11-24T10:00:00Z") + "," + item("b", "2025-11-24T10:00:00.5Z", value: "\"x\"") + "]")
            #expect(status == 400 && body.contains("\"index\":1"))
            #expect(try f.stored().isEmpty)
            (status, body, _) = try await post(client, "[" + item("a", "2025-11-24T10:00:00Z") + "," + item("a", "2025-11-24T10:00:00Z") + "," + item("b", "2025-11-24T09:00:00.123456789-01:00") + "]")
            #expect(status == 201)
            #expect(body.contains("\"accepted\":2") && body.contains("\"duplicates\":[1]"))
            #expect(try f.stored()["b@\(Timestamp.parseISO8601("2025-11-24T10:00:00.123456789Z")!)"] == 1)
            (status, _, _) = try await post(client, "[]")
            #expect(status == 400)
            let many = "[" + (0...10_000).map { item("m", "2025-11-24T10:00:00.\(String(format: "%06d", $0))Z") }.joined(separator: ",") + "]"
            (status, body, _) = try await post(client, many)
            #expect(status == 400 || status == 413, "\(body.prefix(100))")
        }
    }

    @Test func bodyLimitIsDecidedFromContentLength() async throws {
        var configuration = HTTPServerConfiguration()
        configuration.limits.maxBodyBytes = 2048
        try await withApp(configuration) { client, _ in
            let big = "[" + String(repeating: " ", count: 4096) + "]"
            let (status, body, _) = try await post(client, big)
            #expect(status == 413 && body.contains("body_too_large"))
        }
    }

    @Test func apiKeysRateLimitAndCORS() async throws {
        let configuration = HTTPServerConfiguration(apiKeys: ["k1", "secret-2"], rateLimit: 2, corsOrigin: "https://dash.example")
        try await withApp(configuration, time: ManualTime()) { client, _ in
            var (status, _, _) = try await post(client, valid)
            #expect(status == 401)
            (status, _, _) = try await post(client, valid, headers: [.contentType: "application/json", HTTPField.Name("X-API-Key")!: "wrong"])
            #expect(status == 401)
            // A key plus 256 more bytes: the length difference must count whole, not modulo 256.
            (status, _, _) = try await post(client, valid, headers: [.contentType: "application/json",
                                                                     HTTPField.Name("X-API-Key")!: "k1" + String(repeating: "x", count: 256)])
            #expect(status == 401)
            (status, _, _) = try await post(client, valid, headers: [.contentType: "application/json", HTTPField.Name("X-API-Key")!: "k"])
            #expect(status == 401)
            let health = try await client.execute(uri: "/health", method: .get) { $0.status.code }
            #expect(health == 200, "health needs no key")
            let metrics = try await client.execute(uri: "/metrics", method: .get) { $0.status.code }
            #expect(metrics == 200, "metrics need no key")
            var headers: HTTPFields = [.contentType: "application/json", HTTPField.Name("X-API-Key")!: "secret-2"]
            (status, _, _) = try await post(client, valid, headers: headers)
            #expect(status == 201)
            let other = valid.replacingOccurrences(of: "10:00:00Z", with: "10:00:01Z")
            (status, _, _) = try await post(client, other, headers: headers)
            #expect(status == 201)
            var responseHeaders: HTTPFields
            (status, _, responseHeaders) = try await post(client, valid.replacingOccurrences(of: "10:00:00Z", with: "10:00:02Z"), headers: headers)
            #expect(status == 429)
            #expect(responseHeaders[.retryAfter] != nil)
            // Another key has its own bucket.
            headers[HTTPField.Name("X-API-Key")!] = "k1"
            (status, _, _) = try await post(client, valid.replacingOccurrences(of: "10:00:00Z", with: "10:00:03Z"), headers: headers)
            #expect(status == 201)
            let preflight = try await client.execute(
                uri: "/sensor/data", method: .options,
                headers: [.origin: "https://dash.example", .accessControlRequestMethod: "POST"]
            ) { ($0.status.code, $0.headers[.accessControlAllowOrigin]) }
            #expect(preflight.0 == 200 || preflight.0 == 204)
            #expect(preflight.1 == "https://dash.example")
        }
    }

    /// CORS adds its headers to errors too; the error keeps its code, field, index and headers.
    @Test func errorsKeepTheirBodyAndHeadersUnderCORS() async throws {
        let configuration = HTTPServerConfiguration(apiKeys: ["k1"], rateLimit: 1, corsOrigin: "https://dash.example")
        try await withApp(configuration, time: ManualTime()) { client, _ in
            var headers: HTTPFields = [.contentType: "application/json", .origin: "https://dash.example"]
            var (status, body, got) = try await post(client, valid, headers: headers)
            #expect(status == 401 && body.contains("\"unauthorized\"") && got[.wwwAuthenticate] == "X-API-Key")
            #expect(got[.accessControlAllowOrigin] == "https://dash.example" && got[HTTPField.Name("X-Request-Id")!] != nil)
            headers[HTTPField.Name("X-API-Key")!] = "k1"
            let bad = "[" + valid + "," + valid.replacingOccurrences(of: "\"lab\"", with: "\"\"") + "]"
            (status, body, got) = try await post(client, bad, headers: headers)
            #expect(status == 400 && body.contains("\"invalid_location\"") && body.contains("\"index\":1") && body.contains("\"field\":\"location\""))
            #expect(got[.accessControlAllowOrigin] == "https://dash.example")
            (status, _, _) = try await post(client, valid, headers: headers)
            #expect(status == 201)
            (status, body, got) = try await post(client, valid.replacingOccurrences(of: "10:00:00Z", with: "10:00:01Z"), headers: headers)
            #expect(status == 429 && body.contains("\"rate_limited\"") && got[.retryAfter] != nil)
            #expect(got[.accessControlAllowOrigin] == "https://dash.example")
            let missing = try await client.execute(uri: "/nowhere", method: .get,
                                                   headers: [.origin: "https://dash.example", HTTPField.Name("X-API-Key")!: "k1"]) {
                ($0.status.code, String(buffer: $0.body), $0.headers[.accessControlAllowOrigin])
            }
            #expect(missing.0 == 404 && missing.1.contains("\"not_found\"") && missing.2 == "https://dash.example")
        }
    }

    @Test func aKnownPathAskedWithAnotherMethodIs405WithAllow() async throws {
        try await withApp { client, _ in
            let wrong = try await client.execute(uri: "/sensor/data", method: .get) {
                ($0.status.code, $0.headers[.allow], String(buffer: $0.body))
            }
            #expect(wrong.0 == 405 && wrong.1 == "POST" && wrong.2.contains("\"method_not_allowed\""))
            let health = try await client.execute(uri: "/health", method: .delete) { ($0.status.code, $0.headers[.allow]) }
            #expect(health.0 == 405 && health.1 == "GET, HEAD")
            let param = try await client.execute(uri: "/sensors/s-1/readings", method: .post) { ($0.status.code, $0.headers[.allow]) }
            #expect(param.0 == 405 && param.1 == "GET, HEAD")
            let nowhere = try await client.execute(uri: "/sensor/data/extra", method: .get) { $0.status.code }
            #expect(nowhere == 404)
        }
    }

    @Test func timestampsAreISO8601Only() async throws {
        try await withApp { client, _ in
            for bad in ["1763978400", "\"1763978400000000000\"", "\"2025-11-24T10:00:00\"", "\"yesterday\""] {
                let body = #"{"sensor_id":"t","type":"temperature","value":1,"location":"lab","timestamp":"# + bad + "}"
                let (status, text, _) = try await post(client, body)
                #expect(status == 400 && text.contains("invalid_timestamp"), "\(bad)")
            }
        }
    }

    @Test func requestIDIsEchoed() async throws {
        try await withApp { client, _ in
            let id = try await client.execute(uri: "/health", method: .get, headers: [HTTPField.Name("X-Request-Id")!: "abc-123"]) {
                $0.headers[HTTPField.Name("X-Request-Id")!]
            }
            #expect(id == "abc-123")
            let onError = try await client.execute(uri: "/nope", method: .get, headers: [HTTPField.Name("X-Request-Id")!: "err-9"]) {
                ($0.status.code, $0.headers[HTTPField.Name("X-Request-Id")!])
            }
            #expect(onError.0 == 404 && onError.1 == "err-9")
        }
    }
}

