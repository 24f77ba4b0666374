#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Names and listing of segment files: `<20-digit base offset>.log|.index|.timeindex|.sensors`.
package enum SegmentFiles {
    static let logSuffix = ".log"
    static let offsetIndexSuffix = ".index"
    static let timeIndexSuffix = ".timeindex"
    static let sensorIndexSuffix = ".sensors"

    static func name(_ baseOffset: Int64) -> String {
        let digits = String(baseOffset)
        return String(repeating: "0", count: max(0, 20 - digits.count)) + digits
    }

    /// Base offsets of the `.log` files in `directory`, ascending.
    package static func list(_ directory: String, displayPath: String) throws(LogError) -> [Int64] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory)
        } catch {
            throw LogError(.io, "cannot list partition directory", path: displayPath)
        }
        var bases: [Int64] = []
        for name in names where name.hasSuffix(logSuffix) {
            let stem = name.dropLast(logSuffix.count)
            guard stem.count == 20, stem.allSatisfy(\.isASCII), let base = Int64(stem), base >= 0 else { continue }
            bases.append(base)
        }
        return bases.sorted()
    }

    /// The whole regular file at `path`; nil when it cannot be opened or read. Not
    /// `FileManager.contents(atPath:)`: on Linux that leaks 4 KiB for each empty file it reads
    /// (swift-foundation's `readBytesFromFile` allocates a chunk when `st_size` is 0 and
    /// `readDataFromFile` returns `Data()` without freeing it; the address sanitizer found it,
    /// docs/testing.md "Sanitizers").
    package static func readWholeFile(_ path: String) -> [UInt8]? {
        let fd = Glibc.open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { _ = Glibc.close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return nil }
        // Read to the end, not to st_size: /proc files say 0 and have contents.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: min(max(Int(st.st_size) + 1, 4096), 1 << 20))
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { return nil }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
        }
    }

    /// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, directory fsync.
    /// On failure the temporary file is removed (best effort: recovery removes `*.tmp` too).
    static func writeAtomically(_ bytes: [UInt8], to path: String, directory: String, displayPath: String,
                                _ ops: FileOperations = .system) throws(LogError) {
        let temporary = path + ".tmp"
        do throws(LogError) {
            let file = SharedFile(try FileDescriptor.open(temporary, flags: O_WRONLY | O_CREAT | O_TRUNC, displayPath: displayPath),
                                  displayPath: displayPath)
            try writeAll(ops, fd: file.fd, bytes, at: 0, displayPath: displayPath)
            try ops.fullSync(file.fd, display: displayPath)
            try ops.rename(temporary, to: path, display: displayPath)
        } catch {
            _ = ops.unlink(temporary)
            throw error
        }
        try ops.syncDirectory(directory, display: displayPath)
    }
}

/// What is at a position of a segment file.
enum BatchProbe {
    /// A complete batch that passed every check.
    case batch(BatchHeader)
    /// The position is exactly the end of the file.
    case end
    /// The file ends inside the batch: a write that did not finish.
    case incomplete(String)
    /// Bytes are there but fail a check (CRC, header field, offset).
    case invalid(String)
}

/// Sequential and random access to the batches of one segment file.
struct SegmentScanner {
    let file: SharedFile
    let size: Int64
    let buffer: GrowableBuffer
    let maxBatchBytes: Int

    /// Checks the batch at `position`.
    /// - Parameters:
    ///   - expectedOffset: the base offset the batch must have, when known.
    ///   - verifyCRC: read the whole batch and check its CRC (otherwise only the header).
    /// - Returns: the probe; on `.batch` with `verifyCRC`, `buffer` holds the whole batch.
    func probe(at position: Int64, expectedOffset: Int64?, verifyCRC: Bool) throws(LogError) -> BatchProbe {
        let remaining = size - position
        if remaining == 0 { return .end }
        if remaining < Int64(BatchHeader.size) { return .incomplete("\(remaining) bytes, less than a batch header") }
        buffer.removeAll()
        buffer.reserve(BatchHeader.size)
        let n = try file.read(into: buffer.base, count: BatchHeader.size, at: position)
        guard n == BatchHeader.size else { return .incomplete("file shrank while reading") }
        buffer.count = n
        let header: BatchHeader
        do {
            header = try BatchHeader.parse(buffer.bytes, maxBatchBytes: maxBatchBytes)
        } catch {
            // A length beyond the file with an otherwise plausible header is a torn write.
            return .invalid(error.message)
        }
        if Int64(header.length) > remaining {
            return .incomplete("batch of \(header.length) bytes, only \(remaining) in the file")
        }
        if let expectedOffset, header.baseOffset != expectedOffset {
            return .invalid("batch base offset \(header.baseOffset), expected \(expectedOffset)")
        }
        if verifyCRC {
            buffer.reserve(header.length - BatchHeader.size)
            let body = try file.read(into: buffer.base + BatchHeader.size, count: header.length - BatchHeader.size,
                                     at: position + Int64(BatchHeader.size))
            guard body == header.length - BatchHeader.size else { return .incomplete("file shrank while reading") }
            buffer.count = header.length
            let crc = BatchHeader.checksum(buffer.bytes)
            if crc != header.crc {
                return .invalid(String(format: "CRC32C mismatch: stored %08x, computed %08x", header.crc, crc))
            }
        }
        return .batch(header)
    }

    /// Looks for a valid batch (CRC checked) starting anywhere after `position`, with a base offset
    /// of at least `minOffset`: evidence that damage at `position` is not a torn tail.
    /// - Returns: the position of the first such batch.
    func findValidBatch(after position: Int64, minOffset: Int64) throws(LogError) -> Int64? {
        let chunk = 1 << 20
        let window = GrowableBuffer(capacity: chunk + BatchHeader.size)
        let probeBuffer = GrowableBuffer(capacity: 4096)
        let prober = SegmentScanner(file: file, size: size, buffer: probeBuffer, maxBatchBytes: maxBatchBytes)
        var start = position + 1
        while start + Int64(BatchHeader.size) <= size {
            let want = Int(min(Int64(chunk + BatchHeader.size), size - start))
            window.removeAll()
            window.reserve(want)
            let got = try file.read(into: window.base, count: want, at: start)
            window.count = got
            let raw = window.bytes
            var i = 0
            while i + BatchHeader.size <= got {
                // Cheap filters before a CRC: version byte, known kind and codec, zero reserved byte.
                if raw[i + 16] == BatchHeader.formatVersion, RecordKind(rawValue: raw[i + 17]) != nil, BatchCodec(rawValue: raw[i + 18]) != nil, raw[i + 19] == 0,
                   let header = try? BatchHeader.parse(UnsafeRawBufferPointer(rebasing: raw[i..<(i + BatchHeader.size)]), maxBatchBytes: maxBatchBytes),
                   header.baseOffset >= minOffset
                {
                    if case .batch = try prober.probe(at: start + Int64(i), expectedOffset: nil, verifyCRC: true) {
                        return start + Int64(i)
                    }
                }
                i += 1
            }
            start += Int64(max(1, got - BatchHeader.size + 1))
        }
        return nil
    }
}
