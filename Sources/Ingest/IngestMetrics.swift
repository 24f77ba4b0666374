import LineProtocol
import Metrics
import Synchronization

/// Where a reading came in.
public enum Transport: String, Sendable, CaseIterable {
    /// The line protocol over TCP.
    case tcp
    /// `POST /sensor/data` (JSON).
    case http
    /// The line protocol over HTTP: InfluxDB's `/write` and `/api/v2/write`, QuestDB's `http::`.
    case httpLineProtocol = "http_lp"
    /// Messages from an MQTT broker.
    case mqtt
}

/// A metric's name and the `# HELP` text `/metrics` gives it. The code that creates a metric
/// describes it next to where it does so; the executable's metrics factory looks the text up by
/// name (swift-metrics' `Counter(label:)` has no place for it).
public struct MetricDescription: Sendable, Hashable {
    public let name: String
    public let help: String

    public init(_ name: String, help: String) {
        self.name = name
        self.help = help
    }
}

/// The ingest counters, created once; labels are bounded (transport, reason), never sensor ids.
public final class IngestMetrics: Sendable {
    /// The metrics of this type, with their help text.
    public static let descriptions: [MetricDescription] = [
        MetricDescription("sensorlog_readings_ingested_total",
                          help: "Readings appended to the log, counted once durable under the fsync policy, by transport."),
        MetricDescription("sensorlog_readings_rejected_total",
                          help: "Readings refused, by transport and reason (docs/protocol.md), duplicates included."),
        MetricDescription("sensorlog_tcp_connections", help: "Open line-protocol connections."),
    ]

    /// Every reason a line-protocol reading is refused for: these series exist at 0 from start-up,
    /// so that an alert on their rate sees the first refusal.
    public static let tcpReasons: [String] = {
        let reasons: [LineProtocolError.Reason] = [
            .syntax, .invalidUTF8, .duplicateTag, .unknownType, .multipleTypes, .missingSensorID, .missingLocation, .missingValue, .invalidValue,
            .nonFiniteValue, .outOfRange, .invalidSensorID, .invalidLocation, .invalidTimestamp, .binaryProtocol, .lineTooLong,
            .partialLine, .duplicate, .typeMismatch, .tooOld, .deleted, .tooManySensors,
        ]
        return reasons.map(\.rawValue) + ["lost_at_shutdown"]
    }()

    /// The reasons the ingest path itself refuses for on every transport (the HTTP API adds its own).
    public static let commonReasons = ["duplicate", "type_mismatch", "too_old", "deleted", "too_many_sensors"]

    private let ingested: [Transport: Counter]
    private let rejected = Mutex<[String: Counter]>([:])
    private let tcpConnections = Gauge(label: "sensorlog_tcp_connections")

    public init() {
        var ingested: [Transport: Counter] = [:]
        for t in Transport.allCases {
            ingested[t] = Counter(label: "sensorlog_readings_ingested_total", dimensions: [("transport", t.rawValue)])
        }
        self.ingested = ingested
        tcpConnections.record(0)
        preregister(reasons: Self.tcpReasons, via: .tcp)
        preregister(reasons: Self.commonReasons, via: .http)
    }

    /// Creates `sensorlog_readings_rejected_total{transport,reason}` at 0 for each reason, so the
    /// series alerts use exist before the first refusal.
    public func preregister(reasons: [String], via transport: Transport) {
        for reason in reasons { _ = rejectedCounter(transport, reason) }
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
        rejectedCounter(transport, reason).increment(by: Int64(count))
    }

    private func rejectedCounter(_ transport: Transport, _ reason: String) -> Counter {
        let key = transport.rawValue + "/" + reason
        return rejected.withLock { counters in
            if let c = counters[key] { return c }
            let c = Counter(label: "sensorlog_readings_rejected_total", dimensions: [("transport", transport.rawValue), ("reason", reason)])
            counters[key] = c
            return c
        }
    }
}
