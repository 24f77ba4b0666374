import CRC32C

/// Which batches of one segment hold each sensor: what lets a sensor's readings be read without
/// decoding the batches that do not hold it.
///
/// Sensors are keyed by a 64-bit FNV-1a hash of their id; two ids that share a hash only make a
/// reader decode a batch it did not need (the decoder still compares ids). Each sensor's batches
/// are kept as delta-coded varints of their ordinals, about one byte per (sensor, batch) pair.
///
/// The active segment keeps one in memory, brought up to date by the readers that need it (an
/// append never pays for it); a closed segment's is written beside it as `.sensors` by the
/// server's maintenance (`Log.writeSensorIndexes`), and a missing or stale file only costs a
/// reader the walk that builds it again.
package struct SensorIndex: Equatable {
    /// Where a batch of the segment is.
    package struct BatchRef: Equatable {
        package var position: Int64
        package var relativeOffset: UInt32
        /// The batch's CRC: a reader takes the batch it finds there only if it is this one.
        package var crc: UInt32
    }

    /// A sensor's batch ordinals, delta-coded.
    package struct Postings: Equatable {
        package var bytes: [UInt8] = []
        package var last: UInt32 = 0
    }

    package private(set) var batches: [BatchRef] = []
    package private(set) var sensors: [UInt64: Postings] = [:]
    /// Where the next batch to add starts, and the offset it must carry.
    package private(set) var coveredPosition: Int64 = 0
    package private(set) var coveredRelative: UInt32 = 0
    /// Bytes of postings held (the cache's budget counts them).
    package private(set) var postingBytes = 0

    /// Adds the batch at `position` (relative offset `relative`, `length` bytes) holding `hashes`.
    package mutating func add(position: Int64, relative: UInt32, nextRelative: UInt32, length: Int, crc: UInt32, hashes: some Sequence<UInt64>) {
        let ordinal = UInt32(batches.count)
        batches.append(BatchRef(position: position, relativeOffset: relative, crc: crc))
        for hash in hashes {
            postingBytes += sensors[hash, default: Postings()].append(ordinal)
        }
        coveredPosition = position + Int64(length)
        coveredRelative = nextRelative
    }

    /// The batches that may hold `sensorID`, in file order; nil when the index is damaged (the
    /// caller then reads without it).
    package func batches(holding sensorID: String) -> [BatchRef]? {
        guard let postings = sensors[Self.hash(sensorID)] else { return [] }
        var out: [BatchRef] = []
        var ordinal: UInt64 = 0
        var first = true
        var ok = true
        postings.bytes.withUnsafeBytes { raw in
            var reader = ByteReader(raw)
            while reader.remaining > 0 {
                guard let delta = try? reader.readVarint(), first || delta > 0 else { ok = false; return }
                ordinal += delta
                first = false
                guard ordinal < UInt64(batches.count) else { ok = false; return }
                out.append(batches[Int(ordinal)])
            }
        }
        return ok ? out : nil
    }

    /// Whether both name the same batches for the same sensors (however each was made).
    package func sameEntries(as other: SensorIndex) -> Bool {
        batches == other.batches && sensors.count == other.sensors.count
            && sensors.allSatisfy { other.sensors[$0.key]?.bytes == $0.value.bytes }
    }

    /// FNV-1a, 64 bits: stable across processes and versions, as the files need.
    package static func hash(_ id: String) -> UInt64 {
        var id = id
        return id.withUTF8 { hash(UnsafeRawBufferPointer($0)) }
    }

    package static let fnvOffset: UInt64 = 0xcbf2_9ce4_8422_2325
    package static let fnvPrime: UInt64 = 0x0000_0100_0000_01b3

    package static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h = fnvOffset
        for b in bytes {
            h = (h ^ UInt64(b)) &* fnvPrime
        }
        return h
    }

    // MARK: The `.sensors` file

    package static let magic: [UInt8] = Array("SLSI".utf8)
    package static let version: UInt8 = 1
    package static let headerSize = 4 + 4 + 8 + 8 + 4 + 4 + 4

    /// The file: magic, version, then the segment it indexes (size, records), the counts, the
    /// batches (position u32, relative offset u32, CRC u32), the sorted hashes (u64) with where their
    /// postings start (u32), the postings, and a CRC32C of all that.
    package func fileBytes(segmentSize: Int64, records: Int64) -> [UInt8] {
        let keys = sensors.keys.sorted()
        var blob: [UInt8] = []
        var starts: [UInt32] = []
        starts.reserveCapacity(keys.count)
        for key in keys {
            starts.append(UInt32(blob.count))
            blob += sensors[key]!.bytes
        }
        var out = Self.magic + [Self.version, 0, 0, 0]
        out.reserveCapacity(Self.headerSize + batches.count * 12 + keys.count * 12 + blob.count + 4)
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
        put(UInt64(segmentSize))
        put(UInt64(records))
        put(UInt32(batches.count))
        put(UInt32(keys.count))
        put(UInt32(blob.count))
        for b in batches {
            put(UInt32(b.position))
            put(b.relativeOffset)
            put(b.crc)
        }
        for key in keys { put(key) }
        for start in starts { put(start) }
        out += blob
        put(out.withUnsafeBytes { sensorlog_crc32c(0, $0.baseAddress!, $0.count) })
        return out
    }

    /// Parses a `.sensors` file and checks it against the segment it claims to index.
    /// - Returns: nil when it is malformed, damaged or indexes another segment.
    package static func parse(_ file: [UInt8], segmentSize: Int64, records: Int64?) -> SensorIndex? {
        file.withUnsafeBytes { raw -> SensorIndex? in
            guard raw.count >= headerSize + 4, Array(raw[0..<4]) == magic, raw[4] == version else { return nil }
            let body = raw.count - 4
            guard sensorlog_crc32c(0, raw.baseAddress!, body) == raw.loadUnaligned(fromByteOffset: body, as: UInt32.self).littleEndian
            else { return nil }
            var reader = ByteReader(UnsafeRawBufferPointer(rebasing: raw[8..<body]))
            return try? parseBody(&reader, segmentSize: segmentSize, records: records)
        }
    }

    private static func parseBody(_ r: inout ByteReader, segmentSize: Int64, records: Int64?) throws(DecodeError) -> SensorIndex? {
        guard try r.readLittleEndian(UInt64.self) == UInt64(segmentSize) else { return nil }
        let recordCount = try r.readLittleEndian(UInt64.self)
        if let records, recordCount != UInt64(records) { return nil }
        let batchCount = Int(try r.readLittleEndian(UInt32.self))
        let keyCount = Int(try r.readLittleEndian(UInt32.self))
        let blobCount = Int(try r.readLittleEndian(UInt32.self))
        guard r.remaining == batchCount * 12 + keyCount * 12 + blobCount else { return nil }
        var index = SensorIndex()
        index.batches.reserveCapacity(batchCount)
        for _ in 0..<batchCount {
            let ref = BatchRef(position: Int64(try r.readLittleEndian(UInt32.self)), relativeOffset: try r.readLittleEndian(UInt32.self),
                               crc: try r.readLittleEndian(UInt32.self))
            if let last = index.batches.last, last.position >= ref.position || last.relativeOffset >= ref.relativeOffset { return nil }
            guard ref.position < segmentSize, UInt64(ref.relativeOffset) < recordCount else { return nil }
            index.batches.append(ref)
        }
        var keys: [UInt64] = []
        keys.reserveCapacity(keyCount)
        for _ in 0..<keyCount {
            let key = try r.readLittleEndian(UInt64.self)
            if let last = keys.last, last >= key { return nil }
            keys.append(key)
        }
        var starts: [Int] = []
        starts.reserveCapacity(keyCount + 1)
        for _ in 0..<keyCount { starts.append(Int(try r.readLittleEndian(UInt32.self))) }
        starts.append(blobCount)
        let blob = try r.readBytes(blobCount)
        index.sensors.reserveCapacity(keyCount)
        for (k, key) in keys.enumerated() {
            guard starts[k] <= starts[k + 1] else { return nil }
            index.sensors[key] = Postings(bytes: Array(blob[starts[k]..<starts[k + 1]]))
        }
        index.postingBytes = blobCount
        index.coveredPosition = segmentSize
        index.coveredRelative = UInt32(clamping: recordCount)
        return index
    }
}

