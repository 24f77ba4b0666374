import Foundation

/// The sensor indexes of a live partition: the active segment's, brought up to date by the
/// readers that ask (so appends never pay for it), and the recently used closed segments', loaded
/// from their `.sensors` files or built again by a walk when a file is missing or stale. Closed
/// entries are dropped, least recently used first, past `Limits.sensorIndexCacheBytes`.
final class SensorIndexCache: @unchecked Sendable {
    /// A closed segment as an index must match it.
    struct Shape: Equatable {
        var size: Int64
        var records: Int64
    }

    private struct Entry {
        var index: SensorIndex
        /// The closed segment it indexes whole; nil while it covers a prefix of the active one.
        var closed: Shape?
        var used: UInt64
        var bytes: Int { index.approximateBytes }

        /// Whether it answers for the segment as it is now without more work.
        func isCurrent(base: Int64, closed shape: Shape?, visibleEnd: Int64) -> Bool {
            if let shape { return closed == shape }
            return base + Int64(index.coveredRelative) >= visibleEnd
        }
    }

    /// Guards the maps; held only to look up or store, never across I/O.
    private let lock = NSLock()
    /// Held while an index is loaded, built or brought up to date: one at a time, so readers of
    /// other segments are never held up by the walk.
    private let buildLock = NSLock()
    private var entries: [Int64: Entry] = [:]
    /// Closed segments whose `.sensors` file is known to match them.
    private var onDisk: [Int64: Shape] = [:]
    /// Closed segments with a batch that does not decode: readers read them without an index
    /// (and report the damage) instead of trying again each time.
    private var unindexable: [Int64: Shape] = [:]
    private var clock: UInt64 = 0
    private let budget: Int
    private let decoder = BatchDecoder()
    private let buffer = GrowableBuffer(capacity: 64 << 10)

    init(budget: Int) { self.budget = budget }

    /// The batches of segment `base` that may hold `sensorID`, or nil when the segment cannot be
    /// indexed now (damage, or a swap under the walk): the caller then reads without the index.
    /// - Parameters:
    ///   - closed: the segment's shape when it is closed; nil for the active segment, indexed up
    ///     to `visibleEnd`.
    func batches(holding sensorID: String, segment base: Int64, closed: Shape?, visibleEnd: Int64,
                 paths: SegmentPaths, open: () throws(LogError) -> Segment) throws(LogError) -> [SensorIndex.BatchRef]? {
        if let answer = lookUp(sensorID, base: base, closed: closed, visibleEnd: visibleEnd) { return answer }
        buildLock.lock()
        defer { buildLock.unlock() }
        // Another reader may have done the work meanwhile.
        if let answer = lookUp(sensorID, base: base, closed: closed, visibleEnd: visibleEnd) { return answer }
        // Out of the map while it changes: an entry in it would be copied whole by the change.
        var entry = lock.withLock { entries.removeValue(forKey: base) }
        if let e = entry, let closed, e.closed != nil, e.closed != closed { entry = nil }  // swapped by a compaction
        if entry == nil, let closed, let loaded = Self.load(paths, closed) {
            entry = Entry(index: loaded, closed: closed, used: 0)
            markOnDisk(base, closed)
        }
        var e = entry ?? Entry(index: SensorIndex(), closed: nil, used: 0)
        if e.closed == nil {
            let segment = try open()
            guard try Self.extend(&e.index, segment: segment, base: base, until: closed == nil ? visibleEnd : nil,
                                  size: closed?.size, openTail: closed == nil, decoder: decoder, buffer: buffer)
            else {
                if let closed { lock.withLock { unindexable[base] = closed } }
                return nil
            }
            e.closed = closed
        }
        let answer = e.index.batches(holding: sensorID)
        lock.withLock {
            clock += 1
            e.used = clock
            entries[base] = e
            evict(keeping: base)
        }
        return answer
    }

    /// The answer from the map when it needs no I/O: .some(nil) for a segment known to be
    /// unindexable, nil when there is work to do.
    private func lookUp(_ sensorID: String, base: Int64, closed: Shape?, visibleEnd: Int64) -> [SensorIndex.BatchRef]?? {
        lock.withLock {
            if let closed, unindexable[base] == closed { return .some(nil) }
            guard let e = entries[base], e.isCurrent(base: base, closed: closed, visibleEnd: visibleEnd) else { return nil }
            clock += 1
            entries[base]!.used = clock
            return .some(e.index.batches(holding: sensorID))
        }
    }

    /// Whether segment `base`'s `.sensors` file is known to match `shape`.
    func isOnDisk(_ base: Int64, _ shape: Shape) -> Bool {
        lock.withLock { onDisk[base] == shape }
    }

    func markOnDisk(_ base: Int64, _ shape: Shape) {
        lock.withLock { onDisk[base] = shape }
    }

    /// The complete index of a closed segment when this cache holds it.
    func complete(_ base: Int64, _ shape: Shape) -> SensorIndex? {
        lock.withLock { entries[base].flatMap { $0.closed == shape ? $0.index : nil } }
    }

    func forget(_ base: Int64) {
        lock.withLock {
            entries[base] = nil
            onDisk[base] = nil
            unindexable[base] = nil
        }
    }

    /// Forgets segments no longer in the partition.
    func retain(_ bases: Set<Int64>) {
        lock.withLock {
            entries = entries.filter { bases.contains($0.key) }
            onDisk = onDisk.filter { bases.contains($0.key) }
            unindexable = unindexable.filter { bases.contains($0.key) }
        }
    }

