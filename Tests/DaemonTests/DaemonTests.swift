import Daemon
import Foundation
import LogStore
import Logging
import Prometheus
import SensorLogCore
import TestSupport
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

    /// Waits (60 s at most) for `condition`.
    func until(_ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60)
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
        #expect(daemon.stoppedServices == ["http", "line protocol", "aggregator", "log"])
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
}
