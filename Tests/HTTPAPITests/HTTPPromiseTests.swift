import Foundation
@testable import HTTPAPI
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Ingest
import LogStore
import Logging
import NIOCore
import SensorLogCore
import Synchronization
import TestSupport
import Testing

/// The log lines a test's server wrote, with their merged metadata.
final class LogSink: Sendable {
    struct Line: Sendable {
        var level: Logger.Level
        var message: String
        var metadata: Logger.Metadata
    }

    let lines = Mutex<[Line]>([])

    var logger: Logger {
        Logger(label: "test") { _ in CapturingLogHandler(sink: self) }
    }

    func all() -> [Line] { lines.withLock { $0 } }
}

struct CapturingLogHandler: LogHandler {
    let sink: LogSink
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
        sink.lines.withLock { $0.append(.init(level: event.level, message: event.message.description, metadata: merged)) }
    }
}

/// Promises of docs/protocol.md and docs/operations.md about the HTTP API (issue 14, items 6, 11, 13).
@Suite struct HTTPPromiseTests {
    struct Page: Decodable {
        struct Reading: Decodable {
            var sensor_id: String
            var offset: Int64
        }
        var readings: [Reading]
        var next_cursor: String?
    }

    struct ErrorBody: Decodable {
        struct Detail: Decodable {
            var code: String
            var message: String
            var partition: Int?
            var offset: Int64?
        }
        var error: Detail
    }