    /// Drops the least recently used entries past the budget (a rolled active segment's too).
    private func evict(keeping base: Int64) {
        var total = entries.values.reduce(0) { $0 + $1.bytes }
        while total > budget {
            guard let victim = entries.filter({ $0.key != base }).min(by: { $0.value.used < $1.value.used }) else { return }
            total -= victim.value.bytes
            entries[victim.key] = nil
        }
    }

    static func load(_ paths: SegmentPaths, _ shape: Shape) -> SensorIndex? {
        guard let bytes = SegmentFiles.readWholeFile(paths.sensorIndex) else { return nil }
        return SensorIndex.parse(bytes, segmentSize: shape.size, records: shape.records)
    }

    /// Builds a segment's index with a walk over its batches, up to `size` bytes.
    /// - Parameter openTail: the segment may be one being appended to (it may end inside a batch).
    static func build(_ segment: Segment, size: Int64, openTail: Bool = false) throws(LogError) -> SensorIndex? {
        var index = SensorIndex()
        guard try extend(&index, segment: segment, base: segment.base, until: nil, size: size, openTail: openTail, decoder: BatchDecoder(),
                         buffer: GrowableBuffer(capacity: 64 << 10))
        else { return nil }
        return index
    }

    /// Adds the batches from where `index` stops, up to offset `end` (the active segment's
    /// visible end) or the end of a closed segment of `size` bytes.
    /// - Parameter openTail: the segment is being appended to, so it may end inside a batch.
    /// - Returns: false when a batch fails a check or does not decode: an index must not skip one.
    static func extend(_ index: inout SensorIndex, segment: Segment, base: Int64, until end: Int64?, size: Int64?, openTail: Bool,
                       decoder: BatchDecoder, buffer: GrowableBuffer) throws(LogError) -> Bool {
        var batches = try segment.batches(from: index.coveredPosition, expecting: base + Int64(index.coveredRelative), verifyCRC: true,
                                          size: size, buffer: buffer)
        while let header = try batches.next() {
            if let end, header.baseOffset >= end { return true }
            guard let hashes = try? decoder.sensorHashes(batches.bytes, header: header) else { return false }
            index.add(position: batches.batchPosition, relative: UInt32(header.baseOffset - base), nextRelative: UInt32(header.nextOffset - base),
                      length: header.length, crc: header.crc, hashes: hashes)
        }
        switch batches.stop {
        case .end: return true
        case .incomplete: return openTail
        default: return false
        }
    }
}

extension SensorIndex {
    /// Roughly what it holds in memory, for the cache's budget.
    var approximateBytes: Int {
        batches.count * 16 + sensors.count * 64 + postingBytes
    }
}

extension Log {
    /// What `writeSensorIndexes` did.
    public struct SensorIndexWrites: Sendable, Equatable {
        public var written = 0
        public var bytes: Int64 = 0
        /// Closed segments left without one: a batch of theirs does not decode (verify says more).
        public var unindexable = 0
    }

    /// Writes the `.sensors` file of every closed segment that has none or a stale one (rolled,
    /// compacted, salvaged, or from before sensor indexes): the server's maintenance runs it at
    /// start and after every pass, so appends never wait for it. Safe while the log serves;
    /// runs beside nothing else that changes segments.
    /// - Parameter only: the partitions to look at (all by default).
    public func writeSensorIndexes(only: [Int]? = nil, stop: () -> Bool = { false }) throws(LogError) -> SensorIndexWrites {
        var done = SensorIndexWrites()
        for partition in (only ?? Array(partitions.indices)).map({ partitions[$0] }) {
            let (closed, active) = partition.retentionView()
            partition.sensorIndexes.retain(Set(closed.map(\.baseOffset) + [active.baseOffset]))
            for segment in closed where !stop() {
                try partition.writeSensorIndex(segment, into: &done)
            }
        }
        return done
    }
}

extension Partition {
    /// Writes a closed segment's `.sensors` file anew (verify found it bad).
    func rewriteSensorIndex(_ closed: ClosedSegment) throws(LogError) {
        sensorIndexes.forget(closed.baseOffset)
        let paths = segmentPaths(closed.baseOffset)
        try fileOperations.remove(paths.sensorIndex, display: paths.sensorIndexDisplay)
        var done = Log.SensorIndexWrites()
        try writeSensorIndex(closed, into: &done)
    }

    func writeSensorIndex(_ closed: ClosedSegment, into done: inout Log.SensorIndexWrites) throws(LogError) {
        let base = closed.baseOffset
        let shape = SensorIndexCache.Shape(size: closed.size, records: closed.nextOffset - base)
        let paths = segmentPaths(base)
        if sensorIndexes.isOnDisk(base, shape) { return }
        if SensorIndexCache.load(paths, shape) != nil {
            sensorIndexes.markOnDisk(base, shape)
            return
        }
        guard let (state, swapsBefore) = sensorIndexState(base), state == shape else { return }  // gone or swapped since the listing
        let index: SensorIndex
        if let cached = sensorIndexes.complete(base, shape) {
            index = cached
        } else {
            let segment = try openSegment(base)
            guard let built = try SensorIndexCache.build(segment, size: shape.size) else {
                done.unindexable += 1
                return
            }
            index = built
        }
        let bytes = try Segment.writeSensorIndex(index, shape: shape, paths: paths, directory: directory, fileOperations)
        // A swap meanwhile (not expected: the caller runs beside nothing that swaps) makes the
        // file stale; its shape check refuses it and the next pass writes it again.
        guard sensorIndexState(base)?.swaps == swapsBefore else { return }
        sensorIndexes.markOnDisk(base, shape)
        done.written += 1
        done.bytes += Int64(bytes)
    }
}
