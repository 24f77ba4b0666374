import CLZ4
public import SensorLogCore

/// A reading found by a sensor scan, with where it is in the log.
public struct LocatedReading: Sendable, Equatable {
    public var reading: Reading
    public var partition: Int
    public var offset: Int64
}

extension BatchDecoder {
    /// Finds the records of one sensor with timestamps in [from, to] in a CRC-checked batch,
    /// decoding only what it must: the dictionaries first (a batch without the sensor stops
    /// there), then one pass over the record columns keeping only the sensor's records.
    package func scan(_ raw: UnsafeRawBufferPointer, header: BatchHeader, sensorID: [UInt8], from: Int64, to: Int64,
              partition: Int, into out: inout [LocatedReading]) throws(DecodeError)
    {
        guard header.readingCount > 0 else { return }
        // The tuple section comes first (after a sparse batch's removed runs); decoding it alone
        // answers "is the sensor here".
        let payload = try decompressedPayload(raw, header: header)
        var reader = ByteReader(payload)
        let runs = header.kind == .sparseReadings ? try readRemovedRuns(&reader, header: header) : []
        let types = try readStrings(&reader)
        let locations = try readStrings(&reader)
        let typeCount = types.count
        // A sensor that moved or changed type inside the batch has several tuples.
        var targets: [(index: Int, type: Int, location: Int)] = []
        let tupleCount = try findTuples(&reader, header: header, typeCount: typeCount, locationCount: locations.count, of: sensorID,
                                        into: &targets)
        guard !targets.isEmpty else { return }
        // Per tuple, which of the sensor's tuples it is (-1: another sensor's).
        var targetOf = [Int32](repeating: -1, count: tupleCount)
        for (k, target) in targets.enumerated() { targetOf[target.index] = Int32(k) }
        // The sensor is here: one pass over the record columns, keeping only its records.
        let count = header.readingCount
        var mine: [Int] = []
        var mineTarget: [Int] = []
        var introduced = 0
        for i in 0..<count {
            let ref = try reader.readCount(max: introduced)
            let tuple: Int
            if ref == 0 {
                guard introduced < tupleCount else { throw DecodeError("record refers to a tuple beyond the dictionary") }
                tuple = introduced
                introduced += 1
            } else {
                tuple = ref - 1
            }
            if targetOf[tuple] >= 0 {
                mine.append(i)
                mineTarget.append(Int(targetOf[tuple]))
            }
        }
        let unit = try reader.readVarint()
        guard unit >= 1, unit <= 1_000_000_000 else { throw DecodeError("timestamp unit \(unit) out of range") }
        var stamps: [Int64] = []
        stamps.reserveCapacity(mine.count)
        var timestamp = header.minTimestamp
        var k = 0
        // Past the sensor's last record only where the column ends matters, and the values stop there.
        for i in 0..<count {
            let (scaled, overflow) = try reader.readZigZag().multipliedReportingOverflow(by: Int64(unit))
            guard !overflow else { throw DecodeError("timestamp delta overflows") }
            timestamp = timestamp &+ scaled
            if k < mine.count && mine[k] == i {
                stamps.append(timestamp)
                k += 1
                if k == mine.count {
                    try reader.skipVarints(count - i - 1)
                    break
                }
            }
        }
        let mode = try reader.readByte()
        var values: [Double] = []
        values.reserveCapacity(mine.count)
        k = 0
        switch mode {
        case 0:
            for i in 0..<count {
                let v = Double(bitPattern: try reader.readLittleEndian(UInt64.self))
                if k < mine.count && mine[k] == i {
                    values.append(v)
                    k += 1
                    if k == mine.count { break }
                }
            }
        case 1:
            let exponent = try reader.readCount(max: BatchEncoder.maxScaleExponent)
            var typeMin: [Int64] = []
            for _ in 0..<typeCount { typeMin.append(try reader.readZigZag()) }
            for i in 0..<count {
                let raw = try reader.readVarint()
                if k < mine.count && mine[k] == i {
                    let base = typeMin[targets[mineTarget[k]].type]
                    let (integer, overflow) = base.addingReportingOverflow(Int64(bitPattern: raw))
                    guard !overflow else { throw DecodeError("scaled value out of range") }
                    values.append(exponent == 0 ? Double(integer) : Double(integer) / BatchEncoder.powersOfTen[exponent])
                    k += 1
                    if k == mine.count { break }
                }
            }
        default:
            throw DecodeError("unknown value encoding \(mode)")
        }
        let id = String(decoding: sensorID, as: UTF8.self)
        var livePositions: [Int32] = []
        if !runs.isEmpty { BatchDecoder.livePositions(runs, header: header, into: &livePositions) }
        for (j, i) in mine.enumerated() where stamps[j] >= from && stamps[j] <= to {
            let target = targets[mineTarget[j]]
            out.append(LocatedReading(
                reading: Reading(sensorID: id, type: types[target.type], value: values[j], location: locations[target.location], timestamp: stamps[j]),
                partition: partition, offset: header.baseOffset + Int64(livePositions.isEmpty ? i : Int(livePositions[i]))))
        }
    }
}

