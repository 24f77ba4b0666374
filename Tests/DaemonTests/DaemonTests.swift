import Aggregator
@testable import Daemon
import Ingest
import Foundation
import LogStore
import Logging
import Prometheus
import SensorLogCore
import TestSupport
import Synchronization
import Testing

/// The whole server in-process: started from a configuration, fed over both doors, stopped,
/// with its shutdown order observed rather than documented.
@Suite struct DaemonTests {
    func configuration(_ dir: TemporaryDirectory) -> DaemonConfiguration {
        var c = DaemonConfiguration()
        c.dataDirectory = dir.path
        c.tcpPort = 0
        c.httpPort = 0
        return c
    }

    func start(_ c: DaemonConfiguration) async throws -> (Daemon, Task<Void, any Error>) {
        let daemon = try await Daemon.start(c, logger: Logger(label: "test"), registry: PrometheusCollectorRegistry())
        let running = Task { try await daemon.run(signals: []) }
        try await until { daemon.httpPort != nil }
        return (daemon, running)
    }

    /// Waits (60 s times `testTimeScale` at most) for `condition`.
    func until(_ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60 * testTimeScale)
        while try !condition() {
            try #require(ContinuousClock.now < deadline, "timed out")
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// One HTTP/1.1 request on a fresh connection; the status code and body. The blocking socket
    /// calls run on a thread of their own: on the cooperative pool (two threads on two cores)
    /// they could hold the very threads the server's handlers need to answer.
    func http(_ port: Int, _ method: String, _ path: String, body: String = "") async throws -> (Int, String) {
        try await withCheckedThrowingContinuation { continuation in
            Thread { continuation.resume(with: Result { try blockingHTTP(port, method, path, body: body) }) }.start()
        }
    }

    func blockingHTTP(_ port: Int, _ method: String, _ path: String, body: String) throws -> (Int, String) {
        let fd = try connectTCP(port: port)
        defer { close(fd) }
        let request = "\(method) \(path) HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        _ = Array(request.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var response: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while case let n = recv(fd, &chunk, chunk.count, 0), n > 0 { response += chunk[..<n] }
        let text = String(decoding: response, as: UTF8.self)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        return (status, text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n"))
    }

    @Test func startsServesBothDoorsAndStopsInOrder() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let (daemon, running) = try await start(configuration(dir))
        try sendTCP(port: daemon.tcpPort, lines(100, sensor: "tcp", of: 5))
        let posted = try await http(daemon.httpPort!, "POST", "/sensor/data",
                              body: #"{"sensor_id":"http-1","type":"temperature","value":21.5,"location":"lab","timestamp":"2026-12-02T10:00:00Z"}"#)
        #expect(posted.0 == 201, "\(posted)")
        try await until { daemon.log.partitions.reduce(0) { $0 + $1.endOffset } == 101 }
        let health = try await http(daemon.httpPort!, "GET", "/health")
        #expect(health.0 == 200 && health.1.contains("\"ok\""))

        await daemon.stop()
        try await running.value
        #expect(daemon.stoppedServices == ["http", "mqtt", "line protocol", "admin", "cluster", "maintenance", "aggregator", "log"])
        #expect(daemon.stoppedServices == Daemon.serviceOrder.reversed())
        // Closed cleanly: everything is there, and the aggregator committed all of it.
        let log = try Log.open(dataDirectory: dir.path)
        #expect(log.partitions.reduce(0) { $0 + $1.endOffset } == 101)
        try log.close()
    }

    @Test func aPortInUseAndAHeldDirectoryHaveTheirExitStatus() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let (daemon, running) = try await start(configuration(dir))
        // Another daemon on the same data directory: locked (75).
        await #expect {
            _ = try await Daemon.start(configuration(dir), logger: Logger(label: "test"), registry: PrometheusCollectorRegistry())
        } throws: { ($0 as? DaemonError)?.status == .locked }
        // Another data directory, the same line-protocol port: unavailable (69).
        let other = TemporaryDirectory()
        defer { other.cleanup() }
        var c = configuration(other)
        c.tcpPort = daemon.tcpPort
        await #expect {
            _ = try await Daemon.start(c, logger: Logger(label: "test"), registry: PrometheusCollectorRegistry())
        } throws: { ($0 as? DaemonError)?.status == .unavailable }
        await daemon.stop()
        try await running.value
    }

    /// The retention policy inside the server: a pass deletes what the aggregator folded, a resend
    /// of a deleted reading is refused `too_old` (never stored again), the aggregates keep their
    /// rows, and newer readings are taken. The pass is run by the test on a moved clock.
    @Test func retentionRunsInsideTheServerAndADeletedReadingCannotComeBack() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let time = ManualTime()
        var c = configuration(dir)
        c.partitions = 1
        c.limits.partitions = 1
        c.limits.segmentBytes = 64 << 10
        c.retention = RetentionPolicy(maxAge: .seconds(86_400))
        c.time = time
        let (daemon, running) = try await start(c)
        let hour: Int64 = 3_600_000_000_000
        let start = time.wallNanoseconds - 60 * 24 * hour
        let old = (0..<20_000).map {
            Reading(sensorID: "r\($0 % 50)", type: "temperature", value: Double($0 % 13), location: "lab", timestamp: start + Int64($0) * hour / 20)
        }
        for chunk in stride(from: 0, to: old.count, by: 500) { _ = try await daemon.pipeline.submit(Array(old[chunk..<(chunk + 500)]), via: .http) }
        // The aggregator spaces its commits on the injected clock: move it while waiting.
        try await until { time.advance(by: .milliseconds(100)); return daemon.aggregator.committedOffsets == [20_000] }
        let rows = try AggregateStore(path: DataLayout(dir.path).aggregates, readOnly: true).allAggregates().count

        // The newest reading is 18 days old: everything is older than a day.
        let result = try #require(await daemon.maintenance.retentionPass())
        #expect(result.segments > 0 && result.blocked.isEmpty, "\(result)")
        #expect(daemon.log.partitions[0].startOffset == 20_000)
        #expect(try await daemon.pipeline.submit([old[0], old[19_999]], via: .tcp) == [.tooOld, .tooOld])
        let fresh = Reading(sensorID: "r1", type: "temperature", value: 1, location: "lab", timestamp: time.wallNanoseconds)
        #expect(try await daemon.pipeline.submit([fresh], via: .tcp) == [.appended(partition: 0, offset: 20_000)])
        try await until { time.advance(by: .milliseconds(100)); return daemon.aggregator.committedOffsets == [20_001] }
        #expect(try AggregateStore(path: DataLayout(dir.path).aggregates, readOnly: true).allAggregates().count == rows + 1)

        await daemon.stop()
        try await running.value
    }

    /// The admin jobs over HTTP: a job of an operation while another runs is 409 naming it (the
    /// first is held waiting for the segments, deterministically), it runs once they are free,
    /// and a shutdown while a job waits ends it before the log closes.
    @Test func adminJobsOneOfAKindAtATimeAndShutdownWaitsForThem() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let (daemon, running) = try await start(configuration(dir))
        let port = daemon.httpPort!
        _ = try await daemon.pipeline.submit((0..<500).map { r("a-\($0 % 5)", Int64($0)) }, via: .tcp)
        await daemon.maintenance.segmentWork.lock()
        let first = try await http(port, "POST", "/admin/compact", body: "{}")
        #expect(first.0 == 202 && first.1.contains("\"state\":\"running\""), "\(first)")
        let second = try await http(port, "POST", "/admin/compact", body: "{\"target_segment_bytes\":\"1M\"}")
        #expect(second.0 == 409 && second.1.contains("job_running") && second.1.contains("job 1"), "\(second)")
        // Another operation is not held back by it.
        let reset = try await http(port, "POST", "/admin/reset-offsets", body: "{\"group\":\"exporter\",\"to\":\"latest\",\"create\":true,\"execute\":true}")
        #expect(reset.0 == 202)
        try await until { daemon.admin.jobs.job(2)?.isRunning == false }
        #expect(try ConsumerGroups(dataDirectory: dir.path, partitions: daemon.log.partitions.count).committed("exporter")
            == daemon.log.partitions.map(\.endOffset))
        #expect(daemon.admin.jobs.job(1)?.json.contains("waiting for the server's own maintenance") == true)
        await daemon.maintenance.segmentWork.unlock()
        try await until { daemon.admin.jobs.job(1)?.isRunning == false }
        let done = try await http(port, "GET", "/admin/jobs/1")
        #expect(done.0 == 200 && done.1.contains("\"state\":\"succeeded\"") && done.1.contains("\"exit_code\":0"), "\(done)")
        #expect(try await http(port, "GET", "/admin/jobs/99").0 == 404)

        // A job waiting at shutdown: the admin service ends it before the log closes.
        await daemon.maintenance.segmentWork.lock()
        #expect(try await http(port, "POST", "/admin/compact", body: "{}").0 == 202)
        let unlock = Task {
            try await until { daemon.stoppedServices.contains("admin") || daemon.admin.stopping.load(ordering: .relaxed) }
            await daemon.maintenance.segmentWork.unlock()
        }
        await daemon.stop()
        try await running.value
        try await unlock.value
        #expect(daemon.admin.jobs.all().allSatisfy { !$0.isRunning })
        #expect(daemon.stoppedServices == Daemon.serviceOrder.reversed())
    }

    @Test func adminRequestsAreCheckedBeforeAnythingRuns() async throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        let (daemon, running) = try await start(configuration(dir))
        let port = daemon.httpPort!
        for (path, body, status, field) in [
            ("/admin/retention", "{\"older_than\":12}", 400, "older_than"),
            ("/admin/retention", "{\"max_bytes\":-1}", 400, "max_bytes"),
            ("/admin/compact", "{\"target_segment_bytes\":100}", 400, "target_segment_bytes"),
            ("/admin/compact", "[1]", 400, "invalid_json"),
            ("/admin/verify", "{\"repair\":\"yes\"}", 400, "repair"),
            ("/admin/reset-offsets", "{\"group\":\"g\",\"to\":\"earliest\",\"to_offset\":3}", 400, "to"),
            ("/admin/reset-offsets", "{\"group\":\"g\",\"to\":\"earliest\",\"partition\":99}", 400, "partition"),
            ("/admin/delete-sensor", "{\"sensors\":[]}", 400, "sensors"),
            ("/admin/delete-sensor", "{\"sensors\":[\"nobody\"]}", 404, "sensors"),
            ("/admin/rebuild-aggregates", "{\"until\":\"yesterday\"}", 400, "until"),
        ] {
            let (got, reply) = try await http(port, "POST", path, body: body)
            #expect(got == status && reply.contains(field), "\(path) \(body): \(got) \(reply)")
        }
        #expect(daemon.admin.jobs.all().isEmpty, "nothing started")
        await daemon.stop()
        try await running.value
    }
}
