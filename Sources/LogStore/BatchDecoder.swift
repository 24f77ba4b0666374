import CLZ4
public import SensorLogCore

/// A decoded batch, column-wise: what a reader hands out. Strings exist once per distinct
/// (sensor, type, location) in the batch, not once per reading.
public struct DecodedBatch: Sendable {
    public internal(set) var header: BatchHeader
    /// Readings: per tuple, its sensor_id. Deletions: per record, the deleted sensor_id.
    public internal(set) var sensorIDs: [String] = []
    /// Per tuple, an index into `types`.
    public internal(set) var tupleTypes: [Int32] = []
    /// Per tuple, an index into `locations`.
    public internal(set) var tupleLocations: [Int32] = []
    public internal(set) var types: [String] = []
    public internal(set) var locations: [String] = []
    /// Per record, an index into the tuple columns.
    public internal(set) var recordTuples: [Int32] = []
    /// Per record, nanoseconds since the epoch.
    public internal(set) var timestamps: [Int64] = []
    /// Per record (readings only).
    public internal(set) var values: [Double] = []
    /// Per record of a sparse readings batch, its position among the batch's offsets (the
    /// removed records fill the positions not listed); empty for every other batch.
    public internal(set) var livePositions: [Int32] = []

    public init() {
        header = BatchHeader(
            baseOffset: 0, length: 0, crc: 0, version: BatchHeader.formatVersion, kind: .readings, codec: .none,
            recordCount: 0, minTimestamp: 0, maxTimestamp: 0, appendTime: 0, uncompressedLength: 0)
    }

    /// What the records are. A sparse readings batch holds readings (its removed records are
    /// not records here), so readers see `.readings`; `header.kind` tells the stored form.
    public var kind: RecordKind { header.kind == .sparseReadings ? .readings : header.kind }
    /// The records decoded: for a sparse batch fewer than the offsets it covers.
    public var count: Int { recordTuples.count }
    public var baseOffset: Int64 { header.baseOffset }
    /// The offset after the batch's last offset (removed records included).
    public var nextOffset: Int64 { header.nextOffset }

    /// The offset of record `i`.
    public func offset(at i: Int) -> Int64 {
        header.baseOffset + Int64(livePositions.isEmpty ? i : Int(livePositions[i]))
    }

