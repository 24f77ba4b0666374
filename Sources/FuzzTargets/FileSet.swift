import SensorLogCore

import LogStore

/// A fuzz input that stands for the files of a one-partition data directory: entries of
/// `kind u8, length u24 (little-endian), bytes` (a length past the input's end takes the rest).
///
/// kind % 8: 0 the active segment's `.log`, 1 the closed segment's `.log` (base offset 0), 2 its
/// `.index`, 3 its `.timeindex`, 4 its `.sensors`, 5 `commit-0.journal`, 6 `commit-1.journal`,
/// 7 the active segment's base offset (u64; default 0 without a closed segment, else 1). A later
/// entry of a kind replaces an earlier one. `tools/fuzz`'s seeds are real logs in this form
/// (`FileSet.encode`).
struct FileSet: Equatable {
    var files: [Int: [UInt8]] = [:]
    var activeBase: Int64?

    static let kinds = 8

    init() {}

    init(_ input: UnsafeRawBufferPointer) {
        var at = 0
        while at + 4 <= input.count {
            let kind = Int(input[at]) % Self.kinds
            let length = Int(input[at + 1]) | Int(input[at + 2]) << 8 | Int(input[at + 3]) << 16
            at += 4
            let end = min(input.count, at + length)
            let bytes = Array(input[at..<end])
            at = end
            if kind == 7 {
                var v: UInt64 = 0
                for (i, b) in bytes.prefix(8).enumerated() { v |= UInt64(b) << (8 * i) }
                activeBase = Int64(v & 0x7FFF_FFFF_FFFF_FFFF)
            } else {
                files[kind] = bytes
            }
        }
    }

    func encode() -> [UInt8] {
        var out: [UInt8] = []
        func put(_ kind: Int, _ bytes: [UInt8]) {
            out += [UInt8(kind), UInt8(bytes.count & 0xFF), UInt8(bytes.count >> 8 & 0xFF), UInt8(bytes.count >> 16 & 0xFF)]
            out += bytes
        }
        if let activeBase { put(7, withUnsafeBytes(of: activeBase.littleEndian, Array.init)) }
        for kind in files.keys.sorted() { put(kind, files[kind]!) }
        return out
    }

    /// Sets every batch's length and CRC in the segments, and every journal record's magic, CRC
    /// and its batch's CRC, to what the bytes hold: what lets the fuzzer past the checksums to
    /// the logic behind them.
    mutating func fixChecksums() {
        for kind in [0, 1] {
            guard var bytes = files[kind] else { continue }
            bytes.withUnsafeMutableBytes { raw in
                var at = 0
                while at + BatchHeader.size <= raw.count {
                    let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self)))
                    guard length > BatchHeader.size, at + length <= raw.count else { break }
                    Self.fixBatch(UnsafeMutableRawBufferPointer(rebasing: raw[at..<(at + length)]))
                    at += length
                }
            }
            files[kind] = bytes
        }
        for kind in [5, 6] {
            guard var bytes = files[kind] else { continue }
            bytes.withUnsafeMutableBytes { raw in
                var at = 0
                while at + JournalRecord.headerSize + BatchHeader.size <= raw.count {
                    let length = Int(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: at + 20, as: UInt32.self)))
                    let total = JournalRecord.headerSize + length
                    guard length >= BatchHeader.size, at + total <= raw.count else { break }
                    let batch = UnsafeMutableRawBufferPointer(rebasing: raw[(at + JournalRecord.headerSize)..<(at + total)])
                    batch.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 8, as: UInt32.self)
                    Self.fixBatch(batch)
                    raw.storeBytes(of: JournalRecord.magic.littleEndian, toByteOffset: at, as: UInt32.self)
                    let crc = CRC32CChecksum.checksum(UnsafeRawBufferPointer(rebasing: raw[(at + 8)..<(at + total)]))
                    raw.storeBytes(of: crc.littleEndian, toByteOffset: at + 4, as: UInt32.self)
                    at += total
                }
            }
            files[kind] = bytes
        }
    }

    private static func fixBatch(_ batch: UnsafeMutableRawBufferPointer) {
        let crc = BatchHeader.checksum(UnsafeRawBufferPointer(batch))
        batch.storeBytes(of: crc.littleEndian, toByteOffset: 12, as: UInt32.self)
    }

    /// Writes the files into `dataDirectory` (partition 0 of a one-partition log).
    func write(to dataDirectory: String) {
        let layout = DataLayout(dataDirectory)
        let partition = layout.partition(0)
        let hasClosed = files[1] != nil
        let active = activeBase ?? (hasClosed ? 1 : 0)
        let closed = partition.segment(0)
        if let b = files[1] { Scratch.write(b, to: closed.log) }
        if let b = files[2] { Scratch.write(b, to: closed.offsetIndex) }
        if let b = files[3] { Scratch.write(b, to: closed.timeIndex) }
        if let b = files[4] { Scratch.write(b, to: closed.sensorIndex) }
        // The active segment is the last one: without its bytes it is an empty file.
        if !hasClosed || active > 0 { Scratch.write(files[0] ?? [], to: partition.segment(active).log) }
        for (kind, journal) in zip([5, 6], layout.journals) {
            if let b = files[kind] { Scratch.write(b, to: journal.path) }
        }
    }
}
