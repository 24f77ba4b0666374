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
        var reader = Reader(bytes: bytes)
        guard reader.byte() == version, let detailed = reader.byte(), let count = reader.u32(), count <= bytes.count / 20 else { return nil }
        var readings: [Reading] = []
        readings.reserveCapacity(Int(count))
        for _ in 0..<count {
            guard let id = reader.string(), let type = reader.string(), let location = reader.string(),
                  let ts = reader.u64(), let value = reader.u64() else { return nil }
            readings.append(Reading(sensorID: id, type: type, value: Double(bitPattern: value), location: location,
                                    timestamp: Int64(bitPattern: ts)))
        }
        return reader.atEnd ? (readings, detailed == 1) : nil
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
        var reader = Reader(bytes: bytes)
        guard reader.byte() == version, let tag = reader.byte() else { return nil }
        if tag == 1 {
            guard let code = reader.string(), let message = reader.string() else { return nil }
            return .failure(LogError(LogError.Code(rawValue: code), message))
        }
        var r = SubmissionResult()
        guard let a = reader.u32(), let d = reader.u32(), let m = reader.u32(), let t = reader.u32(), let x = reader.u32(),
              let s = reader.u32(), let first = reader.indexed(), let problem = reader.indexed(), let n = reader.u32() else { return nil }
        (r.appended, r.duplicates, r.mismatches, r.tooOld, r.deleted, r.tooManySensors) = (Int(a), Int(d), Int(m), Int(t), Int(x), Int(s))
        (r.firstRefused, r.firstProblem) = (first, problem)
        if n > 0 {
            var outcomes: [IngestOutcome] = []
            for _ in 1..<n {
                guard let o = reader.outcome() else { return nil }
                outcomes.append(o)
            }
            r.outcomes = outcomes
        }
        return reader.atEnd ? .success(r) : nil
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

    private struct Reader {
        let bytes: [UInt8]
        var at = 0
        var atEnd: Bool { at == bytes.count }

        mutating func byte() -> UInt8? {
            guard at < bytes.count else { return nil }
            defer { at += 1 }
            return bytes[at]
        }

        mutating func u32() -> UInt32? { fixed(UInt32.self) }
        mutating func u64() -> UInt64? { fixed(UInt64.self) }

        private mutating func fixed<T: FixedWidthInteger>(_: T.Type) -> T? {
            let size = MemoryLayout<T>.size
            guard bytes.count - at >= size else { return nil }
            defer { at += size }
            return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: T.self)) }
        }

        mutating func string() -> String? {
            guard let n = u32(), bytes.count - at >= Int(n) else { return nil }
            defer { at += Int(n) }
            return String(decoding: bytes[at..<at + Int(n)], as: UTF8.self)
        }

        /// A `(index, outcome)` or its absence (`.some(nil)`); nil when the bytes end early.
        mutating func indexed() -> (index: Int, outcome: IngestOutcome)?? {
            guard let i = u32() else { return nil }
            if i == UInt32.max { return .some(nil) }
            guard let o = outcome() else { return nil }
            return .some((Int(i), o))
        }

        mutating func outcome() -> IngestOutcome? {
            switch byte() {
            case 0:
                guard let p = u32(), let offset = u64() else { return nil }
                return .appended(partition: Int(p), offset: Int64(bitPattern: offset))
            case 1: return .duplicate
            case 2: return string().map { .typeMismatch(expected: $0) }
            case 3: return .tooOld
            case 4: return .deleted
            case 5: return .tooManySensors
            default: return nil
            }
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
