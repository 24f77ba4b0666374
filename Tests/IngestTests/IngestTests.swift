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

struct Fixture {
    let path: String
    let log: Log
    let pipeline: IngestPipeline

    static func make(partitions: Int = 4, fsync: FsyncPolicy = .interval, path: String? = nil,
                     fileOperations: FileOperations = .system) async throws -> Fixture {
        let path = path ?? NSTemporaryDirectory() + "sensorlog-ingest-" + UUID().uuidString
        var limits = Limits()
        limits.partitions = partitions
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits, fsync: fsync, fileOperations: fileOperations))
        let pipeline = try await IngestPipeline(log: log, validator: ReadingValidator(limits: limits), metrics: IngestMetrics())
        return Fixture(path: path, log: log, pipeline: pipeline)
    }

    func reopen() async throws -> Fixture {
        try log.close()
        return try await Fixture.make(partitions: log.partitions.count, path: path)
    }

    func close(remove: Bool = true) {
        try? log.close()
        if remove { try? FileManager.default.removeItem(atPath: path) }
    }

    /// Every reading in the log, per sensor/timestamp key, with how often it is stored.
    func stored() throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for p in 0..<log.partitions.count {
            let reader = log.reader(partition: p, from: 0)
            while let (batch, first) = try reader.next() {
                for i in first..<batch.count { counts["\(batch.sensorID(at: i))@\(batch.timestamps[i])", default: 0] += 1 }
            }
        }
        return counts
    }

    /// Every reading in the log.
    func storedReadings() throws -> [Reading] {
        var all: [Reading] = []
        for p in 0..<log.partitions.count {
            let reader = log.reader(partition: p, from: 0)
            while let (batch, first) = try reader.next() { all += batch.readings[first...] }
        }
        return all
    }
}

func r(_ id: String, _ ts: Int64, type: String = "temperature", value: Double = 1) -> Reading {
    Reading(sensorID: id, type: type, value: value, location: "lab", timestamp: ts)
}

@Suite struct DedupeTests {
    @Test func exactOverTheWholeLogInAndOutOfOrder() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        let first = (0..<2000).map { r("s\($0 % 50)", Int64($0)) }
        let o1 = try await f.pipeline.submit(first, via: .tcp)
        #expect(o1.allSatisfy { if case .appended = $0 { return true } else { return false } })
        // A resend, shuffled, with new late readings and in-batch duplicates mixed in.
        var resend = first.shuffled()
        resend += [r("s1", -5), r("s1", -5), r("s2", 100_000), r("s2", 100_000)]
        let o2 = try await f.pipeline.submit(resend, via: .tcp)
        let appended = o2.filter { if case .appended = $0 { return true } else { return false } }.count
        #expect(appended == 2)
        var stored = try f.stored()
        #expect(stored.count == 2002 && stored.values.allSatisfy { $0 == 1 })

