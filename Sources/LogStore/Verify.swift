#if canImport(Glibc)
import Glibc
#endif
import Foundation
import SensorLogCore

/// One problem `verify` found, named by file (relative to the data directory) and byte.
public struct VerifyProblem: Sendable, Equatable {
    public enum Severity: String, Sendable { case error, warning }
    public var severity: Severity
    public var path: String
    public var position: Int64?
    public var message: String

    public init(severity: Severity, path: String, position: Int64?, message: String) {
        self.severity = severity
        self.path = path
        self.position = position
        self.message = message
    }
}

/// What `verify` read and found in one partition.
public struct PartitionVerification: Sendable {
    public var partition: Int
    public var segments = 0
    public var batches = 0
    public var records: Int64 = 0
    public var bytes: Int64 = 0
    public var startOffset: Int64 = 0
    public var endOffset: Int64 = 0
    public var problems: [VerifyProblem] = []
    /// Where a repair would cut the active segment (a torn or corrupt tail), if anywhere.
    public var truncateActiveAt: (path: String, position: Int64)?
}

extension LogDirectory {
    /// Checks every batch of `partition`: CRC, header fields, offsets contiguous within and across
    /// segments, every column decodes and timestamps lie within the batch's bounds, and the index
    /// files of closed segments point at batch starts. Reads only; safe while sensorlogd runs.
    /// - Parameter progress: called with the bytes read since the last call; over a run they add
    ///   up to `segmentBytes(partition:)`.
    public func verify(partition: Int, progress: (Int64) -> Void = { _ in }) throws(LogError) -> PartitionVerification {
        let view = views[partition]
        var result = PartitionVerification(partition: partition)
        let bases = try view.segmentBases()
        result.segments = bases.count
        result.startOffset = bases.first ?? 0
        var expected = bases.first ?? 0
        let decoder = BatchDecoder()
        var batch = DecodedBatch()
        let buffer = GrowableBuffer(capacity: 64 << 10)
        for (i, base) in bases.enumerated() {
            let isActive = i == bases.count - 1
            let name = SegmentFiles.name(base) + SegmentFiles.logSuffix
            let display = view.displayDirectory + "/" + name
            if base != expected {
                result.problems.append(VerifyProblem(severity: .error, path: display, position: nil,
                    message: "segment starts at offset \(base) but the previous one ends at \(expected)"))
                expected = base
            }
            let fd = try FileDescriptor.open(view.directory + "/" + name, flags: O_RDONLY, displayPath: display)
            let file = SharedFile(fd, displayPath: display)
            let size = try file.size()
            result.bytes += size
            let scanner = SegmentScanner(file: file, size: size, buffer: buffer, maxBatchBytes: view.limits.maxBatchBytes)
            var position: Int64 = 0
            var reported: Int64 = 0
            // The bytes a damaged range skipped count too, so a run ends at the total.
            defer { progress(size - reported) }
            var starts: [Int64: Int64] = [:]  // position -> base offset, to check the index
            scan: while true {
                let probe = try scanner.probe(at: position, expectedOffset: expected, verifyCRC: true)
                switch probe {
                case .batch(let header):
                    do {
                        try decoder.decode(buffer.bytes, header: header, into: &batch)
                    } catch {
                        result.problems.append(VerifyProblem(severity: .error, path: display, position: position,
                                                             message: "batch at offset \(header.baseOffset) does not decode: \(error.message)"))
                    }
                    starts[position] = header.baseOffset
                    result.batches += 1
                    result.records += Int64(header.recordCount)
                    position += Int64(header.length)
                    expected = header.nextOffset
                    progress(Int64(header.length))
                    reported += Int64(header.length)
                case .end:
                    break scan
                case .incomplete(let why), .invalid(let why):
                    let later = try scanner.findValidBatch(after: position, minOffset: expected)
                    // No valid batch after the damage: what an interrupted write leaves (or one in flight).
                    if isActive && later == nil {
                        result.problems.append(VerifyProblem(severity: .warning, path: display, position: position,
                            message: "\(size - position) bytes of torn tail (\(why)); sensorlogd truncates it when it opens, or a write is in progress"))
                        result.truncateActiveAt = (display, position)
                        break scan
                    }
                    result.problems.append(VerifyProblem(severity: .error, path: display, position: position, message: "corrupt batch: \(why)"))
                    if isActive && result.truncateActiveAt == nil { result.truncateActiveAt = (display, position) }
                    guard let later else {
                        // The rest of this segment is unreadable; the next one is judged on its own.
                        if !isActive { expected = bases[i + 1] }
                        break scan
                    }
                    position = later
                    // Continue after the damage to report what else is wrong (offsets resume there).
                    if case .batch(let h) = try scanner.probe(at: later, expectedOffset: nil, verifyCRC: false) { expected = h.baseOffset }
                }
            }
            if !isActive {
                let stem = view.directory + "/" + SegmentFiles.name(base)
                let indexDisplay = view.displayDirectory + "/" + SegmentFiles.name(base) + SegmentFiles.offsetIndexSuffix
                if let index = loadIndexFiles(directory: view.directory, base: base, size: size, records: expected - base) {
                    for e in index.offsets where starts[Int64(e.position)] != base + Int64(e.relativeOffset) {
                        result.problems.append(VerifyProblem(severity: .error, path: indexDisplay, position: nil,
                            message: "entry (offset \(base + Int64(e.relativeOffset)), byte \(e.position)) does not point at that batch"))
                        break
                    }
                } else if FileManager.default.fileExists(atPath: stem + SegmentFiles.offsetIndexSuffix) {
                    result.problems.append(VerifyProblem(severity: .error, path: indexDisplay, position: nil,
                                                         message: "index files are malformed or disagree with the segment"))
                } else {
                    result.problems.append(VerifyProblem(severity: .warning, path: indexDisplay, position: nil,
                                                         message: "index files missing (sensorlogd rebuilds them when it opens)"))
                }
            }
        }
        result.endOffset = expected
        return result
    }
}

