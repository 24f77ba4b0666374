import Foundation
import HTTPAPI
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Ingest
import LogStore
import Logging
import NIOCore
import SensorLogCore
import Testing

import TestSupport

/// `/write`, `/api/v2/write` and what InfluxDB and QuestDB clients ask around them. The real
/// clients are driven by tests/e2e/test_influx_http.py; these pin the answers.
@Suite struct LineProtocolRoutesTests {
    func withApp(_ configuration: HTTPServerConfiguration = HTTPServerConfiguration(), fileOperations: FileOperations = .system,
                 _ body: @Sendable (any TestClientProtocol, Fixture) async throws -> Void) async throws {
        let f = try await Fixture.make(fileOperations: fileOperations, time: ManualTime())
        defer { f.close() }
        let app = HTTPServer.make(configuration: configuration, pipeline: f.pipeline, logger: .init(label: "test"), metricsText: { "" })
        try await app.test(.router) { client in try await body(client, f) }
    }

    struct Answer {
        var status: Int
        var body: String
        var headers: HTTPFields
    }

    func send(_ client: any TestClientProtocol, _ uri: String, _ body: ByteBuffer, headers: HTTPFields = [:],
              method: HTTPRequest.Method = .post) async throws -> Answer {
        try await client.execute(uri: uri, method: method, headers: headers, body: body) {
            Answer(status: Int($0.status.code), body: String(buffer: $0.body), headers: $0.headers)
        }
    }

    func send(_ client: any TestClientProtocol, _ uri: String, _ text: String, headers: HTTPFields = [:]) async throws -> Answer {
        try await send(client, uri, ByteBuffer(string: text), headers: headers)
    }

