public import Aggregator
import Foundation
import Hummingbird
public import LogStore
import Logging
import SensorLogCore
import Synchronization

/// Committed offsets and lag of every consumer group, as `/groups` and the lag gauges report them.
public struct GroupLag: Encodable, Sendable {
    public struct Partition: Encodable, Sendable {
        public var partition: Int
        public var committed: Int64
        public var end: Int64
        public var lag: Int64
    }

    public var group: String
    public var partitions: [Partition]

    /// Every group: `aggregator` (offsets from the aggregates store) and those in `groups/`.
    public static func all(log: Log, aggregator: AggregatorService?) -> [GroupLag] {
        let ends = log.partitions.map(\.endOffset)
        func lag(_ name: String, _ committed: [Int64]) -> GroupLag {
            GroupLag(group: name, partitions: committed.enumerated().map { p, c in
                Partition(partition: p, committed: c, end: ends[p], lag: max(0, ends[p] - c))
            })
        }
        var groups: [GroupLag] = []
        if let aggregator { groups.append(lag(AggregateStore.group, aggregator.committedOffsets)) }
        let files = ConsumerGroups(dataDirectory: log.dataDirectory, partitions: log.partitions.count)
        for name in files.list() {
            if let committed = try? files.committed(name) { groups.append(lag(name, committed)) }
        }
        return groups
    }
}

/// One read-only connection to `aggregates.sqlite` for the query routes (WAL: it reads while the
/// aggregator writes), used by one request at a time.
final class AggregateReader: @unchecked Sendable {
    let path: String
    private let lock = NSLock()
    private var store: AggregateStore?
    /// The file the connection has open: an in-place rebuild renames a new store over the path,
    /// and the next request opens that one (a request under way reads on from the old).
    private var inode: UInt64 = 0

    init(path: String) { self.path = path }

    func read<T>(_ body: (AggregateStore) throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        let current = FileOperations.inode(path) ?? 0
        if store == nil || current != inode {
            store = nil
            store = try AggregateStore(path: path, readOnly: true)
            inode = current
        }
        return try body(store!)
    }
}

/// `GET /groups`, `/sensors` (the catalogue), `/sensors/{id}`, `/sensors/{id}/aggregates`,
/// `/aggregates`, `/sensors/{id}/readings`.
struct QueryRoutes: Sendable {
    let log: Log
    let aggregator: AggregatorService?
    let reader: AggregateReader

    struct Groups: Encodable { var groups: [GroupLag] }
    struct ReadingJSON: Encodable {
        var sensorID: String
        var type: String
        var value: Double
        var location: String
        var timestamp: String
        var partition: Int
        var offset: Int64
        enum CodingKeys: String, CodingKey {
            case sensorID = "sensor_id", type, value, location, timestamp, partition, offset
        }
    }
    /// A page of a list: `{"<name>":[…],"next_cursor":…}`, `next_cursor` always present (null on
    /// the last page).
    struct Page<Item: Encodable>: Encodable {
        let name: String
        var items: [Item]
        var nextCursor: String?