extension SensorIndex.Postings {
    /// - Returns: the bytes it took.
    package mutating func append(_ ordinal: UInt32) -> Int {
        // The first ordinal as it is, each later one as its distance from the one before.
        var v = bytes.isEmpty ? ordinal : ordinal - last
        if !bytes.isEmpty && v == 0 { return 0 }  // a sensor with several tuples in one batch
        let before = bytes.count
        while v >= 0x80 {
            bytes.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
        last = ordinal
        return bytes.count - before
    }
}

extension BatchDecoder {
    /// The hashes of the sensors a CRC-checked batch holds, from its dictionary alone (none for
    /// a batch of removed records or deletions).
    package func sensorHashes(_ raw: UnsafeRawBufferPointer, header: BatchHeader) throws(DecodeError) -> [UInt64] {
        guard header.kind == .readings || header.kind == .sparseReadings, header.readingCount > 0 else { return [] }
        let payload = try decompressedPayload(raw, header: header)
        var reader = ByteReader(payload)
        if header.kind == .sparseReadings { _ = try readRemovedRuns(&reader, header: header) }
        let types = try readStrings(&reader)
        let locations = try readStrings(&reader)
        // FNV-1a runs over an id's bytes in order, so the state after each byte of the previous id
        // is kept and a front-coded id starts from the state of the prefix it shares.
        let tupleCount = try reader.readCount(max: min(header.recordCount, reader.remaining))
        var hashes: [UInt64] = []
        hashes.reserveCapacity(tupleCount)
        var states: [UInt64] = [SensorIndex.fnvOffset]
        for _ in 0..<tupleCount {
            let shared = try reader.readCount(max: states.count - 1)
            let suffix = try reader.readBytes(try reader.readCount(max: reader.remaining))
            _ = try reader.readCount(max: types.count - 1)
            _ = try reader.readCount(max: locations.count - 1)
            states.removeSubrange((shared + 1)...)
            var h = states[shared]
            for b in suffix {
                h = (h ^ UInt64(b)) &* SensorIndex.fnvPrime
                states.append(h)
            }
            hashes.append(h)
        }
        return hashes
    }
}
