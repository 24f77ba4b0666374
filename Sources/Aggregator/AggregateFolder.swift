import LogStore
import SensorLogCore

/// Folds readings into hourly rows, in log order, one reading at a time: the sum of a row is
/// always the same sequence of additions, whatever the commit boundaries, so a replay gives the
/// same bits. Rows not in memory are loaded from the store on first touch.
final class AggregateFolder {
    struct Key: Hashable {
        var sensorID: String
        var hourStart: Int64
    }

    let store: AggregateStore
    private(set) var rows: [Key: AggregateRow] = [:]
    private(set) var dirty: [AggregateRow] = []
    private(set) var deletedSensors: [String] = []
    /// Rows kept in memory between commits (clean ones are dropped past this).
    let maxCachedRows: Int
    /// No stored row covers an hour after this one, so a row of a later hour is new without
    /// asking the store (a live stream keeps opening such hours).
    private var latestStoredHour: Int64
    /// The latest hour of a row handed off so far (`latestStoredHour` once all are written).
    private(set) var handedOffHour = Int64.min
    /// Folds so far: with a tuple index, tells whether a row last took its type and location
    /// from the same tuple of the same batch.
    private var folds = 0

    /// - Parameter latestStoredHour: the latest hour the store may hold a row of for the sensors
    ///   this folder will see (a fold of one partition knows it better than the store's maximum);
    ///   by default the store's maximum.
    init(store: AggregateStore, maxCachedRows: Int = 500_000, latestStoredHour: Int64? = nil) throws(SQLiteError) {
        self.store = store
        self.maxCachedRows = maxCachedRows
        if let latestStoredHour {
            self.latestStoredHour = latestStoredHour
        } else {
            self.latestStoredHour = try store.latestHourStart() ?? .min
        }
    }

    var pendingRows: Int { dirty.count }
    var hasPendingDeletions: Bool { !deletedSensors.isEmpty }
    var hasPendingChanges: Bool { !dirty.isEmpty || !deletedSensors.isEmpty }

    /// Folds records `first..<end` of `batch` (to its last by default).
    func fold(_ batch: DecodedBatch, from first: Int, to end: Int? = nil) throws(SQLiteError) {
        let end = end ?? batch.count
        if batch.kind == .sensorDeletions {
            for i in first..<end { delete(batch.sensorID(at: i)) }
            return
        }
        guard batch.kind == .readings else { return }  // removed records: offsets only
        // Per tuple of the batch: the row of the hour last touched, so most records need no hashing.
        // Unretained: `rows` holds every row for the length of the fold.
        var tupleHour = [Int64](repeating: .min, count: batch.sensorIDs.count)
        var tupleRow = [Unmanaged<AggregateRow>?](repeating: nil, count: batch.sensorIDs.count)
        folds += 1
        for i in first..<end {
            let t = Int(batch.recordTuples[i])
            let ts = batch.timestamps[i]
            let hour = Timestamp.hourStart(ts)
            let row: Unmanaged<AggregateRow>
            if tupleHour[t] == hour, let cached = tupleRow[t] {
                row = cached
            } else {
                row = .passUnretained(try lookup(
                    Key(sensorID: batch.sensorIDs[t], hourStart: hour),
                    type: batch.types[Int(batch.tupleTypes[t])], location: batch.locations[Int(batch.tupleLocations[t])]))
                tupleHour[t] = hour
                tupleRow[t] = row
            }
            let v = batch.values[i]
            let tag = folds << 32 | t
            let newlyDirty = row._withUnsafeGuaranteedRef { row -> Bool in
                row.count += 1
                row.sum += v
                if v < row.min { row.min = v }
                if v > row.max { row.max = v }
                if ts < row.first { row.first = ts }
                if ts > row.last { row.last = ts }
                // Type and location of the latest folded reading (in log order): they change
                // only when another tuple (the sensor moved) or another batch reaches the row.
                if row.tupleTag != tag {
                    row.tupleTag = tag
                    row.type = batch.types[Int(batch.tupleTypes[t])]
                    row.location = batch.locations[Int(batch.tupleLocations[t])]
                }
                if row.dirty { return false }
                row.dirty = true
                return true
            }
            if newlyDirty { dirty.append(row.takeUnretainedValue()) }
        }
    }

    private func lookup(_ key: Key, type: String, location: String) throws(SQLiteError) -> AggregateRow {
        if let row = rows[key] { return row }
        let stored = key.hourStart > latestStoredHour ? nil : try store.row(sensorID: key.sensorID, hourStart: key.hourStart)
        let row = stored ?? AggregateRow(sensorID: key.sensorID, hourStart: key.hourStart, type: type, location: location)
        rows[key] = row
        return row
    }

    private func delete(_ sensorID: String) {
        rows = rows.filter { $0.key.sensorID != sensorID }
        dirty.removeAll { $0.sensorID == sensorID }
        deletedSensors.append(sensorID)
    }

    /// Writes what changed with `offsets` in one transaction, then forgets the changes (which
    /// stay pending when the write fails).
    func commit(offsets: [Int64], now: Int64 = WallClock.nowNanoseconds()) throws(SQLiteError) {
        let changes = pendingChanges(now: now)
        try store.commit(rows: changes.rows, deletedSensors: changes.deletedSensors, offsets: offsets)
        handedOff()
        committed()
    }

    /// What changed since the last hand-off, as it is written (another thread may write it):
    /// the rows are clean from here on, though they stay in memory until `committed`.
    func handOff(now: Int64 = WallClock.nowNanoseconds()) -> Changes {
        let changes = pendingChanges(now: now)
        handedOff()
        return changes
    }

    private func pendingChanges(now: Int64) -> Changes {
        let updated = Timestamp.formatISO8601(now)
        return Changes(rows: dirty.map { $0.aggregate(updated: updated) }, deletedSensors: deletedSensors)
    }

    private func handedOff() {
        for row in dirty {
            row.dirty = false
            handedOffHour = max(handedOffHour, row.hourStart)
        }
        dirty.removeAll(keepingCapacity: true)
        deletedSensors.removeAll()
    }

    /// Once everything handed off is in the store: those rows may be read back from there, so
    /// the rows in memory may go past `maxCachedRows`.
    func committed() {
        latestStoredHour = max(latestStoredHour, handedOffHour)
        if rows.count > maxCachedRows { rows.removeAll(keepingCapacity: true) }
    }

    var cachedRows: Int { rows.count }

    /// Rows and deletions to write.
    struct Changes: Sendable {
        var rows: [Aggregate]
        var deletedSensors: [String]
    }
}
