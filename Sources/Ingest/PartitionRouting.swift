public import LogStore
public import SensorLogCore

/// Where a partition's readings are written when the log is replicated (cluster mode): by this
/// node when it owns the partition (through the replicated stream first, then the local log), or
/// by the owner, to whom they are forwarded. The pipeline keeps its checks and its exact dedupe;
/// this decides only who appends. Without it (one node) the pipeline appends to the local log.
public protocol PartitionRouting: Sendable {
    /// Whether this node owns `partition` now (a hint: the append itself is the check).
    func owns(_ partition: Int) -> Bool
    /// Appends as the owner: replicated, then in the local log. - Throws: `.unavailable` when this
    /// node no longer owns the partition, the replicated write's outcome is unknown, or the log's
    /// end is no longer `expectedEnd` (the end the readings' dedupe was judged against).
    func appendAsOwner(_ readings: [Reading], partition: Int, expectedEnd: Int64) async throws(LogError) -> AppendResult
    /// The most readings one append may carry (a replicated message has a size limit).
    var maxReadingsPerAppend: Int { get }
    /// Sends readings of a partition this node does not own to its owner, whose pipeline checks
    /// and appends them. - Returns: the owner's result, or `.unavailable` when no owner answered.
    func forward(_ readings: [Reading], partition: Int, detailed: Bool) async -> Result<SubmissionResult, LogError>
}

/// The bytes of a forwarded submission and of its result: fixed-width little-endian numbers and
/// length-prefixed strings, no field names, since every reading of a forwarded line goes through it.
public enum ForwardCodec {
    static let version: UInt8 = 1

    public static func encode(_ readings: [Reading], detailed: Bool) -> [UInt8] {
        var out: [UInt8] = [version, detailed ? 1 : 0]
        out.reserveCapacity(8 + readings.count * 48)
        put(UInt32(readings.count), &out)
        for r in readings {
            put(r.sensorID, &out)
            put(r.type, &out)
            put(r.location, &out)
            put(UInt64(bitPattern: r.timestamp), &out)
            put(r.value.bitPattern, &out)
        }
        return out
    }

    public static func decodeSubmission(_ bytes: [UInt8]) -> (readings: [Reading], detailed: Bool)? {
        bytes.withUnsafeBytes { raw in try? decodeSubmission(raw) }
    }

    private static func decodeSubmission(_ raw: UnsafeRawBufferPointer) throws(DecodeError) -> (readings: [Reading], detailed: Bool) {
        var reader = ByteReader(raw)
        guard try reader.readByte() == version else { throw DecodeError("unknown version") }
        let detailed = try reader.readByte() == 1
        // A reading takes at least 28 bytes: a larger count is a lie, not an allocation.
        let count = try reader.readCount32(max: reader.remaining / 28)
        var readings: [Reading] = []
        readings.reserveCapacity(count)
        for _ in 0..<count {
            let id = try reader.readString32(), type = try reader.readString32(), location = try reader.readString32()
            let ts = try reader.readLittleEndian(UInt64.self), value = try reader.readLittleEndian(UInt64.self)
            readings.append(Reading(sensorID: id, type: type, value: Double(bitPattern: value), location: location,
                                    timestamp: Int64(bitPattern: ts)))
        }
        try reader.expectEnd()
        return (readings, detailed)
    }

    /// A result, or the failure the owner met (its code and message).
    public static func encode(_ result: Result<SubmissionResult, LogError>) -> [UInt8] {
        var out: [UInt8] = [version]
        switch result {
        case .failure(let error):
            out.append(1)
            put(error.code.rawValue, &out)
            put(error.message, &out)
        case .success(let r):
            out.append(0)
            for n in [r.appended, r.duplicates, r.mismatches, r.tooOld, r.deleted, r.tooManySensors] { put(UInt32(n), &out) }
            put(r.firstRefused, &out)
            put(r.firstProblem, &out)
            put(UInt32(r.outcomes.map { $0.count + 1 } ?? 0), &out)
            for o in r.outcomes ?? [] { put(o, &out) }
        }
        return out
    }

    public static func decodeResult(_ bytes: [UInt8]) -> Result<SubmissionResult, LogError>? {
        bytes.withUnsafeBytes { raw in try? decodeResult(raw) }
    }

