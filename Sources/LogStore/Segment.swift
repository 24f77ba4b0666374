#if canImport(Glibc)
import Glibc
#endif
import SensorLogCore

/// Where one segment's files are: `<20-digit base offset>.log`, `.index` and `.timeindex` in its
/// partition's directory. The only place a segment's file names are put together.
package struct SegmentPaths: Sendable {
    package let base: Int64
    /// The files' common path, without suffix.
    package let stem: String
    /// The common path as messages show it (relative to the data directory).
    package let displayStem: String

    package init(directory: String, displayDirectory: String, base: Int64) {
        self.base = base
        let name = SegmentFiles.name(base)
        stem = directory + "/" + name
        displayStem = displayDirectory + "/" + name
    }

    package var log: String { stem + SegmentFiles.logSuffix }
    package var offsetIndex: String { stem + SegmentFiles.offsetIndexSuffix }
    package var timeIndex: String { stem + SegmentFiles.timeIndexSuffix }
    package var sensorIndex: String { stem + SegmentFiles.sensorIndexSuffix }
    /// Every file of the segment, the log first.
    package var files: [String] { [log, offsetIndex, timeIndex, sensorIndex] }
    /// Bytes of the segment's files on disk, its indexes included (what retention counts).
    package var bytesOnDisk: Int64 { files.reduce(Int64(0)) { $0 + Compactor.fileSize($1) } }
    /// The `.log` path as messages show it (relative to the data directory).
    package var display: String { displayStem + SegmentFiles.logSuffix }
    package var offsetIndexDisplay: String { displayStem + SegmentFiles.offsetIndexSuffix }
    package var timeIndexDisplay: String { displayStem + SegmentFiles.timeIndexSuffix }
    package var sensorIndexDisplay: String { displayStem + SegmentFiles.sensorIndexSuffix }
    /// The `.log` file's name within the partition directory.
    package var logName: String { SegmentFiles.name(base) + SegmentFiles.logSuffix }

    /// Removes the index pair (a missing file is fine: that is the goal).
    func removeIndexes(_ ops: FileOperations) throws(LogError) {
        try ops.remove(offsetIndex, display: offsetIndexDisplay)
        try ops.remove(timeIndex, display: timeIndexDisplay)
        try ops.remove(sensorIndex, display: sensorIndexDisplay)
    }

    /// Removes every file of the segment.
    func removeAll(_ ops: FileOperations) throws(LogError) {
        try ops.remove(log, display: display)
        try removeIndexes(ops)
    }

    /// Whether `path` (as messages show it) names one of the segments' `.log` or `.index` files.
    static func isLogDisplay(_ path: String) -> Bool { path.hasSuffix(SegmentFiles.logSuffix) }
    static func isOffsetIndexDisplay(_ path: String) -> Bool { path.hasSuffix(SegmentFiles.offsetIndexSuffix) }
    /// Whether `path` (as messages show it) names an index file of either kind.
    static func isIndexDisplay(_ path: String) -> Bool { isOffsetIndexDisplay(path) || path.hasSuffix(SegmentFiles.sensorIndexSuffix) }
}

extension PartitionView {
    var paths: PartitionPaths { PartitionPaths(directory: directory, display: displayDirectory) }

    func segmentPaths(_ base: Int64) -> SegmentPaths {
        SegmentPaths(directory: directory, displayDirectory: displayDirectory, base: base)
    }

    /// Opens segment `base` for reading.
    func openSegment(_ base: Int64) throws(LogError) -> Segment {
        try Segment.open(segmentPaths(base), maxBatchBytes: limits.maxBatchBytes)
    }
}

/// One open segment file, as Kafka's `LogSegment`: the batches in it are walked only through
/// `batches(from:expecting:verifyCRC:)`, and its index pair is written only by `writeIndexes`.
struct Segment {
    let paths: SegmentPaths
    let file: SharedFile
    let maxBatchBytes: Int

    var base: Int64 { paths.base }

    static func open(_ paths: SegmentPaths, writable: Bool = false, maxBatchBytes: Int) throws(LogError) -> Segment {
        let fd = try FileDescriptor.open(paths.log, flags: writable ? O_RDWR : O_RDONLY, displayPath: paths.display)
        return Segment(paths: paths, file: SharedFile(fd, displayPath: paths.display), maxBatchBytes: maxBatchBytes)
    }