    /// One partition of small segments holding only sensor `s1`, written until three segments
    /// exist; then a byte in the middle of the first (closed) segment is flipped, as on a disk
    /// that went bad under a running server.
    static func damagedLog() async throws -> (path: String, log: Log, pipeline: IngestPipeline, firstSegment: String, lastTimestamp: Int64) {
        let path = NSTemporaryDirectory() + "sensorlog-http-promise-" + UUID().uuidString
        var limits = Limits()
        limits.partitions = 1
        limits.segmentBytes = 64 << 10
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits, fsync: .never))
        let pipeline = try await IngestPipeline(log: log, validator: ReadingValidator(limits: limits), metrics: IngestMetrics())
        var timestamp: Int64 = 1_764_000_000_000_000_000
        var n = 0
        while log.partitions[0].segmentCount < 3 {
            // Values that do not compress away, so a segment holds a few dozen batches.
            let batch = (0..<200).map { i -> Reading in
                n += 1
                return Reading(sensorID: "s1", type: "temperature", value: Double((n &* 7919) % 100_003) / 100,
                               location: "lab", timestamp: timestamp + Int64(i) * 1_000_000)
            }
            _ = try await pipeline.submit(batch, via: .tcp)
            timestamp += 200 * 1_000_000
        }
        let directory = path + "/log/partition-000"
        let segments = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".log") }.sorted()
        let first = directory + "/" + segments[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: first))
        bytes[bytes.count / 2] ^= 0x01
        try bytes.write(to: URL(fileURLWithPath: first))
        return (path, log, pipeline, segments[0], timestamp - 1_000_000)
    }

    func get(_ client: any TestClientProtocol, _ uri: String) async throws -> (Int, Data, HTTPFields) {
        try await client.execute(uri: uri, method: .get) { response in
            (response.status.code, Data(String(buffer: response.body).utf8), response.headers)
        }
    }

    @Test func readingsOverACorruptClosedSegmentServeWhatIsReadableAndNameThePartition() async throws {
        let (path, log, pipeline, firstSegment, lastTimestamp) = try await Self.damagedLog()
        defer {
            try? log.close()
            try? FileManager.default.removeItem(atPath: path)
        }
        let sink = LogSink()
        let app = HTTPServer.make(configuration: HTTPServerConfiguration(port: 0), pipeline: pipeline, logger: sink.logger,
                                  metricsText: { "" })
        try await app.test(.live) { client in
            // The readable part before the damage, as a page that ends at the damaged batch.
            let (status, body, _) = try await get(client, "/sensors/s1/readings?limit=10000")
            #expect(status == 200, "\(String(decoding: body, as: UTF8.self))")
            let page = try JSONDecoder().decode(Page.self, from: body)
            let cursor = try #require(page.next_cursor.flatMap { Int64($0) })
            #expect(!page.readings.isEmpty)
            // Every reading before the damage, none after: offsets 0..<cursor are all s1's.
            #expect(page.readings.map(\.offset).sorted() == Array(0..<cursor))

            // The page from there answers a clear error naming the partition, not internal_error.
            let (status2, body2, headers2) = try await get(client, "/sensors/s1/readings?cursor=\(cursor)")
            #expect(status2 == 500)
            let error = try JSONDecoder().decode(ErrorBody.self, from: body2).error
            #expect(error.code == "corrupt_segment")
            #expect(error.partition == 0)
            #expect(error.offset == cursor)
            #expect(error.message.contains("partition 0") && error.message.contains("sensorlog verify --repair"))
            #expect(headers2[.retryAfter] == nil)

            // A range that starts past the damaged segment is served as usual.
            let (status3, body3, _) = try await get(client, "/sensors/s1/readings?from=\(lastTimestamp)")
            #expect(status3 == 200)
            #expect(try JSONDecoder().decode(Page.self, from: body3).readings.count == 1)

            // The operator's log line: the segment file, one request id (the one echoed), and the
            // client's address as host:port.
            let requestID = try #require(headers2[HTTPField.Name("X-Request-Id")!])
            let line = try #require(sink.all().first { $0.level == .error && $0.metadata["request_id"] == .string(requestID) })
            #expect(line.metadata["hb.request.id"] == nil)
            #expect(line.metadata["partition"] == "0")
            #expect("\(line.metadata["segment"] ?? "")".hasSuffix(firstSegment))
            #expect("\(line.metadata["message"] ?? "")" == "" && line.message.contains("verify --repair"))
            let remote = "\(try #require(line.metadata["remote"]))"
            #expect(remote.wholeMatch(of: /127\.0\.0\.1:[0-9]+/) != nil, "remote is \(remote)")
        }
    }

    @Test func everyLogLineOfARequestCarriesOneRequestID() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        let sink = LogSink()
        let app = HTTPServer.make(configuration: HTTPServerConfiguration(port: 0), pipeline: f.pipeline, logger: sink.logger,
                                  metricsText: { "" })
        try await app.test(.live) { client in
            _ = try await client.execute(uri: "/health", method: .get, headers: [HTTPField.Name("X-Request-Id")!: "abc-123"]) { _ in }
        }
        // The access line is at debug level; every line of the request has our id, not Hummingbird's.
        let lines = sink.all().filter { $0.metadata["request_id"] != nil || $0.metadata["hb.request.id"] != nil }
        #expect(!lines.isEmpty)
        for line in lines {
            #expect(line.metadata["request_id"] == "abc-123")
            #expect(line.metadata["hb.request.id"] == nil, "\(line.message) carries hb.request.id")
        }
    }

    @Test(arguments: [
        ("127.0.0.1", 57454, "127.0.0.1:57454"),
        ("::1", 8080, "[::1]:8080"),
    ])
    func remoteAddressesAreHostAndPort(ip: String, port: Int, expected: String) throws {
        #expect(try SocketAddress(ipAddress: ip, port: port).logDescription == expected)
    }

    @Test func aKnownPathAskedWithAnotherMethodHasItsRouteTemplate() {
        let table = RouteTable()
        table.add(.get, "/sensors/:id/readings")
        table.add(.post, "/sensor/data")
        #expect(table.template(for: "/sensors/abc/readings") == "/sensors/{id}/readings")
        #expect(table.template(for: "/sensor/data") == "/sensor/data")
        #expect(table.template(for: "/nowhere") == nil)
    }
}
