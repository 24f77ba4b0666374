import CRC32C

/// What a batch holds. Readers skip kinds they do not know only by refusing them: a new kind is a
/// new format version. See docs/storage-format.md.
public enum RecordKind: UInt8, Sendable {
    /// Sensor readings, column-wise.
    case readings = 0
    /// Sensor deletions: each record names a sensor whose readings compaction drops.
    case sensorDeletions = 1
    /// Offsets whose records were removed (by compaction of a deleted sensor, or a repair that
    /// cut a corrupt range): they keep the offsets contiguous and hold no data.
    case removed = 2
    /// Readings with removed records among them (what compaction writes when it drops a deleted
    /// sensor's readings): a list of removed runs, then a readings payload for the rest.
    case sparseReadings = 3
}

/// The payload codec.
public enum BatchCodec: UInt8, Sendable {
    case none = 0
    case lz4 = 1
}

/// The fixed 56-byte header in front of every batch (little-endian).
///
/// ```
/// 0   u64 base offset          (not under the CRC: checked by offset contiguity)
/// 8   u32 batch length         (header + stored payload)
/// 12  u32 CRC32C of bytes [16, batch length)
/// 16  u8  format version (1)
/// 17  u8  record kind
/// 18  u8  codec
/// 19  u8  reserved (0)
/// 20  u32 record count (>= 1)
/// 24  i64 min timestamp (ns)
/// 32  i64 max timestamp (ns)
/// 40  i64 append time (ns)
/// 48  u32 uncompressed payload length
/// 52  u32 removed records: of a sparse readings batch (1 ... count - 1), else 0
/// ```
public struct BatchHeader: Sendable, Equatable {
    public static let size = 56
    public static let formatVersion: UInt8 = 1
    /// The CRC covers everything from this byte to the end of the batch.
    static let crcStart = 16

    public var baseOffset: Int64
    public var length: Int
    public var crc: UInt32
    public var version: UInt8
    public var kind: RecordKind
    public var codec: BatchCodec
    public var recordCount: Int
    public var minTimestamp: Int64
    public var maxTimestamp: Int64
    public var appendTime: Int64
    public var uncompressedLength: Int
    /// Offsets of a sparse readings batch that hold no reading (0 for every other kind).
    public var removedCount: Int = 0

    /// How many readings the batch holds (0 for a batch of another kind).
    public var readingCount: Int {
        switch kind {
        case .readings: recordCount
        case .sparseReadings: recordCount - removedCount
        case .sensorDeletions, .removed: 0
        }
    }

    /// The offset after this batch's last record.
    public var nextOffset: Int64 { baseOffset + Int64(recordCount) }

    /// Parses and sanity-checks a header; does not check the CRC (that needs the whole batch).
    /// - Throws: `DecodeError` when a field is out of range.
    package static func parse(_ raw: UnsafeRawBufferPointer, maxBatchBytes: Int) throws(DecodeError) -> BatchHeader {
        guard raw.count >= size else { throw DecodeError("batch header truncated") }
        func load<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T { T(littleEndian: raw.loadUnaligned(fromByteOffset: at, as: T.self)) }
        let version = raw[16]
        guard version == formatVersion else { throw DecodeError("unknown batch format version \(version)") }
        guard let kind = RecordKind(rawValue: raw[17]) else { throw DecodeError("unknown record kind \(raw[17])") }
        guard let codec = BatchCodec(rawValue: raw[18]) else { throw DecodeError("unknown codec \(raw[18])") }
        let length = Int(load(8, UInt32.self))
        guard length > size, length <= maxBatchBytes else { throw DecodeError("batch length \(length) out of range") }
        let count = Int(load(20, UInt32.self))
        guard count >= 1 else { throw DecodeError("batch has no records") }
        let baseOffset = load(0, Int64.self)
        guard baseOffset >= 0, baseOffset <= Int64.max - Int64(count) else { throw DecodeError("base offset \(baseOffset) out of range") }
        let minTimestamp = load(24, Int64.self)
        let maxTimestamp = load(32, Int64.self)
        guard minTimestamp <= maxTimestamp else { throw DecodeError("min timestamp after max timestamp") }
        let uncompressed = Int(load(48, UInt32.self))
        guard uncompressed <= maxBatchBytes * 8 else { throw DecodeError("uncompressed length \(uncompressed) out of range") }
        let removed = Int(load(52, UInt32.self))
        if kind == .sparseReadings {
            guard removed >= 1, removed < count else { throw DecodeError("sparse batch removes \(removed) of \(count) records") }
        } else {
            guard removed == 0 else { throw DecodeError("removed-records field \(removed) set on a batch of kind \(kind.rawValue)") }
        }
        return BatchHeader(
            baseOffset: baseOffset, length: length, crc: load(12, UInt32.self), version: version, kind: kind,
            codec: codec, recordCount: count, minTimestamp: minTimestamp, maxTimestamp: maxTimestamp,
            appendTime: load(40, Int64.self), uncompressedLength: uncompressed, removedCount: removed)
    }

    /// CRC32C of a whole batch's bytes from `crcStart` on.
    package static func checksum(_ batch: UnsafeRawBufferPointer) -> UInt32 {
        precondition(batch.count >= size)
        return sensorlog_crc32c(0, batch.baseAddress! + crcStart, batch.count - crcStart)
    }
}

/// CRC32C (Castagnoli) as stored in batch headers.
public enum CRC32CChecksum {
    /// The checksum of `bytes`, continuing from `crc`.
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        sensorlog_crc32c(crc, bytes.baseAddress, bytes.count)
    }

    /// The portable table implementation, for checking the hardware path.
    public static func portableChecksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        sensorlog_crc32c_portable(crc, bytes.baseAddress, bytes.count)
    }

    /// Whether the SSE4.2 instruction is in use on this CPU.
    public static var usesHardware: Bool { sensorlog_crc32c_hardware() != 0 }
}