        struct Key: CodingKey {
            var stringValue: String
            init(stringValue: String) { self.stringValue = stringValue }
            var intValue: Int? { nil }
            init?(intValue: Int) { nil }
        }

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(items, forKey: Key(stringValue: name))
            try c.encode(nextCursor, forKey: Key(stringValue: "next_cursor"))
        }
    }

    func add(to router: Routes) {
        router.get("/groups") { _, _ -> Response in
            JSONBody.response(.ok, Groups(groups: GroupLag.all(log: log, aggregator: aggregator)))
        }
        router.get("/sensors") { request, _ -> Response in
            let q = request.uri.queryParameters
            let limit = try Self.limit(request, default: log.configuration.limits.defaultPageSize, max: log.configuration.limits.maxPageSize)
            let filter = SensorFilter(type: q["type"].map(String.init), location: q["location"].map(String.init), prefix: q["prefix"].map(String.init))
            let rows = try storeRead { try $0.sensors(filter, after: q["cursor"].map(String.init), limit: limit) }
            return JSONBody.response(.ok, Page(name: "sensors", items: rows, nextCursor: rows.count == limit ? rows.last?.sensorID : nil))
        }
        router.get("/sensors/:id") { _, context -> Response in
            let id = try Self.sensorID(context)
            guard let sensor = try storeRead({ try $0.sensor(id) }) else {
                throw APIError(.notFound, code: "unknown_sensor", "no readings of sensor \(id) are aggregated")
            }
            return JSONBody.response(.ok, sensor)
        }
        router.get("/sensors/:id/aggregates") { request, context -> Response in
            let id = try Self.sensorID(context)
            let (from, to) = try Self.range(request)
            let rows = try storeRead { try $0.aggregates(sensorID: id, from: from, to: to) }
            return JSONBody.response(.ok, Page(name: "aggregates", items: rows, nextCursor: nil))
        }
        router.get("/aggregates") { request, _ -> Response in
            let (from, to) = try Self.range(request)
            let q = request.uri.queryParameters
            let limit = try Self.limit(request, default: log.configuration.limits.defaultPageSize, max: log.configuration.limits.maxPageSize)
            var cursor: (String, String)?
            if let text = q["cursor"].map(String.init) {
                let parts = text.split(separator: "|", maxSplits: 1).map(String.init)
                guard parts.count == 2, Timestamp.parseISO8601(parts[0]) != nil else {
                    throw APIError(.badRequest, code: "invalid_parameter", "cursor is not one this API gave", field: "cursor")
                }
                cursor = (parts[0], parts[1])
            }
            let type = q["type"].map(String.init)
            let location = q["location"].map(String.init)
            let rows = try storeRead { try $0.aggregates(from: from, to: to, type: type, location: location, after: cursor, limit: limit) }
            let next = rows.count == limit ? rows.last.map { $0.hourBucket + "|" + $0.sensorID } : nil
            return JSONBody.response(.ok, Page(name: "aggregates", items: rows, nextCursor: next))
        }
        router.get("/sensors/:id/readings") { request, context -> Response in
            let id = try Self.sensorID(context)
            let (from, to) = try Self.range(request)
            let limit = try Self.limit(request, default: log.configuration.limits.defaultPageSize, max: log.configuration.limits.maxPageSize)
            let p = log.partition(for: id)
            let start: Int64
            if let text = request.uri.queryParameters["cursor"] {
                guard let offset = Int64(String(text)), offset >= 0 else {
                    throw APIError(.badRequest, code: "invalid_parameter", "cursor is not one this API gave", field: "cursor")
                }
                start = offset
            } else if let from {
                start = try log.offset(partition: p, atOrAfter: from)
            } else {
                start = log.partitions[p].startOffset
            }
            let low: Int64 = from ?? .min
            let high: Int64 = to.map { (t: Int64) -> Int64 in t == Int64.min ? Int64.min : t - 1 } ?? Int64.max
            let scan = try page(partition: p, sensorID: id, start: start, from: low, to: high, limit: limit, logger: context.logger)
            let readings = scan.readings.sorted { ($0.reading.timestamp, $0.offset) < ($1.reading.timestamp, $1.offset) }.map {
                ReadingJSON(sensorID: $0.reading.sensorID, type: $0.reading.type, value: $0.reading.value, location: $0.reading.location,
                            timestamp: Timestamp.formatISO8601($0.reading.timestamp), partition: $0.partition, offset: $0.offset)
            }
            return JSONBody.response(.ok, Page(name: "readings", items: readings, nextCursor: scan.next.map(String.init)))
        }
    }


    /// One page of a sensor's readings in [from, to] from `start`; see `readableBeforeDamage` for a
    /// page that meets a corrupt batch.
    private func page(partition p: Int, sensorID id: String, start: Int64, from: Int64, to: Int64, limit: Int,
                      logger: Logger) throws -> (readings: [LocatedReading], next: Int64?) {
        let reader = log.reader(partition: p, from: start)
        switch Result(catching: { () throws(LogError) in
            try reader.scan(sensorID: id, from: from, to: to, limit: limit, maxBatches: log.configuration.limits.maxBatchesPerPage)
        }) {
        case .success(let page):
            return page
        case .failure(let error) where error.code == .corruptBatch:
            return try readableBeforeDamage(partition: p, sensorID: id, start: start, from: from, to: to, limit: limit, logger: logger)
        case .failure(let error):
            throw error
        }
    }

    /// The page of readings before a damaged batch, read again batch by batch once a scan has met
    /// the damage. The page ends at the damaged batch: its `next_cursor` points there, and the page
    /// asked from there answers `corrupt_segment`, so a client paging through a range is never
    /// handed a silent gap. When nothing readable comes before the damage, throws that error now.
    private func readableBeforeDamage(partition p: Int, sensorID id: String, start: Int64, from: Int64, to: Int64, limit: Int,
                                      logger: Logger) throws -> (readings: [LocatedReading], next: Int64?) {
        let reader = log.reader(partition: p, from: start)
        var out: [LocatedReading] = []
        for _ in 0..<log.configuration.limits.maxBatchesPerPage {
            let before = reader.nextOffset
            let remaining = limit - out.count
            switch Result(catching: { () throws(LogError) in
                try reader.scan(sensorID: id, from: from, to: to, limit: remaining, maxBatches: 1)
            }) {
            case .success(let page):
                out += page.readings
                if page.next == nil || out.count >= limit { return (out, page.next) }
            case .failure(let error) where error.code == .corruptBatch:
                guard !out.isEmpty else { throw Self.corrupt(error, partition: p, offset: before, logger: logger) }
                logger.warning("readings page cut short by a corrupt batch; the next page answers corrupt_segment",
                               metadata: Self.metadata(error, partition: p, offset: before))
                return (out, before)
            case .failure(let error):
                throw error
            }
        }
        return (out, reader.nextOffset)
    }

    /// `500 corrupt_segment`: the log holds a damaged batch where the page must read. Not a
    /// retryable 503: only an operator's `sensorlog verify --repair` (server stopped) mends it.
    static func corrupt(_ error: LogError, partition: Int, offset: Int64, logger: Logger) -> APIError {
        logger.error("readings unreadable: corrupt batch in a segment; run sensorlog verify --repair with the server stopped",
                     metadata: metadata(error, partition: partition, offset: offset))
        var api = APIError(
            .internalServerError, code: "corrupt_segment",
            "partition \(partition) holds a corrupt batch at offset \(offset): its readings from there on cannot be served until an operator runs `sensorlog verify --repair` (server stopped); the readings before it are served")
        api.partition = partition
        api.offset = offset
        return api
    }

    /// Where the damage is, for the operator: the segment file and byte, not only the offset.
    static func metadata(_ error: LogError, partition: Int, offset: Int64) -> Logger.Metadata {
        var metadata: Logger.Metadata = [:]
        metadata["partition"] = .string(String(partition))
        metadata["offset"] = .string(String(offset))
        metadata["segment"] = .string(error.path ?? "")
        metadata["position"] = .string(error.position.map { String($0) } ?? "")
        metadata["error"] = .string(error.message)
        return metadata
    }

    private func storeRead<T>(_ body: (AggregateStore) throws -> T) throws -> T {
        do {
            return try reader.read(body)
        } catch {
            throw APIError(.serviceUnavailable, code: "store_unavailable", "the aggregates store cannot be read right now")
        }
    }

    /// `from` and `to` (ISO-8601 or epoch nanoseconds); `to` is exclusive.
    static func range(_ request: Request) throws -> (Int64?, Int64?) {
        let q = request.uri.queryParameters
        func parse(_ name: String) throws -> Int64? {
            guard let text = q[Substring(name)].map(String.init) else { return nil }
            guard let t = Timestamp.parse(text) else {
                throw APIError(.badRequest, code: "invalid_parameter", "\(name) must be ISO-8601 (2026-11-24T10:00:00Z) or epoch nanoseconds",
                               field: name)
            }
            return t
        }
        let from = try parse("from")
        let to = try parse("to")
        if let from, let to, to < from { throw APIError(.badRequest, code: "invalid_parameter", "to is before from", field: "to") }
        return (from, to)
    }

    /// The `{id}` of the path, percent-decoded: the router matches the raw path, so without this
    /// `/sensors/dock%204` looked up a sensor named `dock%204`, and a sensor whose id holds a
    /// space, a `/` or any non-ASCII character could not be named at all.
    static func sensorID(_ context: SensorRequestContext) throws -> String {
        guard let id = try context.parameters.require("id").removingPercentEncoding else {
            throw APIError(.badRequest, code: "invalid_parameter", "the sensor id in the path is not valid percent-encoded UTF-8", field: "id")
        }
        return id
    }

    static func limit(_ request: Request, default value: Int, max: Int) throws -> Int {
        guard let text = request.uri.queryParameters["limit"] else { return value }
        guard let n = Int(String(text)), n >= 1, n <= max else {
            throw APIError(.badRequest, code: "invalid_parameter", "limit must be 1 to \(max)", field: "limit")
        }
        return n
    }
}