    /// Creates (or empties) the segment's log file for appending.
    static func create(_ paths: SegmentPaths, maxBatchBytes: Int) throws(LogError) -> Segment {
        let fd = try FileDescriptor.open(paths.log, flags: O_RDWR | O_CREAT | O_TRUNC, displayPath: paths.display)
        return Segment(paths: paths, file: SharedFile(fd, displayPath: paths.display), maxBatchBytes: maxBatchBytes)
    }

    /// A walk over the batches from byte `position`.
    /// - Parameters:
    ///   - offset: the base offset the first batch must have (each later one must continue it);
    ///     nil checks no offsets.
    ///   - verifyCRC: read each whole batch and check its CRC (the cursor's `bytes` then hold it).
    ///   - size: where the file ends for this walk (default: its size now).
    ///   - buffer: where batches are read (pass one to reuse it across walks).
    func batches(from position: Int64 = 0, expecting offset: Int64?, verifyCRC: Bool = false, size: Int64? = nil,
                 buffer: GrowableBuffer = GrowableBuffer(capacity: 4096)) throws(LogError) -> SegmentCursor
    {
        let end: Int64
        if let size { end = size } else { end = try file.size() }
        let scanner = SegmentScanner(file: file, size: end, buffer: buffer, maxBatchBytes: maxBatchBytes)
        return SegmentCursor(scanner: scanner, verifyCRC: verifyCRC, position: position, expected: offset)
    }

    /// Writes a closed segment's `.sensors` file atomically (the one writer of it).
    /// - Returns: its size in bytes.
    @discardableResult
    static func writeSensorIndex(_ index: SensorIndex, shape: SensorIndexCache.Shape, paths: SegmentPaths, directory: String,
                                 _ ops: FileOperations) throws(LogError) -> Int {
        let bytes = index.fileBytes(segmentSize: shape.size, records: shape.records)
        try SegmentFiles.writeAtomically(bytes, to: paths.sensorIndex, directory: directory, displayPath: paths.sensorIndexDisplay, ops)
        return bytes.count
    }

    /// Writes the segment's index pair, each file atomically; `suffix` names pending files (a
    /// compaction's, renamed into place by its manifest).
    static func writeIndexes(_ index: SegmentIndex, paths: SegmentPaths, directory: String, suffix: String = "",
                             _ ops: FileOperations) throws(LogError) {
        try SegmentFiles.writeAtomically(index.offsetFileBytes(), to: paths.offsetIndex + suffix, directory: directory,
                                         displayPath: paths.offsetIndexDisplay, ops)
        try SegmentFiles.writeAtomically(index.timeFileBytes(), to: paths.timeIndex + suffix, directory: directory,
                                         displayPath: paths.timeIndexDisplay, ops)
    }
}

/// A walk over a segment's batches. Each `next()` checks one batch (its header, its base offset
/// when the walk expects one, and with `verifyCRC` its CRC) and moves past it. The walk ends at
/// the end of the file, at a batch the file cuts short, or at one that fails a check: `stop`
/// says which, and `position` is where that batch starts.
struct SegmentCursor {
    enum Stop: Equatable {
        case end
        /// The file ends inside the batch: a write that did not finish.
        case incomplete(String)
        /// Bytes are there but fail a check (CRC, header field, offset).
        case invalid(String)
    }

    let scanner: SegmentScanner
    let verifyCRC: Bool
    private let checksOffsets: Bool
    /// Where the next batch starts.
    private(set) var position: Int64
    /// The base offset the next batch must have (when the walk checks offsets, or after a batch).
    private(set) var expected: Int64
    private(set) var stop: Stop?
    /// Where the batch `next()` last returned starts.
    private(set) var batchPosition: Int64 = 0

    init(scanner: SegmentScanner, verifyCRC: Bool, position: Int64, expected: Int64?) {
        self.scanner = scanner
        self.verifyCRC = verifyCRC
        self.position = position
        self.checksOffsets = expected != nil
        self.expected = expected ?? 0
    }

    /// The batch `next()` last returned: the header only, or the whole batch with `verifyCRC`.
    var bytes: UnsafeRawBufferPointer { scanner.buffer.bytes }