extension LogDirectory {
    /// Repairs one damaged segment without losing an offset: the original goes to
    /// `quarantine/<partition>/` with a report, and in its place a segment is written that keeps
    /// every valid batch and stands a removed-records batch in for each damaged range. A damaged
    /// range at the end of the active segment (a torn tail) is cut instead.
    /// - Parameters:
    ///   - end: the next segment's base offset, or nil for the active segment.
    /// - Returns: what was done, for the operator.
    public func salvage(partition: Int, segment base: Int64, end: Int64?, report: [VerifyProblem]) throws -> String {
        let view = views[partition]
        let name = SegmentFiles.name(base) + SegmentFiles.logSuffix
        let path = view.directory + "/" + name
        let display = view.displayDirectory + "/" + name
        let fd = try FileDescriptor.open(path, flags: O_RDONLY, displayPath: display)
        let file = SharedFile(fd, displayPath: display)
        let size = try file.size()
        let scanner = SegmentScanner(file: file, size: size, buffer: GrowableBuffer(capacity: 64 << 10), maxBatchBytes: view.limits.maxBatchBytes)
        let temporary = path + ".salvage"
        let outFD = try FileDescriptor.open(temporary, flags: O_RDWR | O_CREAT | O_TRUNC, displayPath: display)
        let out = SharedFile(outFD, displayPath: display)
        let encoder = BatchEncoder()
        var written: Int64 = 0
        var position: Int64 = 0
        var expected = base
        var removed: Int64 = 0
        func writeRemoved(upTo next: Int64) throws {
            guard next > expected else { return }
            let bytes = try encoder.encodeRemoved(count: Int(next - expected), appendTime: WallClock.nowNanoseconds(), maxBatchBytes: view.limits.maxBatchBytes)
            UnsafeMutableRawBufferPointer(mutating: bytes).storeBytes(of: expected.littleEndian, toByteOffset: 0, as: Int64.self)
            try writeAll(.system, fd: out.fd, bytes, at: written, displayPath: display)
            written += Int64(bytes.count)
            removed += next - expected
            expected = next
        }
        loop: while true {
            switch try scanner.probe(at: position, expectedOffset: expected, verifyCRC: true) {
            case .batch(let header):
                let bytes = UnsafeRawBufferPointer(start: scanner.buffer.base, count: header.length)
                try writeAll(.system, fd: out.fd, bytes, at: written, displayPath: display)
                written += Int64(header.length)
                position += Int64(header.length)
                expected = header.nextOffset
            case .end:
                break loop
            case .incomplete, .invalid:
                guard let later = try scanner.findValidBatch(after: position, minOffset: expected) else {
                    if let end { try writeRemoved(upTo: end) }  // a closed segment must still reach its end
                    break loop
                }
                guard case .batch(let next) = try scanner.probe(at: later, expectedOffset: nil, verifyCRC: true) else { break loop }
                try writeRemoved(upTo: next.baseOffset)
                position = later
            }
        }
        if let end, expected != end { throw LogError(.invalidLog, "salvaged segment ends at \(expected), expected \(end)", path: display) }
        guard fsync(out.fd) == 0 else { throw LogError.system("fsync failed", errno: errno, path: display) }
        // Keep the original, and say why, before replacing it.
        let quarantine = dataDirectory + "/quarantine/" + view.displayDirectory.replacingOccurrences(of: "log/", with: "")
        try FileManager.default.createDirectory(atPath: quarantine, withIntermediateDirectories: true)
        let stamp = String(WallClock.nowNanoseconds())
        let kept = quarantine + "/" + name + "." + stamp
        try FileManager.default.copyItem(atPath: path, toPath: kept)
        let text = report.map { "\($0.severity.rawValue) \($0.path)\($0.position.map { " at byte \($0)" } ?? ""): \($0.message)" }.joined(separator: "\n")
            + "\nreplaced by a salvaged segment: \(removed) record(s) could not be read and are now removed records; the original is beside this report\n"
        try text.write(toFile: kept + ".report.txt", atomically: true, encoding: .utf8)
        guard rename(temporary, path) == 0 else { throw LogError.system("cannot replace the segment", errno: errno, path: display) }
        syncDirectory(view.directory)
        // The old indexes point into the old file. A closed segment gets new ones now; the
        // active segment's live in memory (sensorlogd drops stale files when it opens).
        if end != nil {
            try rebuildIndexFiles(partition: partition, segment: base)
        } else {
            let stem = view.directory + "/" + SegmentFiles.name(base)
            unlink(stem + SegmentFiles.offsetIndexSuffix)
            unlink(stem + SegmentFiles.timeIndexSuffix)
        }
        return "\(display): \(removed) unreadable record(s) replaced by removed records, \(size - written) bytes dropped; original in quarantine/"
            + (end != nil ? "; index files rebuilt" : "")
    }

    /// Writes a closed segment's index files anew from its batches, as sensorlogd does when it
    /// opens a segment without valid ones.
    public func rebuildIndexFiles(partition: Int, segment base: Int64) throws(LogError) {
        let view = views[partition]
        let stem = view.directory + "/" + SegmentFiles.name(base)
        // Gone first: the check that keeps valid files looks only at their tail.
        unlink(stem + SegmentFiles.offsetIndexSuffix)
        unlink(stem + SegmentFiles.timeIndexSuffix)
        _ = try Partition.inspectClosedSegment(base: base, directory: view.directory, displayDirectory: view.displayDirectory, limits: view.limits)
    }

    /// The bytes of `partition`'s segment files, as they are now.
    public func segmentBytes(partition: Int) throws(LogError) -> Int64 {
        let view = views[partition]
        return try view.segmentBases().reduce(0) { $0 + Compactor.fileSize(view.directory + "/" + SegmentFiles.name($1) + SegmentFiles.logSuffix) }
    }
}
