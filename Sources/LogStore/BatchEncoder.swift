import CLZ4
package import SensorLogCore

/// Encodes readings into one batch: header, then a column-wise payload, LZ4-compressed when that
/// is smaller. The layout is specified in docs/storage-format.md; `BatchDecoder` is its inverse.
///
/// An encoder keeps its dictionaries and buffers between batches, so steady-state encoding does
/// not allocate. It is not thread-safe: the log keeps a pool of them.
package final class BatchEncoder {
    private struct TupleKey: Hashable {
        var sensorID: String
        var type: String
        var location: String
    }

    private static let emptyTable = StringTable<Int32>(placeholder: -1)
    private static let emptyTuples = Tuples()

    /// Largest scale exponent tried for values (10^9).
    static let maxScaleExponent = 9
    static let powersOfTen: [Double] = [1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9]
    /// Doubles up to 2^53 are exact integers.
    static let exactIntegerLimit = 9_007_199_254_740_992.0

    let payload = GrowableBuffer(capacity: 64 << 10)
    let output = GrowableBuffer(capacity: 64 << 10)

    private var tupleBySensor = StringTable<Int32>(placeholder: -1)
    private var tupleByKey: [TupleKey: Int32] = [:]
    private var tuples = Tuples()
    /// Per record: 0 for "the next new tuple", else tuple index + 1 (what is stored).
    private var refs: [Int32] = []
    /// Per record: its tuple index.
    private var recordTuple: [Int32] = []
    private var scaled: [Int64] = []

    package init() {}

    /// Encodes `readings` as one batch with base offset 0; the log patches the offset in (it is
    /// outside the CRC) once it knows it.
    ///
    /// With `removed` runs it is a sparse readings batch (kind 3): the batch's offsets are the
    /// readings and the removed records interleaved as the runs say, so compaction can drop a
    /// deleted sensor's readings without splitting the batch.
    /// - Returns: the batch bytes, valid until the next call.
    /// - Complexity: O(n) in the number of readings, plus LZ4.
    package func encode(_ readings: UnsafeBufferPointer<Reading>, removed: [RemovedRun] = [], appendTime: Int64, maxBatchBytes: Int)
        throws(LogError) -> UnsafeRawBufferPointer
    {
        precondition(!readings.isEmpty)
        resetDictionaries()
        payload.removeAll()
        let removedCount = writeRemovedRuns(removed, liveCount: readings.count)

        // Timestamps: bounds, then the largest power-of-1000 unit that divides every distance
        // from the minimum (readings stamped to the second, millisecond or microsecond cost less).
        var minTimestamp = Int64.max
        var maxTimestamp = Int64.min
        for r in readings {
            minTimestamp = min(minTimestamp, r.timestamp)
            maxTimestamp = max(maxTimestamp, r.timestamp)
        }
        var unit: Int64 = 1_000_000_000
        if maxTimestamp.subtractingReportingOverflow(minTimestamp).overflow {
            unit = 1
        } else {
            for r in readings where unit > 1 {
                while (r.timestamp - minTimestamp) % unit != 0 { unit /= 1000 }
            }
        }

        // Dictionaries: each distinct (sensor, type, location) is one tuple, in first-seen order.
        // The hot loop works on locals: no exclusivity checks on the class's stored properties.
        var bySensor = tupleBySensor
        var refs = self.refs
        var recordTuple = self.recordTuple
        var tuples = self.tuples
        tupleBySensor = Self.emptyTable
        self.refs = []
        self.recordTuple = []
        self.tuples = Self.emptyTuples
        refs.reserveCapacity(readings.count)
        recordTuple.reserveCapacity(readings.count)
        for r in readings {
            if let t = bySensor[r.sensorID] {
                let ti = Int(t)
                if tuples.typeNames[ti] == r.type && tuples.locationNames[ti] == r.location {
                    refs.append(t + 1)
                    recordTuple.append(t)
                    continue
                }
                // The sensor moved or changed type inside this batch: another tuple of it, found
                // through the (rarely used) full key.
                let key = TupleKey(sensorID: r.sensorID, type: r.type, location: r.location)
                if let other = tupleByKey[key] {
                    refs.append(other + 1)
                    recordTuple.append(other)
                } else {
                    let added = tuples.add(r)
                    tupleByKey[key] = added
                    refs.append(0)
                    recordTuple.append(added)
                }
            } else {
                let t = tuples.add(r)
                bySensor.insert(r.sensorID, t)
                refs.append(0)
                recordTuple.append(t)
            }
        }
        tupleBySensor = bySensor
        self.refs = refs
        self.recordTuple = recordTuple
        self.tuples = tuples

        writeStrings(tuples.typeDictionary.names)
        writeStrings(tuples.locationDictionary.names)
        writeTuples()
        for ref in refs { payload.appendVarint(UInt64(ref)) }

        payload.appendVarint(UInt64(unit))
        var previous = minTimestamp
        for r in readings {
            payload.appendZigZag((r.timestamp &- previous) / unit)
            previous = r.timestamp
        }

        writeValues(readings)

        return try finish(
            kind: removed.isEmpty ? .readings : .sparseReadings, count: readings.count + removedCount, removedCount: removedCount,
            minTimestamp: minTimestamp, maxTimestamp: maxTimestamp, appendTime: appendTime, maxBatchBytes: maxBatchBytes)
    }

    /// The removed-records prefix of a sparse batch: the run count, then per run the live
    /// records before it (since the previous run) and its length.
    /// - Returns: the number of removed records.
    private func writeRemovedRuns(_ runs: [RemovedRun], liveCount: Int) -> Int {
        guard !runs.isEmpty else { return 0 }
        payload.appendVarint(UInt64(runs.count))
        var removed = 0
        var live = 0
        for run in runs {
            precondition(run.count > 0 && (run.liveBefore > 0 || removed == 0), "runs are maximal and non-empty")
            payload.appendVarint(UInt64(run.liveBefore))
            payload.appendVarint(UInt64(run.count))
            removed += run.count
            live += run.liveBefore
        }
        precondition(live <= liveCount, "runs place more readings than the batch holds")
        return removed
    }

    /// Encodes sensor deletions: one record per sensor_id, all stamped with `timestamp` (the
    /// newest reading deleted; records written before that was kept carry the append time).
    package func encodeDeletions(_ sensorIDs: [String], timestamp: Int64, appendTime: Int64, maxBatchBytes: Int) throws(LogError) -> UnsafeRawBufferPointer {
        precondition(!sensorIDs.isEmpty)
        payload.removeAll()
        for id in sensorIDs { writeString(id) }
        return try finish(
            kind: .sensorDeletions, count: sensorIDs.count, minTimestamp: timestamp, maxTimestamp: timestamp,
            appendTime: appendTime, maxBatchBytes: maxBatchBytes)
    }

    /// Encodes `count` removed records: offsets kept, data gone.
    package func encodeRemoved(count: Int, appendTime: Int64, maxBatchBytes: Int) throws(LogError) -> UnsafeRawBufferPointer {
        precondition(count > 0)
        payload.removeAll()
        payload.append(0)
        return try finish(kind: .removed, count: count, minTimestamp: appendTime, maxTimestamp: appendTime,
                          appendTime: appendTime, maxBatchBytes: maxBatchBytes)
    }

    private func resetDictionaries() {
        tupleBySensor.removeAll()
        tupleByKey.removeAll(keepingCapacity: true)
        tuples.removeAll()
        refs.removeAll(keepingCapacity: true)
        recordTuple.removeAll(keepingCapacity: true)
        scaled.removeAll(keepingCapacity: true)
    }

    /// The batch's tuples, column-wise, with their type and location dictionaries: a value, so
    /// the hot loop holds it in a local (no exclusivity checks on the class's stored properties).
    private struct Tuples {
        var sensorIDs: [String] = []
        /// Per tuple, its type and location as text (what the hot loop compares against).
        var typeNames: [String] = []
        var locationNames: [String] = []
        /// Per tuple, its type and location as dictionary indexes (what is stored).
        var types: [Int32] = []
        var locations: [Int32] = []
        var typeDictionary = StringDictionary()
        var locationDictionary = StringDictionary()

        mutating func add(_ r: Reading) -> Int32 {
            let index = Int32(sensorIDs.count)
            sensorIDs.append(r.sensorID)
            typeNames.append(r.type)
            locationNames.append(r.location)
            types.append(typeDictionary.intern(r.type))
            locations.append(locationDictionary.intern(r.location))
            return index
        }

        mutating func removeAll() {
            sensorIDs.removeAll(keepingCapacity: true)
            typeNames.removeAll(keepingCapacity: true)
            locationNames.removeAll(keepingCapacity: true)
            types.removeAll(keepingCapacity: true)
            locations.removeAll(keepingCapacity: true)
            typeDictionary.removeAll()
            locationDictionary.removeAll()
        }
    }

    private func writeString(_ s: String) {
        var copy = s
        copy.withUTF8 { utf8 in
            payload.appendVarint(UInt64(utf8.count))
            payload.append(UnsafeRawBufferPointer(utf8))
        }
    }

    private func writeStrings(_ strings: [String]) {
        payload.appendVarint(UInt64(strings.count))
        for s in strings { writeString(s) }
    }

    /// Tuples: sensor_id front-coded against the previous tuple's (ids of one fleet share long
    /// prefixes), then the type and location dictionary indexes.
    private func writeTuples() {
        payload.appendVarint(UInt64(tuples.sensorIDs.count))
        var previous = ""
        for i in tuples.sensorIDs.indices {
            var id = tuples.sensorIDs[i]
            id.withUTF8 { current in
                previous.withUTF8 { prior in
                    var shared = 0
                    let limit = min(current.count, prior.count)
                    while shared < limit && current[shared] == prior[shared] { shared += 1 }
                    payload.appendVarint(UInt64(shared))
                    payload.appendVarint(UInt64(current.count - shared))
                    payload.append(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(current)[shared...]))
                }
            }
            payload.appendVarint(UInt64(tuples.types[i]))
            payload.appendVarint(UInt64(tuples.locations[i]))
            previous = id
        }
    }

    /// Values as decimal-scaled integers when every one round-trips bit for bit at a common
    /// scale 10^k (k <= 9), stored as the distance from their type's minimum; raw doubles otherwise.
    private func writeValues(_ readings: UnsafeBufferPointer<Reading>) {
        var exponent = 0
        var exact = true
        for r in readings {
            while Self.scaledInteger(r.value, exponent) == nil {
                exponent += 1
                if exponent > Self.maxScaleExponent {
                    exact = false
                    break
                }
            }
            if !exact { break }
        }
        if exact {
            scaled.reserveCapacity(readings.count)
            var typeMin = [Int64](repeating: .max, count: tuples.typeDictionary.names.count)
            for (i, r) in readings.enumerated() {
                guard let v = Self.scaledInteger(r.value, exponent) else {
                    exact = false
                    break
                }
                scaled.append(v)
                let type = Int(tuples.types[Int(recordTuple[i])])
                typeMin[type] = min(typeMin[type], v)
            }
            if exact {
                payload.append(1)
                payload.appendVarint(UInt64(exponent))
                for m in typeMin { payload.appendZigZag(m == .max ? 0 : m) }
                for i in readings.indices {
                    let type = Int(tuples.types[Int(recordTuple[i])])
                    payload.appendVarint(UInt64(scaled[i] - typeMin[type]))
                }
                return
            }
        }
        payload.append(0)
        payload.reserve(readings.count * 8)
        for r in readings { payload.appendLittleEndian(r.value.bitPattern) }
    }

    /// `value * 10^exponent` as an integer, if dividing it back gives `value` bit for bit.
    @inline(__always)
    static func scaledInteger(_ value: Double, _ exponent: Int) -> Int64? {
        let product = value * powersOfTen[exponent]
        guard abs(product) < exactIntegerLimit else { return nil }  // also false for NaN
        let integer = Int64(product.rounded())
        let back = exponent == 0 ? Double(integer) : Double(integer) / powersOfTen[exponent]
        return back.bitPattern == value.bitPattern ? integer : nil
    }

    /// Writes header + (maybe compressed) payload into `output` and fills in the CRC.
    private func finish(
        kind: RecordKind, count: Int, removedCount: Int = 0, minTimestamp: Int64, maxTimestamp: Int64, appendTime: Int64, maxBatchBytes: Int
    ) throws(LogError) -> UnsafeRawBufferPointer {
        output.removeAll()
        _ = output.appendZeros(BatchHeader.size)
        let raw = payload.bytes
        var codec = BatchCodec.none
        if raw.count >= 64 {
            let bound = Int(LZ4_compressBound(Int32(raw.count)))
            output.reserve(bound)
            let written = LZ4_compress_default(
                raw.baseAddress!.assumingMemoryBound(to: CChar.self),
                (output.base + BatchHeader.size).assumingMemoryBound(to: CChar.self),
                Int32(raw.count), Int32(bound))
            if written > 0 && Int(written) < raw.count {
                output.count = BatchHeader.size + Int(written)
                codec = .lz4
            }
        }
        if codec == .none { output.append(raw) }
        let length = output.count
        guard length <= maxBatchBytes else {
            throw LogError(.invalidArgument, "batch of \(count) readings encodes to \(length) bytes, more than the \(maxBatchBytes)-byte limit")
        }
        output.storeLittleEndian(Int64(0), at: 0)
        output.storeLittleEndian(UInt32(length), at: 8)
        output.base.storeBytes(of: BatchHeader.formatVersion, toByteOffset: 16, as: UInt8.self)
        output.base.storeBytes(of: kind.rawValue, toByteOffset: 17, as: UInt8.self)
        output.base.storeBytes(of: codec.rawValue, toByteOffset: 18, as: UInt8.self)
        output.storeLittleEndian(UInt32(count), at: 20)
        output.storeLittleEndian(minTimestamp, at: 24)
        output.storeLittleEndian(maxTimestamp, at: 32)
        output.storeLittleEndian(appendTime, at: 40)
        output.storeLittleEndian(UInt32(raw.count), at: 48)
        output.storeLittleEndian(UInt32(removedCount), at: 52)
        let crc = BatchHeader.checksum(output.bytes)
        output.storeLittleEndian(crc, at: 12)
        return output.bytes
    }
}

/// A run of removed records inside a sparse readings batch: `liveBefore` readings since the
/// previous run (or the batch's start), then `count` removed offsets.
package struct RemovedRun: Equatable {
    package var liveBefore: Int
    package var count: Int

    package init(liveBefore: Int, count: Int) {
        self.liveBefore = liveBefore
        self.count = count
    }
}

/// Distinct strings in first-seen order, each with its index.
struct StringDictionary {
    private(set) var names: [String] = []
    private var index = StringTable<Int32>(placeholder: -1)

    /// The index of `name`, adding it when new.
    mutating func intern(_ name: String) -> Int32 {
        if names.count <= 8 {
            // A few names (types): comparing is cheaper than hashing.
            for (i, n) in names.enumerated() where n == name { return Int32(i) }
        } else if let slot = index.slot(of: name) {
            return index[slot: slot]
        }
        let i = Int32(names.count)
        index.insert(name, i)
        names.append(name)
        return i
    }

    mutating func removeAll() {
        names.removeAll(keepingCapacity: true)
        index.removeAll()
    }
}
