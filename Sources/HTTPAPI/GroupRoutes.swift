import Foundation
import Hummingbird
import LogStore
import NIOCore
import SensorLogCore
import Synchronization

/// Consumer groups of one's own, as a Kafka or Redis Streams user expects: create a group, read
/// records from its committed offset (a long poll), commit, delete. Delivery is at least once,
/// by commit. The `aggregator` group is sensorlogd's own: listed by `GET /groups`, never moved
/// here.
final class GroupRoutes: Sendable {
    let log: Log
    let groups: ConsumerGroups
    /// Commits read, change and write a group's file: one at a time.
    private let commits = Mutex<Void>(())

    init(log: Log) {
        self.log = log
        self.groups = ConsumerGroups(dataDirectory: log.dataDirectory, partitions: log.partitions.count)
    }

    var limits: Limits { log.configuration.limits }

    func add(to routes: Routes, maxBodyBytes: Int) {
        routes.post("/groups") { [self] request, _ in try await create(request, maxBodyBytes: maxBodyBytes) }
        routes.delete("/groups/:group") { [self] _, context in try delete(context.parameters.require("group")) }
        routes.get("/groups/:group/records") { [self] request, context in try await records(request, group: context.parameters.require("group")) }
        routes.post("/groups/:group/offsets") { [self] request, context in
            try await commit(request, group: context.parameters.require("group"), maxBodyBytes: maxBodyBytes)
        }
    }

    struct Created: Encodable { var group: String; var offsets: [Int64] }
    /// A record is a reading as `/sensors/{id}/readings` gives it, with its partition and offset.
    typealias Record = QueryRoutes.ReadingJSON
    struct Records: Encodable {
        var records: [Record]
        var nextOffset: Int64
        enum CodingKeys: String, CodingKey { case records, nextOffset = "next_offset" }
    }

    // MARK: Create and delete

    private func create(_ request: Request, maxBodyBytes: Int) async throws -> Response {
        struct Body: Decodable { var group: String; var start: String? }
        let body: Body = try await Self.decode(request, maxBodyBytes: maxBodyBytes, known: ["group", "start"])
        try checkName(body.group)
        let start: ConsumerGroups.Start
        switch body.start ?? "latest" {
        case "earliest": start = .earliest
        case "latest": start = .latest
        default: throw APIError(.badRequest, code: "invalid_parameter", "start is earliest or latest", field: "start")
        }
        let offsets = log.partitions.map { start == .earliest ? $0.startOffset : $0.endOffset }
        try commits.withLock { _ in
            guard try logged({ try groups.committed(body.group) }) == nil else {
                throw APIError(.conflict, code: "group_exists", "group \(body.group) exists; delete it first or read from its offsets")
            }
            try logged { try groups.commit(body.group, offsets: offsets) }
        }
        return JSONBody.response(.created, Created(group: body.group, offsets: offsets))
    }

    private func delete(_ group: String) throws -> Response {
        try checkName(group)
        let existed = try commits.withLock { _ in try logged { try groups.delete(group) } }
        guard existed else { throw unknown(group) }
        return Response(status: .noContent)
    }

    // MARK: Read

    private func records(_ request: Request, group: String) async throws -> Response {
        try checkName(group)
        let q = request.uri.queryParameters
        let p = try integer(q["partition"].map(String.init), "partition", 0...(log.partitions.count - 1), default: nil)
        let max = try integer(q["max"].map(String.init), "max", 1...limits.maxPageSize, default: limits.defaultPageSize)
        let waitMs = try integer(q["wait_ms"].map(String.init), "wait_ms", 0...Int(limits.maxRecordsWait / .milliseconds(1)), default: 0)
        guard let committed = try logged({ try groups.committed(group) }) else { throw unknown(group) }
        let partition = log.partitions[p]
        let asked = try q["from"].map { try Int64(integer(String($0), "from", 0...Int(Int64.max), default: nil)) } ?? committed[p]
        guard asked <= partition.endOffset else {
            throw APIError(.badRequest, code: "invalid_parameter", "from \(asked) is past the partition's end \(partition.endOffset)", field: "from")
        }
        // Below the retained log (retention moved on): resume at its start, as Kafka's `earliest`.
        let from = Swift.max(asked, partition.startOffset)
        let deadline = ContinuousClock.now + .milliseconds(waitMs)
        var page = try read(partition: p, from: from, max: max)
        while page.records.isEmpty && ContinuousClock.now < deadline {
            try await Task.sleep(for: limits.recordsPollInterval)
            if log.partitions[p].endOffset > page.nextOffset { page = try read(partition: p, from: page.nextOffset, max: max) }
        }
        return JSONBody.response(.ok, page)
    }