    private static func decodeResult(_ raw: UnsafeRawBufferPointer) throws(DecodeError) -> Result<SubmissionResult, LogError> {
        var reader = ByteReader(raw)
        guard try reader.readByte() == version else { throw DecodeError("unknown version") }
        if try reader.readByte() == 1 {
            let code = try reader.readString32(), message = try reader.readString32()
            try reader.expectEnd()
            return .failure(LogError(LogError.Code(rawValue: code), message))
        }
        var r = SubmissionResult()
        var counts: [Int] = []
        for _ in 0..<6 { counts.append(Int(try reader.readLittleEndian(UInt32.self))) }
        (r.appended, r.duplicates, r.mismatches, r.tooOld, r.deleted, r.tooManySensors) = (counts[0], counts[1], counts[2], counts[3], counts[4], counts[5])
        r.firstRefused = try reader.readIndexed()
        r.firstProblem = try reader.readIndexed()
        let n = try reader.readCount32(max: reader.remaining + 1)
        if n > 0 {
            var outcomes: [IngestOutcome] = []
            for _ in 1..<n { outcomes.append(try reader.readOutcome()) }
            r.outcomes = outcomes
        }
        try reader.expectEnd()
        return .success(r)
    }

    private static func put(_ v: UInt32, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    private static func put(_ v: UInt64, _ out: inout [UInt8]) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
    private static func put(_ s: String, _ out: inout [UInt8]) {
        put(UInt32(s.utf8.count), &out)
        out.append(contentsOf: s.utf8)
    }

    private static func put(_ indexed: (index: Int, outcome: IngestOutcome)?, _ out: inout [UInt8]) {
        guard let indexed else { return put(UInt32.max, &out) }
        put(UInt32(indexed.index), &out)
        put(indexed.outcome, &out)
    }

    private static func put(_ o: IngestOutcome, _ out: inout [UInt8]) {
        switch o {
        case .appended(let partition, let offset):
            out.append(0)
            put(UInt32(partition), &out)
            put(UInt64(bitPattern: offset), &out)
        case .duplicate: out.append(1)
        case .typeMismatch(let expected):
            out.append(2)
            put(expected, &out)
        case .tooOld: out.append(3)
        case .deleted: out.append(4)
        case .tooManySensors: out.append(5)
        }
    }
}

/// The forward codec's fields, read over untrusted bytes (another node's reply is checked too).
extension ByteReader {
    fileprivate mutating func readCount32(max limit: Int) throws(DecodeError) -> Int {
        let n = try readLittleEndian(UInt32.self)
        guard n <= limit else { throw DecodeError("count \(n) exceeds \(limit)") }
        return Int(n)
    }

    fileprivate mutating func readString32() throws(DecodeError) -> String {
        let n = try readCount32(max: remaining)
        guard let s = String(validating: try readBytes(n), as: UTF8.self) else { throw DecodeError("a string is not valid UTF-8") }
        return s
    }

    fileprivate func expectEnd() throws(DecodeError) {
        guard remaining == 0 else { throw DecodeError("\(remaining) bytes after the end") }
    }

    /// A `(index, outcome)`, or nil for its absence (`UInt32.max`).
    fileprivate mutating func readIndexed() throws(DecodeError) -> (index: Int, outcome: IngestOutcome)? {
        let i = try readLittleEndian(UInt32.self)
        if i == UInt32.max { return nil }
        return (Int(i), try readOutcome())
    }

    fileprivate mutating func readOutcome() throws(DecodeError) -> IngestOutcome {
        switch try readByte() {
        case 0:
            let p = try readLittleEndian(UInt32.self), offset = try readLittleEndian(UInt64.self)
            return .appended(partition: Int(p), offset: Int64(bitPattern: offset))
        case 1: return .duplicate
        case 2: return .typeMismatch(expected: try readString32())
        case 3: return .tooOld
        case 4: return .deleted
        case 5: return .tooManySensors
        default: throw DecodeError("unknown outcome")
        }
    }
}

extension SubmissionResult {
    /// Adds a later piece of the same submission (its indices follow this one's `count` readings).
    public mutating func append(_ other: SubmissionResult, after count: Int) {
        appended += other.appended
        duplicates += other.duplicates
        mismatches += other.mismatches
        tooOld += other.tooOld
        deleted += other.deleted
        tooManySensors += other.tooManySensors
        if outcomes != nil { outcomes! += other.outcomes ?? [] }
        if firstRefused == nil, let f = other.firstRefused { firstRefused = (f.index + count, f.outcome) }
        if firstProblem == nil, let f = other.firstProblem { firstProblem = (f.index + count, f.outcome) }
    }
}