    /// The next batch's header, or nil when the walk stopped (see `stop`).
    mutating func next() throws(LogError) -> BatchHeader? {
        guard stop == nil else { return nil }
        switch try scanner.probe(at: position, expectedOffset: checksOffsets ? expected : nil, verifyCRC: verifyCRC) {
        case .batch(let header):
            batchPosition = position
            position += Int64(header.length)
            expected = header.nextOffset
            return header
        case .end: stop = .end
        case .incomplete(let why): stop = .incomplete(why)
        case .invalid(let why): stop = .invalid(why)
        }
        return nil
    }

    /// Goes on from byte `position` (past damage), expecting a batch at offset `offset` (or any
    /// offset when nil, which then only the batches after it must continue).
    mutating func resume(at position: Int64, expecting offset: Int64?) throws(LogError) {
        self.position = position
        stop = nil
        if let offset {
            expected = offset
        } else if case .batch(let header) = try scanner.probe(at: position, expectedOffset: nil, verifyCRC: false) {
            expected = header.baseOffset
        }
    }

    /// The position of a valid batch (CRC and all) after where the walk stopped, with a base
    /// offset of at least the one expected: evidence that the damage is not a torn tail.
    func validBatchAfterStop() throws(LogError) -> Int64? {
        try scanner.findValidBatch(after: position, minOffset: expected)
    }
}

/// The segment being appended to: its file, where it ends, and the sparse index it keeps in
/// memory until it is sealed (written beside it at a roll).
final class ActiveSegment {
    let segment: Segment
    private(set) var size: Int64
    private(set) var nextOffset: Int64
    private(set) var index: SegmentIndex
    /// Append time of its first batch; the age roll counts from here.
    private(set) var firstAppendTime: Int64?

    var baseOffset: Int64 { segment.base }
    var file: SharedFile { segment.file }

    init(segment: Segment, size: Int64, nextOffset: Int64, index: SegmentIndex, firstAppendTime: Int64?) {
        self.segment = segment
        self.size = size
        self.nextOffset = nextOffset
        self.index = index
        self.firstAppendTime = firstAppendTime
    }

    /// Writes `batch` (its base offset already `nextOffset`) at the end of the file. The file
    /// may hold it before `commit` is called; only `commit` makes it part of the segment.
    func write(_ batch: UnsafeRawBufferPointer, _ ops: FileOperations) throws(LogError) {
        try writeAll(ops, fd: file.fd, batch, at: size, displayPath: file.displayPath)
    }

    /// Takes a written batch of `length` bytes, ending at offset `end`, into the segment and its index.
    func commit(length: Int, end: Int64, maxTimestamp: Int64, appendTime: Int64, indexInterval: Int) {
        index.add(relative: UInt32(nextOffset - baseOffset), position: size, length: length, maxTimestamp: maxTimestamp,
                  interval: indexInterval)
        if firstAppendTime == nil { firstAppendTime = appendTime }
        size += Int64(length)
        nextOffset = end
    }

    /// Cuts the file back to `size` bytes ending at offset `end` and rebuilds the index from the
    /// batches left (a rollback after a failed fdatasync). A failed cut leaves bytes past `size`
    /// that nothing points at: the next append overwrites them (recovery would cut them as a
    /// tail the journal does not hold); the caller reports the fdatasync failure.
    func truncate(to size: Int64, end: Int64, indexInterval: Int, _ ops: FileOperations) {
        _ = ops.truncate(file.fd, size)
        self.size = size
        nextOffset = end
        var index = SegmentIndex()
        do throws(LogError) {
            var batches = try segment.batches(expecting: nil, size: size)
            while let header = try batches.next() {
                index.add(relative: UInt32(header.baseOffset - baseOffset), position: batches.batchPosition, length: header.length,
                          maxTimestamp: header.maxTimestamp, interval: indexInterval)
            }
        } catch {
            // Unreadable now: an empty index is still correct (readers then scan the segment from
            // its start, and the index files written at roll are rebuilt when the log next opens).
            index = SegmentIndex()
        }
        self.index = index
    }

    /// Closes the segment for appends: its index is written beside it.
    /// - Returns: what the partition keeps of it.
    func seal(directory: String, _ ops: FileOperations) throws(LogError) -> ClosedSegment {
        var index = self.index
        index.seal()
        try Segment.writeIndexes(index, paths: segment.paths, directory: directory, ops)
        return ClosedSegment(baseOffset: baseOffset, nextOffset: nextOffset, size: size, maxTimestamp: index.maxTimestamp)
    }
}
