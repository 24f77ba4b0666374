import CRC32C
import SensorLogCore

/// A batch read back from the commit journal.
struct JournalBatch {
    package let bytes: [UInt8]
    package let baseOffset: Int64
    package let nextOffset: Int64
    package let maxTimestamp: Int64
    package let appendTime: Int64
}

extension CommitJournal {
    /// Reads both files' records up to the first invalid one in each (an unsynced tail), and
    /// returns each partition's batches in offset order.
    package func records(partitions: Int, maxBatchBytes: Int) throws(LogError) -> [Int: [JournalBatch]] {
        var result: [Int: [JournalBatch]] = [:]
        for file in files {
            let size = try file.size()
            guard size > 0 else { continue }
            var bytes = [UInt8](repeating: 0, count: Int(size))
            var readResult: Result<Int, LogError> = .success(0)
            bytes.withUnsafeMutableBytes { raw in
                do throws(LogError) { readResult = .success(try file.read(into: raw.baseAddress!, count: raw.count, at: 0)) } catch { readResult = .failure(error) }
            }
            let n = try readResult.get()
            bytes.withUnsafeBytes { raw in
                var at = 0
                var lap: UInt64?
                while let record = JournalRecord.parse(UnsafeRawBufferPointer(rebasing: raw[at..<n]), maxBatchBytes: maxBatchBytes),
                      lap == nil || lap == record.lap, record.partition < partitions {
                    lap = record.lap
                    let length = record.batch.count
                    let batch = record.batch
                    let partition = record.partition
                    guard let header = try? BatchHeader.parse(batch, maxBatchBytes: maxBatchBytes), header.length == length else { break }
                    result[partition, default: []].append(JournalBatch(
                        bytes: Array(batch), baseOffset: header.baseOffset, nextOffset: header.nextOffset,
                        maxTimestamp: header.maxTimestamp, appendTime: header.appendTime))
                    at += Self.headerSize + length
                }
            }
        }
        for key in result.keys { result[key]!.sort { $0.baseOffset < $1.baseOffset } }
        return result
    }
}

/// One commit-journal record (little-endian): u32 magic, u32 CRC32C of the bytes after it, u64
/// lap, u32 partition, u32 batch length, then the batch exactly as written to the segment.
package struct JournalRecord {
    package static let magic: UInt32 = 0x4C4A_4C53  // "SLJL"
    package static let headerSize = 24

    package let lap: UInt64
    package let partition: Int
    /// The batch, within the buffer `parse` was given.
    package let batch: UnsafeRawBufferPointer

    /// Writes the record of `batch` at the start of `raw` (which holds `headerSize + batch.count` bytes).
    package static func encode(_ batch: UnsafeRawBufferPointer, lap: UInt64, partition: Int, into raw: UnsafeMutableRawBufferPointer) {
        let total = headerSize + batch.count
        raw.storeBytes(of: magic.littleEndian, toByteOffset: 0, as: UInt32.self)
        raw.storeBytes(of: lap.littleEndian, toByteOffset: 8, as: UInt64.self)
        raw.storeBytes(of: UInt32(partition).littleEndian, toByteOffset: 16, as: UInt32.self)
        raw.storeBytes(of: UInt32(batch.count).littleEndian, toByteOffset: 20, as: UInt32.self)
        UnsafeMutableRawBufferPointer(rebasing: raw[headerSize..<total]).copyMemory(from: batch)
        let crc = sensorlog_crc32c(0, raw.baseAddress! + 8, total - 8)
        raw.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
    }

    /// The record at the start of `raw`, or nil where a file's records end: no magic, a length
    /// out of bounds or past the bytes there, or a CRC that does not match.
    package static func parse(_ raw: UnsafeRawBufferPointer, maxBatchBytes: Int) -> JournalRecord? {
        guard raw.count >= headerSize else { return nil }
        func load(_ offset: Int) -> UInt32 { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        let length = Int(load(20))
        guard load(0) == magic, length >= BatchHeader.size, length <= maxBatchBytes, headerSize + length <= raw.count,
              sensorlog_crc32c(0, raw.baseAddress! + 8, headerSize - 8 + length) == load(4)
        else { return nil }
        return JournalRecord(lap: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)), partition: Int(load(16)),
                             batch: UnsafeRawBufferPointer(rebasing: raw[headerSize..<(headerSize + length)]))
    }
}
