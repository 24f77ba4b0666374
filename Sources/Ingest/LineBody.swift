public import LineProtocol
public import LogStore
public import SensorLogCore
#if canImport(Glibc)
import Glibc
#endif

/// Line-protocol text that arrives whole (an HTTP write body, an MQTT payload), parsed by the
/// one `LineParser` the TCP door uses: every line's verdict, the readings kept grouped by
/// partition (as the TCP door groups them, so the append takes them as they are) with their line
/// numbers, and the first line refused.
public struct LineBody: Sendable {
    /// The unit of the timestamps in the text (InfluxDB's `precision`): readings are stored in ns.
    public enum Precision: Int64, Sendable {
        case nanoseconds = 1
        case microseconds = 1_000
        case milliseconds = 1_000_000
        case seconds = 1_000_000_000
        case minutes = 60_000_000_000
        case hours = 3_600_000_000_000

        /// InfluxDB 1.x's names: `n`, `ns`, `u`, `us`, `µ`, `ms`, `s`, `m`, `h`.
        public init?(v1 name: String) {
            switch name {
            case "n", "ns": self = .nanoseconds
            case "u", "us", "µ": self = .microseconds
            case "ms": self = .milliseconds
            case "s": self = .seconds
            case "m": self = .minutes
            case "h": self = .hours
            default: return nil
            }
        }

        /// InfluxDB 2.x's names: `ns`, `us`, `ms`, `s`.
        public init?(v2 name: String) {
            switch name {
            case "ns": self = .nanoseconds
            case "us": self = .microseconds
            case "ms": self = .milliseconds
            case "s": self = .seconds
            default: return nil
            }
        }
    }

    /// A line refused: its number (from 1), why, and its first bytes.
    public struct Refusal: Sendable, Equatable {
        public var line: Int
        public var reason: String
        public var message: String
        public var text: String
    }

    /// The readings kept, by partition, each partition's in body order.
    public var groups: [[Reading]]
    /// The line each reading came from, by partition as `groups`.
    public var lines: [[Int32]]
    public var readingCount = 0
    /// The first line refused by the parser.
    public var firstRefusal: Refusal?
    /// Lines refused by the parser, by reason.
    public var refused: [String: Int] = [:]
    public var refusedCount: Int { refused.values.reduce(0, +) }

    public init(partitions: Int) {
        groups = [[Reading]](repeating: [], count: partitions)
        lines = [[Int32]](repeating: [], count: partitions)
    }

    /// Keeps `reading`, from line `line`, in `partition`.
    public mutating func append(_ reading: Reading, line: Int, partition: Int) {
        groups[partition].append(reading)
        lines[partition].append(Int32(truncatingIfNeeded: line))
        readingCount += 1
    }

    /// How much of a refused line a report quotes.
    static let quotedBytes = 128

    /// Parses every line of `text`. A last line without its `\n` is a line; a line without a
    /// timestamp gets the receive time (in ns: the precision applies to written timestamps only).
    /// - Parameters:
    ///   - defaults: tags a line may leave out (an MQTT topic supplies them).
    ///   - pipeline: whose partitions the readings are grouped by, and whose clock stamps a line
    ///     without a timestamp.
    public static func parse(_ text: UnsafeRawBufferPointer, parser: LineParser, precision: Precision, maxLineBytes: Int,
                             defaults: LineParser.Defaults? = nil, pipeline: IngestPipeline) -> LineBody {
        var body = LineBody(partitions: pipeline.log.partitions.count)
        guard let base = text.baseAddress, !text.isEmpty else { return body }
        var start = 0
        var number = 0
        while start < text.count {
            let end = memchr(base + start, 0x0A, text.count - start).map { base.distance(to: $0) } ?? text.count
            number += 1
            let line = UnsafeRawBufferPointer(rebasing: text[start..<end])
            if line.count > maxLineBytes {
                body.refuse(number, LineProtocolError(.lineTooLong, "line longer than \(maxLineBytes) bytes"), line)
            } else {
                do throws(LineProtocolError) {
                    if var reading = try parser.parse(line, receiveTime: LineParser.noTimestamp, defaults: defaults) {
                        if reading.timestamp == LineParser.noTimestamp {
                            reading.timestamp = pipeline.serverTimestamp()
                        } else if precision != .nanoseconds {
                            let (scaled, overflow) = reading.timestamp.multipliedReportingOverflow(by: precision.rawValue)
                            if overflow { throw LineProtocolError(.invalidTimestamp, "timestamp \(reading.timestamp) overflows in \(precision) ") }
                            reading.timestamp = scaled
                        }
                        body.append(reading, line: number, partition: pipeline.partition(for: reading.sensorID))
                    }
                } catch {
                    body.refuse(number, error, line)
                }
            }
            start = end + 1
        }
        return body
    }

