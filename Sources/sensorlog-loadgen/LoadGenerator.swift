import ArgumentParser
import Foundation

/// `tools/loadgen`: sends the standard workload over line protocol and reports readings/s until
/// the server's ingested counter shows every reading durable.
@main
struct LoadGenerator: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sensorlog-loadgen",
        abstract: "Send the standard workload (line protocol over TCP) to sensorlogd and measure it.",
        discussion: """
            The standard workload: N sensors (default 10 000), 3 types, 50 locations, one reading per \
            sensor per second of simulated time, values with 3 decimals, about 81 bytes a line. Lines \
            are generated before sending starts; each connection carries its own sensors, so each \
            sensor's readings stay in order. Timestamps start at --base-seconds, or by default at \
            now to the nanosecond: a sensor's readings are whole seconds apart, so two runs collide \
            only if their starts differ by a whole number of seconds to the nanosecond, which is \
            as good as never, however long the first run's simulated time.

            Examples:
              tools/loadgen --readings 1000000 --connections 4
              tools/loadgen --readings 600000 --rate 10000          # the real-time rate
              tools/loadgen --readings 10000000 --sensors 100000 --json
            """)

    @Option(help: "Server host.") var host = "127.0.0.1"
    @Option(help: "Line-protocol port.") var tcpPort = 9009
    @Option(help: "HTTP port, to read sensorlog_readings_ingested_total from /metrics (0: do not wait).") var httpPort = 8080
    @Option(help: "Readings to send.") var readings = 1_000_000
    @Option(help: "Distinct sensors.") var sensors = 10_000
    @Option(help: "Sensor ids start with this (several loadgens at once, each its own sensors: in order per sensor).") var sensorPrefix = "sensor-"
    @Option(help: "TCP connections.") var connections = 4
    @Option(help: "Target readings a second over all connections (0: flat out).") var rate = 0.0
    @Option(help: "Epoch seconds of the first simulated second (default: now).") var baseSeconds: Int64?
    @Option(help: "Give up after this many seconds, sending (a server that stopped reading) or waiting for the server to ingest.") var timeout = 600.0
    @Option(help: "Start sending at this wall-clock time (Unix seconds), after generating the lines: several loadgens at once then send together, and none generates while another is timed.") var startAt: Double?
    @Flag(help: "Print one JSON document instead of text.") var json = false

    func validate() throws {
        guard readings > 0, sensors > 0, connections > 0, connections <= 1024 else { throw ValidationError("counts must be positive") }
        guard rate >= 0 else { throw ValidationError("--rate must be >= 0") }
    }

    func run() throws {
        let base = baseSeconds.map { $0 * 1_000_000_000 } ?? Self.nowNanoseconds()
        var payloads = [[UInt8]](repeating: [], count: connections)
        for c in 0..<connections { payloads[c].reserveCapacity(readings / connections * 84) }
        var seed: UInt64 = 7
        let types = ["temperature", "humidity", "pressure"]
        let bases = [20_000, 50_000, 1_013_000]
        for i in 0..<readings {
            let s = i % sensors
            let k = i / sensors
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let milli = bases[s % 3] + Int((seed >> 33) % 10_001) - 5000
            let value = "\(milli / 1000).\(String(format: "%03d", milli % 1000))"
            let line = "\(types[s % 3]),sensor_id=\(sensorPrefix)\(String(format: sensors <= 100_000 ? "%05d" : "%07d", s)),location=site-\(String(format: "%02d", s % 50)) value=\(value) \(base + Int64(k) * 1_000_000_000 + Int64(s) * 1000)\n"
            payloads[s % connections].append(contentsOf: line.utf8)
        }
        let bytes = payloads.reduce(0) { $0 + $1.count }

        let before = httpPort > 0 ? try ingestedCount() : 0
        if let startAt {
            let wait = startAt - Date().timeIntervalSince1970
            if wait > 0 { usleep(UInt32(wait * 1e6)) }
        }
        let started = Date()
        let deadline = started.addingTimeInterval(timeout)
        let perConnectionRate = rate / Double(connections)
        let group = DispatchGroup()
        let failures = NSLock()
        nonisolated(unsafe) var failure: String?
        for c in 0..<connections {
            group.enter()
            let payload = payloads[c]
            Thread {
                defer { group.leave() }
                do {
                    try Self.send(payload, host: host, port: tcpPort, linesPerSecond: perConnectionRate,
                                  bytesPerLine: Double(payload.count) / Double(max(1, readings / connections)), deadline: deadline)
                } catch {
                    failures.lock()
                    failure = "\(error)"
                    failures.unlock()
                }
            }.start()
        }
        group.wait()
        if let failure { throw ValidationError("sending failed: \(failure)") }
        let sent = Date().timeIntervalSince(started)

        var durable = sent
        var ingested = 0.0
        if httpPort > 0 {
            while true {
                ingested = try ingestedCount() - before
                if ingested >= Double(readings) { break }
                if Date().timeIntervalSince(started) > timeout {
                    throw ValidationError("only \(Int(ingested)) of \(readings) readings ingested after \(timeout) s")
                }
                // Each look renders the server's whole /metrics: every 2 ms for seconds would take
                // CPU from the server measured. 2 % of the time so far bounds the error at 2 %.
                usleep(UInt32(min(100_000, max(2_000, Date().timeIntervalSince(started) * 20_000))))
            }
            durable = Date().timeIntervalSince(started)
        }
        if json {
            print("""
                {"readings":\(readings),"sensors":\(sensors),"connections":\(connections),"bytes":\(bytes),\
                "send_seconds":\(sent),"durable_seconds":\(durable),"readings_per_second":\(Double(readings) / durable),\
                "ingested":\(Int(ingested))}
                """)
        } else {
            print(String(format: "sent %d readings (%.1f MB, %.1f B/line) over %d connections in %.3f s", readings, Double(bytes) / 1e6,
                         Double(bytes) / Double(readings), connections, sent))
            if httpPort > 0 {
                print(String(format: "all durable after %.3f s: %.0f readings/s", durable, Double(readings) / durable))
            }
        }
    }

    static func nowNanoseconds() -> Int64 {
        var t = timespec()
        clock_gettime(CLOCK_REALTIME, &t)
        return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
    }

    /// Sends `payload` on one connection, in 256 KiB writes, paced when a rate is set. A send
    /// blocked past `deadline` (the server paused the connection and never resumed) fails.
    static func send(_ payload: [UInt8], host: String, port: Int, linesPerSecond: Double, bytesPerLine: Double, deadline: Date) throws {
        let fd = try connectTCP(host: host, port: port)
        defer { close(fd) }
        // A blocked send wakes at least every 100 ms to look at the deadline.
        var wake = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &wake, socklen_t(MemoryLayout<timeval>.size))
        let chunk = linesPerSecond > 0 ? max(4096, Int(linesPerSecond * bytesPerLine / 100)) : 256 << 10
        let started = Date()
        var sent = 0
        while sent < payload.count {
            let n = min(chunk, payload.count - sent)
            try payload[sent..<(sent + n)].withUnsafeBytes { raw in
                var done = 0
                while done < raw.count {
                    let w = Glibc.send(fd, raw.baseAddress! + done, raw.count - done, Int32(MSG_NOSIGNAL))
                    if w < 0 {
                        if errno == EINTR { continue }
                        if errno == EAGAIN || errno == EWOULDBLOCK {
                            guard Date() < deadline else {
                                throw ValidationError("timed out sending after \(sent + done) of \(payload.count) bytes: the server stopped reading (--timeout)")
                            }
                            continue
                        }
                        throw ValidationError("send: \(String(cString: strerror(errno)))")
                    }
                    done += w
                }
            }
            sent += n
            if linesPerSecond > 0 {
                let due = Double(sent) / bytesPerLine / linesPerSecond
                let ahead = due - Date().timeIntervalSince(started)
                if ahead > 0 { usleep(UInt32(ahead * 1e6)) }
            }
        }
    }

    static func connectTCP(host: String, port: Int) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket failed") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr(host == "localhost" ? "127.0.0.1" : host)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            throw ValidationError("cannot connect to \(host):\(port): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// Sum of `sensorlog_readings_ingested_total` over its series, from /metrics.
    func ingestedCount() throws -> Double {
        let fd = try Self.connectTCP(host: host, port: httpPort)
        defer { close(fd) }
        let request = Array("GET /metrics HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var response: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        var total = 0.0
        for line in String(decoding: response, as: UTF8.self).split(separator: "\n") where line.hasPrefix("sensorlog_readings_ingested_total") {
            if let v = line.split(separator: " ").last.flatMap({ Double($0) }) { total += v }
        }
        return total
    }
}