        // After a restart the state is rebuilt from the log: still no duplicate gets in.
        let g = try await f.reopen()
        defer { g.close() }
        let o3 = try await g.pipeline.submit(resend + [r("s3", 7_000_000)], via: .http)
        #expect(o3.filter { if case .appended = $0 { return true } else { return false } }.count == 1)
        stored = try g.stored()
        #expect(stored.count == 2003 && stored.values.allSatisfy { $0 == 1 })
    }

    /// One reading per write makes one-reading batches: the dedupe's per-batch spans merge into
    /// runs (bounded memory), and out-of-order checks stay exact across runs, the run still
    /// growing, a far-future reading that widens every later bound, and a restart.
    @Test func exactWithTinyBatchesAndAFarFutureReading() async throws {
        let f = try await Fixture.make(partitions: 2)
        defer { f.close() }
        var sent: [Reading] = []
        for i in 0..<3000 {
            let reading = i == 10 ? r("s0", 9_000_000_000_000_000_000) : r("s\(i % 20)", Int64(i) * 1000)
            sent.append(reading)
            _ = try await f.pipeline.submit([reading], via: .tcp)
        }
        var late: [Reading] = []
        for i in 0..<40 { late.append(r("s\(i % 20)", Int64(i) * 1000 + 500)) }  // new, between stored ones
        var resend = (sent + late).shuffled()
        var appended = 0
        while !resend.isEmpty {
            let chunk = Array(resend.prefix(10))
            resend.removeFirst(chunk.count)
            appended += try await f.pipeline.submit(chunk, via: .tcp).filter { if case .appended = $0 { return true } else { return false } }.count
        }
        #expect(appended == late.count)
        let g = try await f.reopen()
        defer { g.close() }
        let again = try await g.pipeline.submit((sent + late).shuffled(), via: .http)
        #expect(!again.contains { if case .appended = $0 { return true } else { return false } })
        let stored = try g.stored()
        #expect(stored.count == sent.count + late.count && stored.values.allSatisfy { $0 == 1 })
    }

    /// A backfill written together with live readings makes every run's time bounds span the
    /// whole backfill; a resend of the backfill must still be checked run by run through the
    /// runs' key filters, not by decoding every run for every reading (that took minutes).
    @Test func resendingABackfillMixedWithLiveReadingsIsQuick() async throws {
        let f = try await Fixture.make(partitions: 1)
        defer { f.close() }
        let live: Int64 = 1_900_000_000_000_000_000
        var history: [Reading] = []
        for k in 0..<200 {
            let part = (0..<500).map { i in r("h\(i % 50)", Int64(k * 500 + i) * 1000) }
            history += part
            _ = try await f.pipeline.submit(part + [r("live", live + Int64(k))], via: .tcp)
        }
        let clock = ContinuousClock()
        let started = clock.now
        var duplicates = 0
        for chunk in stride(from: 0, to: history.count, by: 2000) {
            let outcomes = try await f.pipeline.submit(Array(history[chunk..<min(chunk + 2000, history.count)]), via: .tcp)
            duplicates += outcomes.filter { $0 == .duplicate }.count
        }
        #expect(duplicates == history.count)
        #expect(clock.now - started < .seconds(30), "resend took \(clock.now - started)")
        // And a reading of the backfill's time range that is not stored still goes in.
        let gap = try await f.pipeline.submit([r("h1", 7)], via: .tcp)
        #expect(gap == [.appended(partition: 0, offset: Int64(history.count + 200))])
    }

    @Test func aSensorKeepsTheTypeOfItsFirstReading() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        _ = try await f.pipeline.submit([r("t1", 1, type: "humidity", value: 5)], via: .tcp)
        let o = try await f.pipeline.submit([r("t1", 2, type: "temperature"), r("t1", 3, type: "humidity")], via: .tcp)
        #expect(o[0] == .typeMismatch(expected: "humidity"))
        if case .appended = o[1] {} else { Issue.record("same-type reading refused: \(o[1])") }
        let whole = try await f.pipeline.submitWhole([r("new", 1, type: "pressure"), r("new", 2, type: "humidity"), r("t1", 9)], via: .http)
        guard case .typeConflict(1, "pressure") = whole else { Issue.record("\(whole)"); return }
        // The conflict nearest the start is reported, whichever partition it is in.
        let later = try await f.pipeline.submitWhole([r("x", 1), r("t1", 9), r("new", 3, type: "pressure")], via: .http)
        guard case .typeConflict(1, "humidity") = later else { Issue.record("\(later)"); return }
        #expect(try f.stored().keys.allSatisfy { $0.hasPrefix("t1") })
    }

    /// Arrays that each bring new sensors, with the same sensors' first readings of other types
    /// racing them one by one: every array is written whole or refused whole, and no sensor
    /// ends up with two types.
    @Test func arraysRacingOtherTypesAreWrittenWholeOrNotAtAll() async throws {
        let f = try await Fixture.make(fsync: .always)
        defer { f.close() }
        let sensors = 40
        let arrays = try await withThrowingTaskGroup(of: (Bool, Int)?.self) { group in
            for k in 0..<sensors {
                group.addTask {
                    let items = (0..<6).map { r("race\(k)-\($0 % 3)", Int64($0), type: "temperature") }
                    switch try await f.pipeline.submitWhole(items, via: .http) {
                    case .submitted(let o): return (o.allSatisfy { if case .appended = $0 { true } else { false } }, o.count)
                    case .typeConflict: return (true, 0)
                    }
                }
                group.addTask {
                    _ = try await f.pipeline.submit([r("race\(k)-\(k % 3)", 100, type: "humidity", value: 50)], via: .http)
                    return nil
                }
            }
            var all: [(Bool, Int)] = []
            for try await x in group { if let x { all.append(x) } }
            return all
        }
        #expect(arrays.allSatisfy { $0.0 }, "an array was partly refused after its check")
        let stored = try f.storedReadings()
        var types: [String: Set<String>] = [:]
        for reading in stored { types[reading.sensorID, default: []].insert(reading.type) }
        #expect(types.values.allSatisfy { $0.count == 1 })
        for k in 0..<sensors {
            let fromArray = stored.filter { $0.sensorID.hasPrefix("race\(k)-") && $0.type == "temperature" }.count
            #expect(fromArray == 0 || fromArray == 6, "race\(k): \(fromArray) of 6 array readings stored")
        }
    }

    @Test func concurrentProducersOfTheSameReadingsStoreEachOnce() async throws {
        let f = try await Fixture.make(fsync: .always)
        defer { f.close() }
        let readings = (0..<3000).map { r("c\($0 % 30)", Int64($0)) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for k in 0..<8 {
                group.addTask {
                    let slice = k % 2 == 0 ? readings : readings.reversed()
                    for chunk in stride(from: 0, to: slice.count, by: 250) {
                        _ = try await f.pipeline.submit(Array(slice[chunk..<(chunk + 250)]), via: .tcp)
                    }
                }
            }
            try await group.waitForAll()
        }
        let stored = try f.stored()
        #expect(stored.count == 3000 && stored.values.allSatisfy { $0 == 1 })
    }
}