    /// Counts a refusal that is not a line's (an MQTT payload refused whole, a JSON item).
    public mutating func refuse(reason: String, message: String, line: Int = 1) {
        refused[reason, default: 0] += 1
        if firstRefusal == nil { firstRefusal = Refusal(line: line, reason: reason, message: message, text: "") }
    }

    private mutating func refuse(_ number: Int, _ error: LineProtocolError, _ line: UnsafeRawBufferPointer) {
        refused[error.reason.rawValue, default: 0] += 1
        if firstRefusal == nil {
            var quoted = String(decoding: UnsafeRawBufferPointer(rebasing: line.prefix(Self.quotedBytes)), as: UTF8.self)
            if quoted.hasSuffix("\r") { quoted.removeLast() }
            firstRefusal = Refusal(line: number, reason: error.reason.rawValue, message: error.message, text: quoted)
        }
    }
}

extension IngestPipeline {
    /// What became of a `LineBody`'s lines.
    public struct LinesSubmitted: Sendable {
        /// Readings appended (durable under the fsync policy).
        public var appended = 0
        /// Readings already stored: the same as stored, for the producer.
        public var duplicates = 0
        /// Lines refused, by the parser or the ingest (type mismatch, too old, deleted).
        public var refused = 0
        /// The first of those, by line number.
        public var firstRefusal: LineBody.Refusal?
    }

    /// Counts the parser's refusals, then submits the body's readings: the same checks, dedupe
    /// and append as every door. Returns once what was appended is durable.
    /// - Throws: as `submit`; the parser's refusals are counted either way.
    public func submit(_ body: LineBody, via transport: Transport) async throws(LogError) -> LinesSubmitted {
        for (reason, n) in body.refused { metrics.rejected(n, via: transport, reason: reason) }
        var result = LinesSubmitted(refused: body.refusedCount, firstRefusal: body.firstRefusal)
        guard body.readingCount > 0 else { return result }
        let counted = try await submitCounting(body.groups, via: transport)
        result.appended = counted.appended
        result.duplicates = counted.refused["duplicate"] ?? 0
        result.refused += counted.refused.filter { $0.key != "duplicate" }.values.reduce(0, +)
        for (p, i, outcome) in counted.problems {
            let line = Int(body.lines[p][i])
            if result.firstRefusal.map({ line < $0.line }) ?? true {
                result.firstRefusal = LineBody.Refusal(line: line, reason: outcome.reason ?? "", message: Self.explain(outcome, body.groups[p][i]),
                                                       text: String(LineFormatter.line(for: body.groups[p][i]).dropLast()))
            }
        }
        return result
    }

    /// The message of an ingest refusal, as the HTTP API words it.
    static func explain(_ outcome: IngestOutcome, _ reading: Reading) -> String {
        switch outcome {
        case .typeMismatch(let expected): "sensor \(reading.sensorID) is a \(expected) sensor"
        case .tooOld: "older than the retained log: retention removed readings up to this time"
        case .deleted: "sensor \(reading.sensorID) was deleted: its readings up to the newest one deleted are refused"
        case .tooManySensors: "sensor \(reading.sensorID) is new and the server already holds the most sensors it takes (--max-sensors)"
        case .appended, .duplicate: ""
        }
    }
}