extension BatchDecoder {
    /// The tuples of `sensorID` in the tuple section, found without putting any id together: it
    /// follows how long a prefix the current id shares with the sensor's, through the front
    /// coding (an id that keeps more of the previous one than matched the sensor's differs from
    /// it where the previous one did).
    /// - Returns: the number of tuples.
    func findTuples(_ reader: inout ByteReader, header: BatchHeader, typeCount: Int, locationCount: Int, of sensorID: [UInt8],
                    into targets: inout [(index: Int, type: Int, location: Int)]) throws(DecodeError) -> Int {
        let tupleCount = try reader.readCount(max: min(header.recordCount, reader.remaining))
        let target = sensorID.count
        var length = 0  // of the previous id
        var common = 0  // its common prefix with the sensor's id
        for i in 0..<tupleCount {
            let shared = try reader.readCount(max: length)
            let suffixLength = try reader.readCount(max: reader.remaining)
            let suffix = try reader.readBytes(suffixLength)
            if shared <= common {
                common = shared
                var k = 0
                while k < suffixLength && common < target && suffix[k] == sensorID[common] {
                    k += 1
                    common += 1
                }
            }
            length = shared + suffixLength
            let type = try reader.readCount(max: typeCount - 1)
            let location = try reader.readCount(max: locationCount - 1)
            if common == target && length == target { targets.append((i, type, location)) }
        }
        return tupleCount
    }
}

extension PartitionReader {
    /// Readings of `sensorID` with timestamps in [from, to], in log order, from this reader's
    /// position. Only the batches the segments' sensor indexes name are read (and of those, only
    /// the ones whose time bounds meet the range are decoded); when an index cannot be had or
    /// does not match its segment, the page is read again batch by batch from the start.
    /// - Parameters:
    ///   - limit: stop after this many readings.
    ///   - maxBatches: stop after reading this many batches (bounds one request's work).
    /// - Returns: the readings, and the offset to continue from (nil when the end was reached).
    public func scan(sensorID: String, from: Int64, to: Int64, limit: Int, maxBatches: Int = .max)
        throws(LogError) -> (readings: [LocatedReading], next: Int64?)
    {
        let start = nextOffset
        do {
            if let page = try indexedScan(sensorID: sensorID, from: from, to: to, limit: limit, maxBatches: maxBatches) {
                reposition(to: page.resume)
                lastScanUsedIndex = true
                return (page.readings, page.next)
            }
        } catch {
            // Retention or a swap under the walk, or damage: the batch-by-batch scan copes with the
            // first and reports the second.
        }
        reposition(to: start)
        lastScanUsedIndex = false
        return try sequentialScan(sensorID: sensorID, from: from, to: to, limit: limit, maxBatches: maxBatches)
    }

