import Metrics
import Synchronization

/// Where a reading came in.
public enum Transport: String, Sendable, CaseIterable {
    case tcp
    case http
}

/// The ingest counters, created once; labels are bounded (transport, reason), never sensor ids.
public final class IngestMetrics: Sendable {
    private let ingested: [Transport: Counter]
    private let rejected = Mutex<[String: Counter]>([:])
    private let tcpConnections = Gauge(label: "sensorlog_tcp_connections")

    public init() {
        var ingested: [Transport: Counter] = [:]
        for t in Transport.allCases {
            ingested[t] = Counter(label: "sensorlog_readings_ingested_total", dimensions: [("transport", t.rawValue)])
        }
        self.ingested = ingested
    }

    /// Open line-protocol connections.
    public func connections(_ count: Int) {
        tcpConnections.record(Double(count))
    }

    /// Readings appended to the log and durable under the fsync policy.
    public func ingested(_ count: Int, via transport: Transport) {
        if count > 0 { ingested[transport]!.increment(by: Int64(count)) }
    }

    /// Readings refused, by reason (`duplicate`, `syntax`, `out_of_range`, ...).
    public func rejected(_ count: Int, via transport: Transport, reason: String) {
        guard count > 0 else { return }
        let key = transport.rawValue + "/" + reason
        let counter = rejected.withLock { counters in
            if let c = counters[key] { return c }
            let c = Counter(label: "sensorlog_readings_rejected_total", dimensions: [("transport", transport.rawValue), ("reason", reason)])
            counters[key] = c
            return c
        }
        counter.increment(by: Int64(count))
    }
}
