#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import SensorLogCore

/// A partition read from files alone, by a process that does not own the log (the CLI): it takes
/// no lock, never writes, and reads up to the last complete batch.
final class ReadOnlyPartition: PartitionView, @unchecked Sendable {
    let directory: String
    let displayDirectory: String
    let limits: Limits

    init(directory: String, displayDirectory: String, limits: Limits) {
        self.directory = directory
        self.displayDirectory = displayDirectory
        self.limits = limits
    }

    func segmentBases() throws(LogError) -> [Int64] {
        try SegmentFiles.list(directory, displayPath: displayDirectory)
    }

    func visibleEnd() -> Int64? { nil }

    var deletionMask: DeletionMask? { nil }

    func index(forSegment base: Int64) -> SegmentIndex? {
        let paths = segmentPaths(base)
        var st = stat()
        guard stat(paths.log, &st) == 0 else { return nil }
        return loadIndexFiles(paths, size: Int64(st.st_size), records: Int64(UInt32.max) + 1)
    }

    func maxTimestamp(ofSegment base: Int64) -> Int64? {
        index(forSegment: base)?.maxTimestamp
    }

    /// Beside a running server a compaction may rename a new segment over this one between the
    /// open and the index load: the index is used only if the file under the name is still the
    /// one opened.
    func openIndexed(_ base: Int64) throws(LogError) -> (Segment, SegmentIndex?) {
        while true {
            let segment = try openSegment(base)
            let index = index(forSegment: base)
            var opened = stat(), named = stat()
            guard fstat(segment.file.fd, &opened) == 0, stat(segment.paths.log, &named) == 0, opened.st_ino != named.st_ino else {
                return (segment, index)
            }
        }
    }

    /// From the segment's `.sensors` file when it matches the file opened, or else from a walk
    /// over the segment (up to its last complete batch: it may be a running server's active one).
    func openSensorIndexed(_ base: Int64, sensorID: String) throws(LogError) -> (segment: Segment, batches: [SensorIndex.BatchRef])? {
        let segment = try openSegment(base)
        let size = try segment.file.size()
        if let bytes = SegmentFiles.readWholeFile(segment.paths.sensorIndex),
           let index = SensorIndex.parse(bytes, segmentSize: size, records: nil)
        {
            return index.batches(holding: sensorID).map { (segment, $0) }
        }
        guard let index = try SensorIndexCache.build(segment, size: size, openTail: true) else { return nil }
        return index.batches(holding: sensorID).map { (segment, $0) }
    }
}

/// Read-only access to a data directory, safe while sensorlogd writes to it.
public final class LogDirectory: Sendable {
    public let dataDirectory: String
    public let metadata: LogMetadata
    let views: [ReadOnlyPartition]
    /// The file effects of the operations that change the directory (repair, salvage).
    let fileOperations: FileOperations

    /// Opens `dataDirectory` for reading.
    /// - Parameter fileOperations: what repairs write through (tests inject faults here).
    /// - Throws: `.invalidLog` when it holds no log.
    public init(dataDirectory: String, limits: Limits = Limits(), fileOperations: FileOperations = .system) throws(LogError) {
        let directory = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        guard let metadata = try LogMetadata.read(directory, maxPartitions: limits.maxPartitions) else {
            throw LogError(.invalidLog, "no sensorlog data in \(directory) (\(LogMetadata.fileName) missing)")
        }
        self.dataDirectory = directory
        self.metadata = metadata
        self.fileOperations = fileOperations
        self.views = (0..<metadata.partitions).map {
            let paths = DataLayout(directory).partition($0)
            return ReadOnlyPartition(directory: paths.directory, displayDirectory: paths.display, limits: limits)
        }
    }

    public var partitionCount: Int { views.count }

    /// Where everything in the data directory is.
    public var layout: DataLayout { DataLayout(dataDirectory) }

    /// A reader of `partition` from `offset`.
    public func reader(partition: Int, from offset: Int64) -> PartitionReader {
        PartitionReader(view: views[partition], startOffset: offset, partition: partition)
    }

    /// Base offsets of `partition`'s segments.
    public func segmentBases(partition: Int) throws(LogError) -> [Int64] {
        try views[partition].segmentBases()
    }

    /// The pid of the process holding the data directory, if any.
    public var lockHolder: Int32? { DirectoryLock.holder(dataDirectory: dataDirectory) }

    /// See `Log.offset(partition:atOrAfter:)`.
    public func offset(partition: Int, atOrAfter timestamp: Int64) throws(LogError) -> Int64 {
        try PartitionReader.offset(atOrAfter: timestamp, in: views[partition])
    }
}

extension LogDirectory {
    /// The next offset to be written in `partition`, as the files show it now: the active
    /// segment's batch headers are walked (from its index when there is one).
    public func endOffset(partition: Int) throws(LogError) -> Int64 {
        let view = views[partition]
        let bases = try view.segmentBases()
        guard let last = bases.last else { return 0 }
        var start: Int64 = 0
        var expected = last
        if let entry = view.index(forSegment: last)?.offsets.last {
            start = Int64(entry.position)
            expected = last + Int64(entry.relativeOffset)
        }
        var batches = try view.openSegment(last).batches(from: start, expecting: expected)
        while let header = try batches.next() { expected = header.nextOffset }
        return expected
    }

    /// The first offset still in `partition`.
    public func startOffset(partition: Int) throws(LogError) -> Int64 {
        try views[partition].segmentBases().first ?? 0
    }
}