    /// Up to `max` readings from `from`. Removed records (deleted sensors, salvaged ranges) are
    /// skipped, their offsets never returned; `next_offset` passes them.
    private func read(partition p: Int, from: Int64, max: Int) throws -> Records {
        let reader = log.reader(partition: p, from: from)
        var out: [Record] = []
        var next = from
        while out.count < max, let (batch, first) = try logged({ try reader.next() }) {
            next = reader.nextOffset
            guard batch.kind == .readings else { continue }
            for i in first..<batch.count {
                let r = batch.reading(at: i)
                out.append(Record(sensorID: r.sensorID, type: r.type, value: r.value, location: r.location,
                                  timestamp: Timestamp.formatISO8601(r.timestamp), partition: p, offset: batch.offset(at: i)))
                if out.count == max {
                    next = batch.offset(at: i) + 1
                    break
                }
            }
        }
        return Records(records: out, nextOffset: next)
    }

    // MARK: Commit

    private func commit(_ request: Request, group: String, maxBodyBytes: Int) async throws -> Response {
        struct Offset: Decodable { var partition: Int; var committed: Int64 }
        struct Body: Decodable { var offsets: [Offset] }
        try checkName(group)
        let body: Body = try await Self.decode(request, maxBodyBytes: maxBodyBytes, known: ["offsets"])
        for o in body.offsets {
            guard (0..<log.partitions.count).contains(o.partition) else {
                throw APIError(.badRequest, code: "invalid_parameter", "no partition \(o.partition) (0-\(log.partitions.count - 1))", field: "partition")
            }
            guard (0...log.partitions[o.partition].endOffset).contains(o.committed) else {
                throw APIError(.badRequest, code: "invalid_parameter",
                               "committed \(o.committed) is outside partition \(o.partition)'s 0-\(log.partitions[o.partition].endOffset)", field: "committed")
            }
        }
        let offsets = try commits.withLock { _ -> [Int64] in
            guard var offsets = try logged({ try groups.committed(group) }) else { throw unknown(group) }
            for o in body.offsets { offsets[o.partition] = o.committed }
            try logged { try groups.commit(group, offsets: offsets) }
            return offsets
        }
        return JSONBody.response(.ok, Created(group: group, offsets: offsets))
    }

    // MARK: Checks

    /// A JSON object body with no member but `known` (a typo is a 400, never a default).
    private static func decode<T: Decodable>(_ request: Request, maxBodyBytes: Int, known: Set<String>) async throws -> T {
        var request = request
        let bytes: ByteBuffer
        do {
            bytes = try await request.collectBody(upTo: maxBodyBytes)
        } catch {
            throw APIError(.contentTooLarge, code: "body_too_large", "request body over \(maxBodyBytes) bytes")
        }
        let data = Data(bytes.readableBytesView)
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw APIError(.badRequest, code: "invalid_json", "the body must be a JSON object")
        }
        if let unknown = object.keys.sorted().first(where: { !known.contains($0) }) {
            throw APIError(.badRequest, code: "unknown_parameter", "no such field: \(unknown)", field: unknown)
        }
        do {
            return try JSONDecoder().decode(T.self, from: data)
        } catch DecodingError.keyNotFound(let key, _) {
            throw APIError(.badRequest, code: "invalid_parameter", "\(key.stringValue) is required", field: key.stringValue)
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            let field = context.codingPath.last?.stringValue ?? "body"
            throw APIError(.badRequest, code: "invalid_parameter", "\(field) has the wrong type", field: field)
        } catch {
            throw APIError(.badRequest, code: "invalid_json", "the body does not match: \(error)")
        }
    }

    private func checkName(_ group: String) throws {
        guard group != "aggregator" else {
            throw APIError(.badRequest, code: "reserved_group", "the aggregator group is sensorlogd's own: listed by GET /groups, not moved here")
        }
        guard ConsumerGroups.isValidName(group) else {
            throw APIError(.badRequest, code: "invalid_parameter", "a group name is 1-128 letters, digits, - _ .", field: "group")
        }
    }

    private func unknown(_ group: String) -> APIError {
        APIError(.notFound, code: "unknown_group", "no group \(group); create it with POST /groups")
    }

    private func integer(_ text: String?, _ field: String, _ range: ClosedRange<Int>, default value: Int?) throws -> Int {
        guard let text else {
            guard let value else { throw APIError(.badRequest, code: "invalid_parameter", "\(field) is required", field: field) }
            return value
        }
        guard let n = Int(text), range.contains(n) else {
            throw APIError(.badRequest, code: "invalid_parameter", "\(field) must be an integer in \(range.lowerBound)-\(range.upperBound)", field: field)
        }
        return n
    }

    /// A log error as the API answers it.
    private func logged<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as LogError {
            throw APIError(.serviceUnavailable, code: "log_unavailable", "\(error.message)")
        }
    }
}