    /// The index of the first record at or after `offset` (`count` when none is).
    public func firstIndex(atOrAfter offset: Int64) -> Int {
        let position = offset - header.baseOffset
        guard position > 0 else { return 0 }
        guard !livePositions.isEmpty else { return Int(min(position, Int64(count))) }
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if Int64(livePositions[mid]) < position { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// Record `i` of a readings batch.
    public func reading(at i: Int) -> Reading {
        precondition(kind == .readings)
        let t = Int(recordTuples[i])
        return Reading(
            sensorID: sensorIDs[t], type: types[Int(tupleTypes[t])], value: values[i],
            location: locations[Int(tupleLocations[t])], timestamp: timestamps[i])
    }

    /// The sensor of record `i` (either kind).
    public func sensorID(at i: Int) -> String { sensorIDs[Int(recordTuples[i])] }

    /// Every record of a readings batch.
    public var readings: [Reading] { (0..<count).map(reading(at:)) }

    mutating func removeAll() {
        sensorIDs.removeAll(keepingCapacity: true)
        tupleTypes.removeAll(keepingCapacity: true)
        tupleLocations.removeAll(keepingCapacity: true)
        types.removeAll(keepingCapacity: true)
        locations.removeAll(keepingCapacity: true)
        recordTuples.removeAll(keepingCapacity: true)
        timestamps.removeAll(keepingCapacity: true)
        values.removeAll(keepingCapacity: true)
        livePositions.removeAll(keepingCapacity: true)
    }
}

/// Decodes the payload `BatchEncoder` writes. Every field of the payload is checked against the
/// header and its own bounds, so a batch that passed its CRC but was written by a buggy or hostile
/// writer still cannot make the decoder trap or over-allocate.
package final class BatchDecoder {
    private let scratch = GrowableBuffer(capacity: 64 << 10)
    private var idBytes: [UInt8] = []

    package init() {}

    /// The payload of a CRC-checked batch, decompressed into scratch storage when LZ4.
    func decompressedPayload(_ raw: UnsafeRawBufferPointer, header: BatchHeader) throws(DecodeError) -> UnsafeRawBufferPointer {
        let stored = UnsafeRawBufferPointer(rebasing: raw[BatchHeader.size..<header.length])
        switch header.codec {
        case .none:
            guard stored.count == header.uncompressedLength else { throw DecodeError("payload length differs from header") }
            return stored
        case .lz4:
            scratch.removeAll()
            scratch.reserve(header.uncompressedLength)
            let n = LZ4_decompress_safe(
                stored.baseAddress!.assumingMemoryBound(to: CChar.self), scratch.base.assumingMemoryBound(to: CChar.self),
                Int32(stored.count), Int32(header.uncompressedLength))
            guard n == header.uncompressedLength else { throw DecodeError("LZ4 payload does not decompress to its stated length") }
            return UnsafeRawBufferPointer(start: scratch.base, count: Int(n))
        }
    }

    /// Decodes a whole, CRC-checked batch into `batch`, reusing its storage.
    package func decode(_ raw: UnsafeRawBufferPointer, header: BatchHeader, into batch: inout DecodedBatch) throws(DecodeError) {
        batch.removeAll()
        batch.header = header
        let payload = try decompressedPayload(raw, header: header)
        var reader = ByteReader(payload)
        switch header.kind {
        case .readings: try decodeReadings(&reader, header: header, count: header.recordCount, into: &batch)
        case .sparseReadings:
            let runs = try readRemovedRuns(&reader, header: header)
            Self.livePositions(runs, header: header, into: &batch.livePositions)
            try decodeReadings(&reader, header: header, count: header.readingCount, into: &batch)
        case .sensorDeletions: try decodeDeletions(&reader, header: header, into: &batch)
        case .removed:
            // One version byte. The batch's offsets hold no records: it decodes to none (a
            // salvaged range may cover millions of offsets; nothing is allocated per offset).
            guard try reader.readByte() == 0 else { throw DecodeError("unknown removed-records version") }
        }
        guard reader.remaining == 0 else { throw DecodeError("\(reader.remaining) bytes after the last column") }
    }

    private func readString(_ reader: inout ByteReader) throws(DecodeError) -> String {
        let n = try reader.readCount(max: reader.remaining)
        // Refused, not repaired: a repaired string is not the bytes the sensor index hashes and
        // the sensor scan compares (the encoder writes Swift strings, always valid UTF-8).
        guard let s = String(validating: try reader.readBytes(n), as: UTF8.self) else { throw DecodeError("a string is not valid UTF-8") }
        return s
    }

    /// A dictionary section: a count, then that many strings.
    func readStrings(_ reader: inout ByteReader) throws(DecodeError) -> [String] {
        let count = try reader.readCount(max: reader.remaining)
        var out: [String] = []
        out.reserveCapacity(count)
        for _ in 0..<count { out.append(try readString(&reader)) }
        return out
    }

    /// The tuple section: front-coded sensor ids with their type and location indexes, each
    /// handed to `body` (the id's bytes are valid during the call only).
    /// - Returns: the number of tuples.
    func readTuples(_ reader: inout ByteReader, header: BatchHeader, typeCount: Int, locationCount: Int,
                    _ body: (_ id: [UInt8], _ type: Int, _ location: Int) -> Void) throws(DecodeError) -> Int {
        let tupleCount = try reader.readCount(max: min(header.recordCount, reader.remaining))
        idBytes.removeAll(keepingCapacity: true)
        for _ in 0..<tupleCount {
            let shared = try reader.readCount(max: idBytes.count)
            let suffixLength = try reader.readCount(max: reader.remaining)
            let suffix = try reader.readBytes(suffixLength)
            idBytes.removeSubrange(shared...)
            idBytes.append(contentsOf: suffix)
            let type = try reader.readCount(max: typeCount - 1)
            let location = try reader.readCount(max: locationCount - 1)
            body(idBytes, type, location)
        }
        return tupleCount
    }

    private func decodeDeletions(_ reader: inout ByteReader, header: BatchHeader, into batch: inout DecodedBatch) throws(DecodeError) {
        for i in 0..<header.recordCount {
            batch.sensorIDs.append(try readString(&reader))
            batch.recordTuples.append(Int32(i))
            batch.timestamps.append(header.minTimestamp)
        }
    }

    /// The removed-runs prefix of a sparse readings batch, checked against the header: the runs
    /// hold exactly its removed count, leave its readings between them, and the payload can
    /// still hold those readings (at least a byte each), so nothing later allocates beyond it.
    func readRemovedRuns(_ reader: inout ByteReader, header: BatchHeader) throws(DecodeError) -> [RemovedRun] {
        let total = header.recordCount
        let readings = header.readingCount
        guard total <= Int(Int32.max), readings <= reader.remaining else { throw DecodeError("sparse batch claims more than its payload holds") }
        let count = try reader.readCount(max: min(total - 1, reader.remaining / 2))
        guard count >= 1 else { throw DecodeError("sparse batch without removed records") }
        var runs: [RemovedRun] = []
        runs.reserveCapacity(count)
        var live = 0
        var removed = 0
        for r in 0..<count {
            let before = try reader.readCount(max: readings - live)
            guard before > 0 || r == 0 else { throw DecodeError("removed runs are not separated by a reading") }
            let length = try reader.readCount(max: header.removedCount - removed)
            guard length >= 1 else { throw DecodeError("empty removed run") }
            live += before
            removed += length
            runs.append(RemovedRun(liveBefore: before, count: length))
        }
        guard removed == header.removedCount else {
            throw DecodeError("removed runs hold \(removed) records, the header says \(header.removedCount)")
        }
        return runs
    }

    /// The position among the batch's offsets of each reading, from checked runs.
    static func livePositions(_ runs: [RemovedRun], header: BatchHeader, into positions: inout [Int32]) {
        positions.reserveCapacity(header.readingCount)
        var position = 0
        for run in runs {
            for p in position..<(position + run.liveBefore) { positions.append(Int32(p)) }
            position += run.liveBefore + run.count
        }
        for p in position..<header.recordCount { positions.append(Int32(p)) }
    }

    private func decodeReadings(_ reader: inout ByteReader, header: BatchHeader, count: Int, into batch: inout DecodedBatch) throws(DecodeError) {
        // Each record costs at least 3 payload bytes (ref, timestamp, value); reject claims the
        // payload cannot back before reserving anything.
        guard count <= reader.remaining else { throw DecodeError("record count exceeds what the payload can hold") }

        batch.types = try readStrings(&reader)
        batch.locations = try readStrings(&reader)
        let typeCount = batch.types.count
        var invalidID = false
        let tupleCount = try readTuples(&reader, header: header, typeCount: typeCount, locationCount: batch.locations.count) { id, type, location in
            guard let s = String(validating: id, as: UTF8.self) else {
                invalidID = true
                return
            }
            batch.sensorIDs.append(s)
            batch.tupleTypes.append(Int32(type))
            batch.tupleLocations.append(Int32(location))
        }
        if invalidID { throw DecodeError("a sensor id is not valid UTF-8") }

        batch.recordTuples.reserveCapacity(count)
        var introduced = 0
        for _ in 0..<count {
            let ref = try reader.readCount(max: introduced)
            if ref == 0 {
                guard introduced < tupleCount else { throw DecodeError("record refers to a tuple beyond the dictionary") }
                batch.recordTuples.append(Int32(introduced))
                introduced += 1
            } else {
                batch.recordTuples.append(Int32(ref - 1))
            }
        }
        guard introduced == tupleCount else { throw DecodeError("dictionary holds tuples no record uses") }

        let unit = try reader.readVarint()
        guard unit >= 1, unit <= 1_000_000_000 else { throw DecodeError("timestamp unit \(unit) out of range") }
        batch.timestamps.reserveCapacity(count)
        var previous = header.minTimestamp
        var seenMin = Int64.max
        var seenMax = Int64.min
        for _ in 0..<count {
            let delta = try reader.readZigZag()
            let (scaled, overflow) = delta.multipliedReportingOverflow(by: Int64(unit))
            guard !overflow else { throw DecodeError("timestamp delta overflows") }
            previous = previous &+ scaled
            seenMin = min(seenMin, previous)
            seenMax = max(seenMax, previous)
            batch.timestamps.append(previous)
        }
        guard seenMin == header.minTimestamp, seenMax == header.maxTimestamp else {
            throw DecodeError("timestamps disagree with the header's bounds")
        }

        batch.values.reserveCapacity(count)
        let mode = try reader.readByte()
        switch mode {
        case 0:
            for _ in 0..<count { batch.values.append(Double(bitPattern: try reader.readLittleEndian(UInt64.self))) }
        case 1:
            let exponent = try reader.readCount(max: BatchEncoder.maxScaleExponent)
            let power = BatchEncoder.powersOfTen[exponent]
            var typeMin: [Int64] = []
            for _ in 0..<typeCount { typeMin.append(try reader.readZigZag()) }
            for i in 0..<count {
                let t = Int(batch.tupleTypes[Int(batch.recordTuples[i])])
                let (integer, overflow) = typeMin[t].addingReportingOverflow(Int64(bitPattern: try reader.readVarint()))
                guard !overflow, abs(Double(integer)) < BatchEncoder.exactIntegerLimit else {
                    throw DecodeError("scaled value out of range")
                }
                batch.values.append(exponent == 0 ? Double(integer) : Double(integer) / power)
            }
        default:
            throw DecodeError("unknown value encoding \(mode)")
        }
    }
}