@Suite struct HTTPAPITests {
    static let json: HTTPFields = [.contentType: "application/json"]

    func withApp(_ configuration: HTTPServerConfiguration = HTTPServerConfiguration(),
                 _ body: @Sendable (any TestClientProtocol, Fixture) async throws -> Void) async throws {
        let f = try await Fixture.make()
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
        try await withApp(configuration) { client, _ in
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
        try await withApp(configuration) { client, _ in
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

@Suite struct LineProtocolServerTests {
    @Test func linesOverARealSocketWithBadInputAround() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        var limits = Limits()
        limits.maxLineBytes = 1024
        let server = LineProtocolServer(configuration: .init(host: "127.0.0.1", port: 0, limits: limits), pipeline: f.pipeline, logger: .init(label: "test"))
        let port = try await server.start()
        var text = ""
        for i in 0..<5000 {
            text += "temperature,sensor_id=s\(i % 100),location=l value=\(i).5 \(1_700_000_000_000_000_000 + Int64(i))\n"
            if i % 1000 == 7 { text += "garbage line \(i)\n" + String(repeating: "x", count: 5000) + "\n" }
        }
        text += "temperature,sensor_id=cut,location=l value=1"  // partial last line: dropped
        try sendTCP(port: port, Array(text.utf8))
        let deadline = Date().addingTimeInterval(20)
        while try f.stored().count < 5000 && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        await server.shutdown()
        let stored = try f.stored()
        #expect(stored.count == 5000 && stored.values.allSatisfy { $0 == 1 })
        #expect(stored["cut@42"] == nil)
    }
}

extension LineProtocolServerTests {
    func serve(_ f: Fixture, limits: Limits = Limits()) async throws -> (LineProtocolServer, Int) {
        let server = LineProtocolServer(configuration: .init(host: "127.0.0.1", port: 0, limits: limits), pipeline: f.pipeline, logger: .init(label: "test"))
        return (server, try await server.start())
    }

    /// Waits (20 s at most) until `count` readings are stored, shuts the server down, and
    /// expects exactly `count`, each once.
    func expectStoredOnce(_ f: Fixture, _ count: Int, then server: LineProtocolServer) async throws {
        let deadline = Date().addingTimeInterval(20)
        while try f.stored().count < count && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        await server.shutdown()
        let stored = try f.stored()
        #expect(stored.count == count && stored.values.allSatisfy { $0 == 1 })
    }
    /// Lines without a timestamp take the receive time; several of one sensor in one packet
    /// are several readings, not one and its duplicates.
    @Test func linesWithoutTimestampsAreEachStored() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        let (server, port) = try await serve(f)
        try sendTCP(port: port, Array(String(repeating: "temperature,sensor_id=no-ts,location=l value=1\n", count: 50).utf8))
        try sendTCP(port: port, Array(String(repeating: "temperature,sensor_id=no-ts,location=l value=2\n", count: 50).utf8))
        try await expectStoredOnce(f, 100, then: server)
    }

    /// The log refuses writes for a while (disk full): TCP has no acks, so what was read is kept
    /// and retried, not dropped; once writes succeed, every line is stored once.
    @Test func readingsReadWhileTheDiskIsFullLandOnceItIsNot() async throws {
        let full = Gate(closed: true)
        let f = try await Fixture.make(fileOperations: writes(while: full) { errno = ENOSPC; return true })
        defer { f.close() }
        let (server, port) = try await serve(f)
        try sendTCP(port: port, lines(2000, sensor: "full", of: 7))
        try await Task.sleep(for: .milliseconds(1500))  // at least one refused attempt and one retry
        #expect(try f.stored().isEmpty)
        full.open()
        try await expectStoredOnce(f, 2000, then: server)
    }

    /// The idle timeout is for silent producers, not for ones the server paused: a connection held
    /// through a failed append outlives the timeout, and what it sent lands once the log writes.
    @Test func aConnectionPausedByTheServerIsNotIdle() async throws {
        let full = Gate(closed: true)
        let f = try await Fixture.make(fileOperations: writes(while: full) { errno = ENOSPC; return true })
        defer { f.close() }
        var limits = Limits()
        limits.idleTimeout = .seconds(1)
        let (server, port) = try await serve(f, limits: limits)
        let fd = try connectTCP(port: port)
        defer { close(fd) }
        let bytes = lines(500, sensor: "held", of: 5)
        #expect(bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) } == bytes.count)
        try await Task.sleep(for: .milliseconds(2500))
        var probe: UInt8 = 0
        let got = recv(fd, &probe, 1, Int32(MSG_DONTWAIT))
        #expect(got == -1 && (errno == EAGAIN || errno == EWOULDBLOCK), "the server closed a connection it had paused")
        full.open()
        try await expectStoredOnce(f, 500, then: server)
    }

    /// A submission of duplicates alone writes nothing, so it says nothing about whether the log
    /// can write again: /health stays unavailable until an append succeeds.
    @Test func duplicatesAloneDoNotClearAFailedAppend() async throws {
        let failing = Gate(closed: false)
        let f = try await Fixture.make(fileOperations: writes(while: failing) { errno = EIO; return true })
        defer { f.close() }
        _ = try await f.pipeline.submit([r("d", 1)], via: .http)
        failing.close()
        await #expect(throws: LogError.self) { _ = try await f.pipeline.submit([r("d", 2)], via: .http) }
        #expect(f.pipeline.unavailableReason != nil)
        #expect(try await f.pipeline.submit([r("d", 1)], via: .http) == [.duplicate])
        #expect(f.pipeline.unavailableReason != nil, "a duplicate cleared the failure")
        failing.open()
        #expect(try await f.pipeline.submit([r("d", 2)], via: .http) == [.appended(partition: f.pipeline.partition(for: "d"), offset: 1)])
        #expect(f.pipeline.unavailableReason == nil)
    }

    /// While the log cannot write, a connection must stop reading its socket: the producer's
    /// sends stall after a bounded amount (pending readings plus kernel buffers), instead of the
    /// server parsing everything into memory. Once the log writes again, everything lands once.
    @Test func aStalledLogStopsTheSocketBeingRead() async throws {
        let stalled = Gate(closed: true)
        let f = try await Fixture.make(fileOperations: writes(while: stalled) { usleep(1000); return false })
        defer { f.close() }
        var limits = Limits()
        limits.maxPendingReadingsPerConnection = 1000
        limits.maxSocketReadBytes = 64 << 10
        let (server, port) = try await serve(f, limits: limits)

        // 48 MiB of lines, far more than a paused connection plus the kernel's buffers can absorb.
        var bytes: [UInt8] = []
        var lines = 0
        while bytes.count < 48 << 20 {
            bytes += Array("temperature,sensor_id=s\(lines % 500),location=l value=1.5 \(1_700_000_000_000_000_000 + Int64(lines))\n".utf8)
            lines += 1
        }
        let fd = try connectTCP(port: port)
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        // Send until the server has taken nothing for a second.
        var sent = 0
        var idleSince = Date()
        while sent < bytes.count && Date().timeIntervalSince(idleSince) < 1 {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
                idleSince = Date()
            } else {
                usleep(1000)
            }
        }
        #expect(sent < 24 << 20, "the server read \(sent) bytes while its log could not write")

        stalled.open()
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            try #require(n > 0)
            sent += n
        }
        shutdown(fd, Int32(SHUT_WR))
        try await expectStoredOnce(f, lines, then: server)
    }
}