    /// The page through the sensor indexes; nil when one is missing or stale.
    private func indexedScan(sensorID: String, from: Int64, to: Int64, limit: Int, maxBatches: Int)
        throws(LogError) -> (readings: [LocatedReading], next: Int64?, resume: Int64)?
    {
        let id = Array(sensorID.utf8)
        let deletedBefore = view.deletionMask?.entries[sensorID] ?? .min
        let end = view.visibleEnd()
        let bases = try view.segmentBases()
        guard let firstBase = bases.first else { return ([], nil, nextOffset) }
        let start = max(nextOffset, firstBase)
        var out: [LocatedReading] = []
        var read = 0
        var last = start
        for (i, base) in bases.enumerated() {
            let isLast = i == bases.count - 1
            if !isLast && bases[i + 1] <= start { continue }
            if !isLast, let max = view.maxTimestamp(ofSegment: base), max < from { continue }
            guard let (segment, refs) = try view.openSensorIndexed(base, sensorID: sensorID) else { return nil }
            for (k, ref) in refs.enumerated() {
                let batchBase = base + Int64(ref.relativeOffset)
                if let end, batchBase >= end { break }
                // A batch ends where the next one the sensor is in begins, or before.
                if k + 1 < refs.count, base + Int64(refs[k + 1].relativeOffset) <= start { continue }
                var cursor = try segment.batches(from: ref.position, expecting: batchBase, verifyCRC: true, buffer: indexedBuffer)
                guard let header = try cursor.next(), header.crc == ref.crc else { return nil }
                // Every batch read counts against the page's bound, decoded or not.
                read += 1
                last = max(last, header.nextOffset)
                if header.nextOffset > start && header.maxTimestamp >= from && header.minTimestamp <= to {
                    var found: [LocatedReading] = []
                    do {
                        try indexedDecoder.scan(cursor.bytes, header: header, sensorID: id, from: from, to: to, partition: partitionID, into: &found)
                    } catch {
                        return nil
                    }
                    out += found.lazy.filter { $0.offset >= start && $0.offset >= deletedBefore }
                    if out.count > limit {
                        out.removeSubrange(limit...)
                        return (out, out[limit - 1].offset + 1, out[limit - 1].offset + 1)
                    }
                }
                if out.count == limit || read >= maxBatches { return (out, last, last) }
            }
        }
        return (out, nil, max(start, end ?? last))
    }

    /// The page batch by batch: batches whose time bounds miss the range are skipped from their
    /// header, batches without the sensor after their dictionary.
    private func sequentialScan(sensorID: String, from: Int64, to: Int64, limit: Int, maxBatches: Int)
        throws(LogError) -> (readings: [LocatedReading], next: Int64?)
    {
        var out: [LocatedReading] = []
        let id = Array(sensorID.utf8)
        var batches = 0
        let decoder = BatchDecoder()
        let partition = partitionID
        // A deleted sensor's readings below its deletion record are gone, in the files or not.
        let deletedBefore = view.deletionMask?.entries[sensorID] ?? .min
        while out.count < limit, batches < maxBatches {
            // A page may start inside a batch (the cursor of the previous one), and after a
            // compaction's swap the reader may go on from a merged batch that begins before
            // where it was: skip what came before.
            let start = nextOffset
            guard let (header, bytes, segment, position) = try nextRaw() else { return (out, nil) }
            batches += 1
            guard header.maxTimestamp >= from && header.minTimestamp <= to else { continue }
            do {
                var found: [LocatedReading] = []
                try decoder.scan(bytes, header: header, sensorID: id, from: from, to: to, partition: partition, into: &found)
                out += found.lazy.filter { $0.offset >= start && $0.offset >= deletedBefore }
            } catch {
                throw LogError(.corruptBatch, "batch does not decode: \(error.message)", path: segment, position: position)
            }
        }
        if out.count > limit {
            // The page ends inside a batch: the next one starts right after its last reading.
            out.removeSubrange(limit...)
            return (out, out[limit - 1].offset + 1)
        }
        return (out, nextOffset)
    }
}
