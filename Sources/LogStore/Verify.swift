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
        let buffer = GrowableBuffer(capacity: 64 << 10)
        for (i, base) in bases.enumerated() {
            let segment = try view.openSegment(base)
            if base != expected {
                result.problems.append(VerifyProblem(severity: .error, path: segment.paths.display, position: nil,
                    message: "segment starts at offset \(base) but the previous one ends at \(expected)"))
                expected = base
            }
            let isActive = i == bases.count - 1
            let size = try segment.file.size()
            let (starts, cutShort) = try verifyBatches(segment, size: size, isActive: isActive, buffer: buffer, decoder: decoder,
                                                       expected: &expected, into: &result, progress: progress)
            if !isActive {
                // The rest of a segment that is unreadable to its end is judged by the next one.
                if cutShort { expected = bases[i + 1] }
                verifyIndexes(segment, size: size, starts: starts, end: expected, into: &result)
            }
        }
        result.endOffset = expected
        return result
    }

    /// Checks every batch of one segment, decoding each, and goes on past damage to report what
    /// else is wrong. `expected` is the offset the segment must start at, and becomes its end.
    /// - Returns: each batch's position and base offset, to check the index against, and whether
    ///   damage left the rest of the segment unreadable.
    private func verifyBatches(_ segment: Segment, size: Int64, isActive: Bool, buffer: GrowableBuffer, decoder: BatchDecoder,
                               expected: inout Int64, into result: inout PartitionVerification, progress: (Int64) -> Void)
        throws(LogError) -> (starts: [Int64: Int64], cutShort: Bool)
    {
        let display = segment.paths.display
        var batches = try segment.batches(expecting: expected, verifyCRC: true, size: size, buffer: buffer)
        result.bytes += size
        var reported: Int64 = 0
        // The bytes a damaged range skipped count too, so a run ends at the total.
        defer { progress(size - reported) }
        var starts: [Int64: Int64] = [:]
        var batch = DecodedBatch()
        while true {
            if let header = try batches.next() {
                do {
                    try decoder.decode(batches.bytes, header: header, into: &batch)
                } catch {
                    result.problems.append(VerifyProblem(severity: .error, path: display, position: batches.batchPosition,
                                                         message: "batch at offset \(header.baseOffset) does not decode: \(error.message)"))
                }
                starts[batches.batchPosition] = header.baseOffset
                result.batches += 1
                result.records += Int64(header.recordCount)
                expected = header.nextOffset
                progress(Int64(header.length))
                reported += Int64(header.length)
                continue
            }
            let why: String
            switch batches.stop! {
            case .end: return (starts, false)
            case .incomplete(let reason), .invalid(let reason): why = reason
            }
            let position = batches.position
            let later = try batches.validBatchAfterStop()
            // No valid batch after the damage: what an interrupted write leaves (or one in flight).
            if isActive && later == nil {
                result.problems.append(VerifyProblem(severity: .warning, path: display, position: position,
                    message: "\(size - position) bytes of torn tail (\(why)); sensorlogd truncates it when it opens, or a write is in progress"))
                result.truncateActiveAt = (display, position)
                return (starts, false)
            }
            result.problems.append(VerifyProblem(severity: .error, path: display, position: position, message: "corrupt batch: \(why)"))
            if isActive && result.truncateActiveAt == nil { result.truncateActiveAt = (display, position) }
            // The rest of this segment is unreadable; the next one is judged on its own.
            guard let later else { return (starts, true) }
            // Continue after the damage to report what else is wrong (offsets resume there).
            try batches.resume(at: later, expecting: nil)
            expected = batches.expected
        }
    }

    /// Checks that a closed segment's index files point at batch starts.
    private func verifyIndexes(_ segment: Segment, size: Int64, starts: [Int64: Int64], end: Int64,
                               into result: inout PartitionVerification)
    {
        let base = segment.base
        let indexDisplay = segment.paths.offsetIndexDisplay
        if let index = loadIndexFiles(segment.paths, size: size, records: end - base) {
            for e in index.offsets where starts[Int64(e.position)] != base + Int64(e.relativeOffset) {
                result.problems.append(VerifyProblem(severity: .error, path: indexDisplay, position: nil,
                    message: "entry (offset \(base + Int64(e.relativeOffset)), byte \(e.position)) does not point at that batch"))
                break
            }
        } else if FileManager.default.fileExists(atPath: segment.paths.offsetIndex) {
            result.problems.append(VerifyProblem(severity: .error, path: indexDisplay, position: nil,
                                                 message: "index files are malformed or disagree with the segment"))
        } else {
            result.problems.append(VerifyProblem(severity: .warning, path: indexDisplay, position: nil,
                                                 message: "index files missing (sensorlogd rebuilds them when it opens)"))
        }
        verifySensorIndex(segment, size: size, end: end, into: &result)
    }

    /// Checks a closed segment's `.sensors` file against one built from the segment now. A
    /// missing one is no problem: the server writes it in the background, and readers build it.
    /// A bad one is a warning: no reader believes it (each batch it names must carry the CRC it
    /// lists), it only costs them the walk; `--repair` writes it anew.
    private func verifySensorIndex(_ segment: Segment, size: Int64, end: Int64, into result: inout PartitionVerification) {
        let paths = segment.paths
        guard let bytes = SegmentFiles.readWholeFile(paths.sensorIndex) else { return }
        let shape = SensorIndexCache.Shape(size: size, records: end - segment.base)
        let stored = SensorIndex.parse(bytes, segmentSize: size, records: shape.records)
        // A segment too damaged to index is reported for its batches already.
        guard let built = try? SensorIndexCache.build(segment, size: size) else { return }
        if stored.map({ $0.sameEntries(as: built) }) != true {
            result.problems.append(VerifyProblem(severity: .warning, path: paths.sensorIndexDisplay, position: nil,
                message: stored == nil ? "sensor index is malformed or describes another segment" : "sensor index disagrees with the segment's batches"))
        }
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
    public func salvage(partition: Int, segment base: Int64, end: Int64?, report: [VerifyProblem], held lock: DirectoryLock) throws -> String {
        lock.requireHeld(for: dataDirectory)
        let view = views[partition]
        let segment = try view.openSegment(base)
        let (path, display) = (segment.paths.log, segment.paths.display)
        let name = segment.paths.logName
        let temporary = path + ".salvage"
        let outFD = try FileDescriptor.open(temporary, flags: O_RDWR | O_CREAT | O_TRUNC, displayPath: display)
        let out = SharedFile(outFD, displayPath: display)
        let copy = try Self.salvageBatches(segment, base: base, end: end, to: out, limits: view.limits, fileOperations)
        let (size, written, removed) = (copy.size, copy.written, copy.removed)
        // Keep the original, and say why, before replacing it.
        try Self.quarantine(path, name: name, in: layout.quarantine(partition: partition), report: report, removed: removed)
        try fileOperations.rename(temporary, to: path, display: display)
        try fileOperations.syncDirectory(view.directory, display: view.displayDirectory)
        // The old indexes point into the old file. A closed segment gets new ones now; the
        // active segment's live in memory (sensorlogd drops stale files when it opens).
        if end != nil {
            try rebuildIndexFiles(partition: partition, segment: base, held: lock)
        } else {
            try segment.paths.removeIndexes(fileOperations)
        }
        return "\(display): \(removed) unreadable record(s) replaced by removed records, \(size - written) bytes dropped; original in quarantine/"
            + (end != nil ? "; index files rebuilt" : "")
    }

    /// Copies a damaged segment into `quarantine/<partition>/` with a report of what was wrong.
    static func quarantine(_ path: String, name: String, in directory: String, report: [VerifyProblem], removed: Int64) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let kept = directory + "/" + name + "." + String(WallClock.nowNanoseconds())
        try FileManager.default.copyItem(atPath: path, toPath: kept)
        let text = report.map { "\($0.severity.rawValue) \($0.path)\($0.position.map { " at byte \($0)" } ?? ""): \($0.message)" }.joined(separator: "\n")
            + "\nreplaced by a salvaged segment: \(removed) record(s) could not be read and are now removed records; the original is beside this report\n"
        try text.write(toFile: kept + ".report.txt", atomically: true, encoding: .utf8)
    }

    /// What `salvageBatches` wrote.
    struct SalvagedCopy {
        var size: Int64 = 0
        var written: Int64 = 0
        var removed: Int64 = 0
        var firstRemoved: Int64?
        var index = SegmentIndex()
    }

    /// Copies every readable batch of `segment` to `out` and writes a removed-records batch for
    /// each range it cannot read, so the copy holds the same offsets (up to `end` for a closed
    /// segment; a damaged tail of the active one is cut), and syncs it. Indexes the copy.
    static func salvageBatches(_ segment: Segment, base: Int64, end: Int64?, to out: SharedFile, limits: Limits,
                               _ ops: FileOperations) throws -> SalvagedCopy {
        let display = segment.paths.display
        var batches = try segment.batches(expecting: base, verifyCRC: true, buffer: GrowableBuffer(capacity: 64 << 10))
        let encoder = BatchEncoder()
        var copy = SalvagedCopy(size: batches.scanner.size)
        var expected = base
        var newest = Int64.min
        func append(_ bytes: UnsafeRawBufferPointer, offsets: Int64, maxTimestamp: Int64) throws {
            try writeAll(ops, fd: out.fd, bytes, at: copy.written, displayPath: display)
            copy.index.add(relative: UInt32(expected - base), position: copy.written, length: bytes.count, maxTimestamp: maxTimestamp,
                           interval: limits.indexIntervalBytes)
            copy.written += Int64(bytes.count)
            expected += offsets
        }
        func writeRemoved(upTo next: Int64) throws {
            guard next > expected else { return }
            let bytes = try encoder.encodeRemoved(count: Int(next - expected), appendTime: WallClock.nowNanoseconds(), maxBatchBytes: limits.maxBatchBytes)
            UnsafeMutableRawBufferPointer(mutating: bytes).storeBytes(of: expected.littleEndian, toByteOffset: 0, as: Int64.self)
            copy.removed += next - expected
            copy.firstRemoved = copy.firstRemoved ?? expected
            try append(bytes, offsets: next - expected, maxTimestamp: newest)
        }
        while true {
            if let header = try batches.next() {
                newest = max(newest, header.maxTimestamp)
                try append(UnsafeRawBufferPointer(rebasing: batches.bytes[..<header.length]), offsets: header.nextOffset - expected,
                           maxTimestamp: header.maxTimestamp)
                continue
            }
            guard batches.stop != .end else { break }
            guard let later = try batches.validBatchAfterStop() else {
                if let end { try writeRemoved(upTo: end) }  // a closed segment must still reach its end
                break
            }
            try batches.resume(at: later, expecting: nil)
            try writeRemoved(upTo: batches.expected)
        }
        if let end, expected != end { throw LogError(.invalidLog, "salvaged segment ends at \(expected), expected \(end)", path: display) }
        try ops.fullSync(out.fd, display: display)
        copy.index.seal()
        return copy
    }

    /// Writes a closed segment's index files anew from its batches, as sensorlogd does when it
    /// opens a segment without valid ones.
    public func rebuildIndexFiles(partition: Int, segment base: Int64, held lock: DirectoryLock) throws(LogError) {
        lock.requireHeld(for: dataDirectory)
        let view = views[partition]
        // Gone first: the check that keeps valid files looks only at their tail.
        try view.segmentPaths(base).removeIndexes(fileOperations)
        _ = try PartitionLoader.inspectClosedSegment(PartitionPaths(directory: view.directory, display: view.displayDirectory), base: base,
                                                     limits: view.limits, fileOperations)
    }

    /// Writes a closed segment's `.sensors` file anew from its batches.
    public func rebuildSensorIndex(partition: Int, segment base: Int64, end: Int64, held lock: DirectoryLock) throws(LogError) {
        lock.requireHeld(for: dataDirectory)
        let view = views[partition]
        let segment = try view.openSegment(base)
        let shape = SensorIndexCache.Shape(size: try segment.file.size(), records: end - base)
        let paths = segment.paths
        try fileOperations.remove(paths.sensorIndex, display: paths.sensorIndexDisplay)
        guard let index = try SensorIndexCache.build(segment, size: shape.size) else {
            throw LogError(.corruptBatch, "a batch does not decode: the segment is salvaged first", path: paths.display)
        }
        try Segment.writeSensorIndex(index, shape: shape, paths: paths, directory: view.directory, fileOperations)
    }

    /// The bytes of every file in `partition`'s directory (segments and their indexes), as they are now.
    public func partitionBytes(partition: Int) -> Int64 {
        let directory = views[partition].directory
        return ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).reduce(0) { $0 + Compactor.fileSize(directory + "/" + $1) }
    }

    /// The bytes of `partition`'s segment files, as they are now.
    public func segmentBytes(partition: Int) throws(LogError) -> Int64 {
        let view = views[partition]
        return try view.segmentBases().reduce(0) { $0 + Compactor.fileSize(view.segmentPaths($1).log) }
    }
}