/// A switch shared with a fault-injecting `FileOperations`.
final class Gate: Sendable {
    private let state: Mutex<Bool>
    init(closed: Bool) { state = Mutex(closed) }
    var isClosed: Bool { state.withLock { $0 } }
    func open() { state.withLock { $0 = false } }
    func close() { state.withLock { $0 = true } }
}

/// Real writes, except while `gate` is closed: then `fault` runs first; it returns true for a
/// failed write (with errno set), false to check the gate again.
func writes(while gate: Gate, _ fault: @escaping @Sendable () -> Bool) -> FileOperations {
    FileOperations(
        write: { fd, bytes, offset in
            while gate.isClosed {
                if fault() { return -1 }
            }
            return FileOperations.system.write(fd, bytes, offset)
        },
        sync: FileOperations.system.sync)
}

/// A connected TCP socket to 127.0.0.1:`port`.
func connectTCP(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    precondition(rc == 0, "connect failed")
    return fd
}

/// Sends bytes on a fresh TCP connection and closes it.
/// `count` line-protocol lines of sensors `<sensor>-0` … `<sensor>-<sensors - 1>` in turn, one
/// nanosecond apart.
func lines(_ count: Int, sensor: String, of sensors: Int) -> [UInt8] {
    var text = ""
    for i in 0..<count { text += "temperature,sensor_id=\(sensor)-\(i % sensors),location=l value=1 \(1_700_000_000_000_000_000 + Int64(i))\n" }
    return Array(text.utf8)
}

func sendTCP(port: Int, _ bytes: [UInt8]) throws {
    let fd = try connectTCP(port: port)
    defer { close(fd) }
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        precondition(n > 0)
        sent += n
    }
}