    /// gzip as the command compresses it (Foundation on Linux has no gzip).
    static func gzip(_ data: Data) throws -> ByteBuffer {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/gzip")
        process.arguments = ["-c"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        let writer = Thread { input.fileHandleForWriting.write(data); try? input.fileHandleForWriting.close() }
        writer.start()
        let compressed = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return ByteBuffer(bytes: compressed)
    }

    let lines = """
        temperature,sensor_id=lp-1,location=lab value=21.5 1763978400
        humidity,sensor_id=lp-2,location=lab value=40i 1763978400
        """

    @Test func writesStoreEveryLineOnceAndAnswer204() async throws {
        try await withApp { client, f in
            var a = try await send(client, "/write?db=telegraf&precision=s", lines)
            #expect(a.status == 204 && a.headers[HTTPField.Name("X-Sensorlog-Stored")!] == "2")
            // A resend is a duplicate: stored once, still 204, as InfluxDB answers an overwrite.
            a = try await send(client, "/api/v2/write?org=o&bucket=b&precision=s", lines)
            #expect(a.status == 204 && a.headers[HTTPField.Name("X-Sensorlog-Duplicates")!] == "2")
            #expect(try f.stored() == ["lp-1@1763978400000000000": 1, "lp-2@1763978400000000000": 1])
        }
    }

    @Test func precisionScalesTimestampsAndAnUnknownOneIsRefused() async throws {
        try await withApp { client, f in
            for (precision, stamp) in [("ms", "1763978400001"), ("u", "1763978400000002"), ("n", "1763978400000000003"), ("h", "489994")] {
                let a = try await send(client, "/write?db=d&precision=\(precision)", "temperature,sensor_id=p,location=l value=1 \(stamp)")
                #expect(a.status == 204, "precision \(precision)")
            }
            let v2 = try await send(client, "/api/v2/write?precision=us", "temperature,sensor_id=p,location=l value=1 1763978400000004")
            #expect(v2.status == 204)
            #expect(try f.stored().keys.sorted() == [
                "p@1763978400000000000", "p@1763978400000000003", "p@1763978400000002000", "p@1763978400000004000", "p@1763978400001000000",
            ])
            let bad = try await send(client, "/api/v2/write?precision=h", "temperature,sensor_id=p,location=l value=1 1")
            #expect(bad.status == 400 && bad.body.contains("\"code\":\"invalid\"") && bad.body.contains("precision"))
            let overflow = try await send(client, "/write?db=d&precision=h", "temperature,sensor_id=p,location=l value=1 9223372036854775")
            #expect(overflow.status == 400 && overflow.body.contains("overflows"))
        }
    }

    /// InfluxDB's partial write: the good lines stored, 400 naming the first bad line, in each
    /// client's error body.
    @Test func aBadLineIsAPartialWriteInTheClientsOwnErrorBody() async throws {
        try await withApp { client, f in
            let body = lines + "\nnot a line\ntemperature,sensor_id=lp-3,location=lab value=1 1763978401\nwind,sensor_id=x,location=l value=1 1"
            let v1 = try await send(client, "/write?db=d&precision=s", body)
            #expect(v1.status == 400)
            #expect(v1.body.hasPrefix("{\"error\":\"partial write: unable to parse line 3 'not a line'"), "\(v1.body)")
            #expect(v1.body.contains("dropped=2"))
            #expect(v1.headers[HTTPField.Name("X-Influxdb-Error")!] != nil && v1.headers[HTTPField.Name("X-Influxdb-Version")!] != nil)
            #expect(try f.stored().count == 3)
            let v2 = try await send(client, "/api/v2/write?precision=s", "wind,sensor_id=x,location=l value=1 1")
            #expect(v2.status == 400 && v2.body.contains("\"code\":\"invalid\"") && v2.body.contains("\"line\":1") && v2.body.contains("unknown_type"))
            #expect(!v2.body.contains("partial write"))
            // An ingest refusal (a type mismatch) is a bad line too, found after the append.
            let mismatch = try await send(client, "/write?precision=s", "humidity,sensor_id=lp-1,location=lab value=1 1763978500")
            #expect(mismatch.status == 400 && mismatch.body.contains("type_mismatch") && mismatch.body.contains("\"line\":1"))
        }
    }

    @Test func gzipBodiesAreInflatedWithinTheLimit() async throws {
        let limits = { var l = Limits(); l.maxWriteBodyBytes = 64 << 10; return l }()
        try await withApp(HTTPServerConfiguration(limits: limits)) { client, f in
            let gz: HTTPFields = [.contentEncoding: "gzip"]
            var a = try await send(client, "/api/v2/write?precision=s", try Self.gzip(Data(lines.utf8)), headers: gz)
            #expect(a.status == 204)
            // Two members back to back are one body (as `cat a.gz b.gz`).
            var two = try Self.gzip(Data("temperature,sensor_id=m,location=l value=1 1\n".utf8))
            var second = try Self.gzip(Data("temperature,sensor_id=m,location=l value=2 2\n".utf8))
            two.writeBuffer(&second)
            a = try await send(client, "/api/v2/write?precision=s", two, headers: gz)
            #expect(a.status == 204 && a.headers[HTTPField.Name("X-Sensorlog-Stored")!] == "2")
            // A bomb: 64 KiB compressed would be 30 MB; refused at the limit, nothing stored.
            let bomb = try Self.gzip(Data(repeating: UInt8(ascii: "a"), count: 30_000_000))
            #expect(bomb.readableBytes < limits.maxWriteBodyBytes)
            a = try await send(client, "/api/v2/write", bomb, headers: gz)
            #expect(a.status == 413 && a.body.contains("\"code\":\"request too large\""))
            a = try await send(client, "/write?db=d", ByteBuffer(string: "not gzip"), headers: gz)
            #expect(a.status == 400 && a.body.contains("gzip"))
            var cut = try Self.gzip(Data(lines.utf8))
            cut.moveWriterIndex(to: cut.writerIndex - 6)
            a = try await send(client, "/write?db=d", cut, headers: gz)
            #expect(a.status == 400 && a.body.contains("gzip"))
            a = try await send(client, "/write?db=d", ByteBuffer(string: lines), headers: [.contentEncoding: "br"])
            #expect(a.status == 415)
            a = try await send(client, "/write?db=d", ByteBuffer(repeating: 0x41, count: 70_000))
            #expect(a.status == 413 && a.body.contains("\"error\""))
            #expect(try f.stored().count == 4)
        }
    }

    /// API keys are the tokens, wherever each client puts its credential; the roles apply.
    @Test func keysAreTheTokensInEveryClientsPlace() async throws {
        let keys = [APIKey("writer", roles: [.ingest]), APIKey("reader", roles: [.read])]
        try await withApp(HTTPServerConfiguration(apiKeys: keys)) { client, _ in
            let line = "temperature,sensor_id=k,location=l value=1 "
            var a = try await send(client, "/api/v2/write?precision=s", line + "1")
            #expect(a.status == 401 && a.body.contains("\"code\":\"unauthorized\""))
            a = try await send(client, "/api/v2/write?precision=s", line + "1", headers: [.authorization: "Token writer"])
            #expect(a.status == 204)
            a = try await send(client, "/write?precision=s", line + "2", headers: [.authorization: "Bearer writer"])
            #expect(a.status == 204)
            let basic = Data("telegraf:writer".utf8).base64EncodedString()
            a = try await send(client, "/write?db=d&precision=s", line + "3", headers: [.authorization: "Basic \(basic)"])
            #expect(a.status == 204)
            a = try await send(client, "/write?db=d&u=telegraf&p=writer&precision=s", line + "4")
            #expect(a.status == 204)
            a = try await send(client, "/write?db=d&u=telegraf&p=wrong&precision=s", line + "5")
            #expect(a.status == 401 && a.body.hasPrefix("{\"error\""))
            a = try await send(client, "/api/v2/write?precision=s", line + "6", headers: [.authorization: "Token reader"])
            #expect(a.status == 403 && a.body.contains("\"code\":\"forbidden\""))
            // What clients probe before a write needs no key.
            a = try await send(client, "/ping", ByteBuffer(), method: .get)
            #expect(a.status == 204 && a.headers[HTTPField.Name("X-Influxdb-Version")!] != nil)
            a = try await send(client, "/settings", ByteBuffer(), method: .get)
            #expect(a.status == 200 && a.body.contains("\"line.proto.support.versions\":[1]"))
        }
    }

    @Test func createDatabaseIsAnsweredAndOtherQueriesAreNot() async throws {
        try await withApp { client, _ in
            var a = try await send(client, "/query", "q=CREATE+DATABASE+%22telegraf%22", headers: [.contentType: "application/x-www-form-urlencoded"])
            #expect(a.status == 200 && a.body.contains("\"results\""))
            a = try await send(client, "/query?q=create%20database%20x", ByteBuffer(), method: .get)
            #expect(a.status == 200)
            a = try await send(client, "/query?q=SELECT%20*%20FROM%20cpu", ByteBuffer(), method: .get)
            #expect(a.status == 400 && a.body.contains("CREATE DATABASE"))
        }
    }

    @Test func overTheRateLimitIs429AndNothingIsStored() async throws {
        try await withApp(HTTPServerConfiguration(rateLimit: 2)) { client, f in
            var a = try await send(client, "/api/v2/write?precision=s", lines)
            #expect(a.status == 204)
            a = try await send(client, "/api/v2/write?precision=s", "temperature,sensor_id=r,location=l value=1 5")
            #expect(a.status == 429 && a.headers[.retryAfter] != nil && a.body.contains("too many requests"))
            #expect(try f.stored().count == 2)
        }
    }

    /// The log cannot write (disk full): 503 with Retry-After in InfluxDB's body, and the resend
    /// once it can is stored once.
    @Test func aFullDiskIs503AndTheResendLandsOnce() async throws {
        let full = Gate(closed: true)
        try await withApp(fileOperations: writes(while: full) { errno = ENOSPC; return true }) { client, f in
            var a = try await send(client, "/api/v2/write?precision=s", lines)
            #expect(a.status == 503 && a.headers[.retryAfter] != nil && a.body.contains("\"code\":\"unavailable\""), "\(a.body)")
            a = try await send(client, "/write?db=d&precision=s", lines)
            #expect(a.status == 503 && a.body.hasPrefix("{\"error\""))
            full.open()
            a = try await send(client, "/api/v2/write?precision=s", lines)
            #expect(a.status == 204)
            #expect(try f.stored().values.allSatisfy { $0 == 1 } && f.stored().count == 2)
        }
    }
}
