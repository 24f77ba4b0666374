import CSQLite
import LogStore
import Foundation
public import SensorLogCore

/// One hourly aggregate of one sensor, as stored and served.
public struct Aggregate: Sendable, Equatable, Codable {
    public var sensorID: String
    public var hourBucket: String
    public var sensorType: String
    public var location: String
    public var count: Int64
    public var sum: Double
    public var min: Double
    public var max: Double
    public var avg: Double
    public var firstReading: String
    public var lastReading: String
    public var lastUpdated: String

    enum CodingKeys: String, CodingKey {
        case sensorID = "sensor_id", hourBucket = "hour_bucket", sensorType = "sensor_type", location, count, sum, min, max, avg
        case firstReading = "first_reading", lastReading = "last_reading", lastUpdated = "last_updated"
    }
}

/// `aggregates.sqlite`: the hourly aggregates and the log offsets they reflect, always written in
/// the same transaction. The schema is an interface (docs/analysts.md).
public final class AggregateStore {
    /// The store's file as messages name it (`DataLayout.aggregates` is where it is).
    public static let fileName = DataLayout.aggregatesDisplay
    public static let group = "aggregator"
    static let schemaVersion = 1

    let database: SQLiteDatabase
    /// A transaction is open on the connection (a failed one that could not be rolled back).
    var inTransaction: Bool { database.inTransaction }
    public let path: String
    private var upsert: SQLiteStatement?
    private var selectRow: SQLiteStatement?
    private var saveOffset: SQLiteStatement?
    private var deleteSensor: SQLiteStatement?

    /// Opens or creates the store at `path` (WAL mode).
    public init(path: String, readOnly: Bool = false) throws(SQLiteError) {
        self.path = path
        database = try SQLiteDatabase(path: path, readOnly: readOnly)
        if readOnly { return }
        try database.execute("PRAGMA journal_mode=WAL")
        // NORMAL in WAL mode: a commit survives a process crash; a power loss may lose the last
        // commits, together with the offsets they carry, so the store stays consistent.
        try database.execute("PRAGMA synchronous=NORMAL")
        try database.execute("PRAGMA cache_size=-16384")  // 16 MiB: the hot rows of a busy hour stay cached, within the RSS budget
        try database.execute("""
            CREATE TABLE IF NOT EXISTS aggregates (
              sensor_id     TEXT    NOT NULL,
              hour_bucket   TEXT    NOT NULL,
              sensor_type   TEXT    NOT NULL,
              location      TEXT    NOT NULL,
              count         INTEGER NOT NULL,
              sum           REAL    NOT NULL,
              min           REAL    NOT NULL,
              max           REAL    NOT NULL,
              avg           REAL    NOT NULL,
              first_reading TEXT    NOT NULL,
              last_reading  TEXT    NOT NULL,
              last_updated  TEXT    NOT NULL,
              PRIMARY KEY (sensor_id, hour_bucket)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS aggregates_by_hour ON aggregates (hour_bucket, sensor_id);
            CREATE TABLE IF NOT EXISTS consumer_offsets (
              group_name  TEXT    NOT NULL,
              partition   INTEGER NOT NULL,
              next_offset INTEGER NOT NULL,
              PRIMARY KEY (group_name, partition)
            ) WITHOUT ROWID;
            PRAGMA user_version = \(Self.schemaVersion);
            """)
    }

    /// The offsets the stored aggregates reflect: per partition, the next offset to fold.
    public func offsets(partitions: Int) throws(SQLiteError) -> [Int64] {
        var result = [Int64](repeating: 0, count: partitions)
        let s = try database.prepare("SELECT partition, next_offset FROM consumer_offsets WHERE group_name = ?")
        s.bind(1, Self.group)
        while try s.step() {
            let p = Int(s.int64(0))
            if result.indices.contains(p) { result[p] = s.int64(1) }
        }
        return result
    }

    /// The start of the latest hour any stored row covers, or nil for an empty store.
    func latestHourStart() throws(SQLiteError) -> Int64? {
        let s = try database.prepare("SELECT max(hour_bucket) FROM aggregates")
        guard try s.step(), !s.isNull(0) else { return nil }
        return Timestamp.parseISO8601(s.string(0))
    }

    /// The stored row of (sensor, hour), as fold state.
    func row(sensorID: String, hourStart: Int64) throws(SQLiteError) -> AggregateRow? {
        if selectRow == nil {
            selectRow = try database.prepare(
                "SELECT sensor_type, location, count, sum, min, max, first_reading, last_reading FROM aggregates WHERE sensor_id = ? AND hour_bucket = ?")
        }
        let s = selectRow!
        s.reset()
        s.bind(1, sensorID)
        s.bind(2, Timestamp.hourBucket(hourStart))
        guard try s.step() else { return nil }
        let row = AggregateRow(sensorID: sensorID, hourStart: hourStart, type: s.string(0), location: s.string(1))
        row.count = s.int64(2)
        row.sum = s.double(3)
        row.min = s.double(4)
        row.max = s.double(5)
        row.first = Timestamp.parseISO8601(s.string(6)) ?? hourStart
        row.last = Timestamp.parseISO8601(s.string(7)) ?? hourStart
        s.reset()  // a stepped statement would hold a read transaction until the next lookup
        return row
    }

    /// Writes rows (as they are written), deletions (first) and the offsets they reflect in one
    /// transaction; each row replaces the stored one of its (sensor, hour).
    func commit(rows: [Aggregate], deletedSensors: [String], offsets: [Int64]) throws(SQLiteError) {
        if upsert == nil {
            // An update in place, not REPLACE: the key and the (hour, sensor) index entry of an
            // existing row never change, so SQLite leaves that index alone.
            upsert = try database.prepare("""
                INSERT INTO aggregates VALUES (?,?,?,?,?,?,?,?,?,?,?,?)
                ON CONFLICT (sensor_id, hour_bucket) DO UPDATE SET
                  sensor_type = excluded.sensor_type, location = excluded.location, count = excluded.count,
                  sum = excluded.sum, min = excluded.min, max = excluded.max, avg = excluded.avg,
                  first_reading = excluded.first_reading, last_reading = excluded.last_reading,
                  last_updated = excluded.last_updated
                """)
            saveOffset = try database.prepare("INSERT OR REPLACE INTO consumer_offsets VALUES (?,?,?)")
            deleteSensor = try database.prepare("DELETE FROM aggregates WHERE sensor_id = ?")
        }
        try database.transaction { () throws(SQLiteError) in
            for id in deletedSensors {
                deleteSensor!.reset()
                deleteSensor!.bind(1, id)
                try deleteSensor!.run()
            }
            for row in rows {
                insert(upsert!, row)
                try upsert!.run()
            }
            for (p, offset) in offsets.enumerated() {
                saveOffset!.reset()
                saveOffset!.bind(1, Self.group)
                saveOffset!.bind(2, Int64(p))
                saveOffset!.bind(3, offset)
                try saveOffset!.run()
            }
        }
    }

    /// A consistent copy of the store at `target`, taken with SQLite's online backup while the
    /// aggregator keeps writing.
    public func backup(to target: String) throws(SQLiteError) {
        let destination = try SQLiteDatabase(path: target)
        guard let backup = sqlite3_backup_init(destination.handle, "main", database.handle, "main") else { throw destination.lastError }
        let rc = sqlite3_backup_step(backup, -1)
        sqlite3_backup_finish(backup)
        guard rc == SQLITE_DONE else { throw SQLiteError(code: rc, message: "online backup did not finish") }
    }

    /// Binds one row to the 12 placeholders of `INSERT INTO aggregates VALUES (…)`.
    private func insert(_ s: SQLiteStatement, _ a: Aggregate) {
        s.reset()
        s.bind(1, a.sensorID)
        s.bind(2, a.hourBucket)
        s.bind(3, a.sensorType)
        s.bind(4, a.location)
        s.bind(5, a.count)
        s.bind(6, a.sum)
        s.bind(7, a.min)
        s.bind(8, a.max)
        s.bind(9, a.avg)
        s.bind(10, a.firstReading)
        s.bind(11, a.lastReading)
        s.bind(12, a.lastUpdated)
    }

    /// Folds the WAL into the main file (before a copy or a swap).
    public func checkpoint() throws(SQLiteError) {
        try database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    }

    // MARK: Queries

    /// The aggregates of one sensor whose hour overlaps [from, to), by hour.
    public func aggregates(sensorID: String, from: Int64?, to: Int64?) throws(SQLiteError) -> [Aggregate] {
        let s = try database.prepare("""
            SELECT * FROM aggregates WHERE sensor_id = ? AND hour_bucket >= ? AND hour_bucket < ? ORDER BY hour_bucket
            """)
        s.bind(1, sensorID)
        s.bind(2, from.map { Timestamp.hourBucket($0) } ?? "")
        s.bind(3, to.map { Timestamp.hourBucketBound($0) } ?? "~")
        return try collect(s)
    }

    /// All aggregates whose hour overlaps [from, to), optionally of one type and location, by
    /// (hour, sensor), after the (hour, sensor) `cursor`.
    public func aggregates(from: Int64?, to: Int64?, type: String?, location: String?, after cursor: (String, String)?, limit: Int)
        throws(SQLiteError) -> [Aggregate]
    {
        var sql = "SELECT * FROM aggregates WHERE hour_bucket >= ? AND hour_bucket < ?"
        if type != nil { sql += " AND sensor_type = ?" }
        if location != nil { sql += " AND location = ?" }
        if cursor != nil { sql += " AND (hour_bucket, sensor_id) > (?, ?)" }
        sql += " ORDER BY hour_bucket, sensor_id LIMIT ?"
        let s = try database.prepare(sql)
        var i: Int32 = 1
        s.bind(i, from.map { Timestamp.hourBucket($0) } ?? "")
        i += 1
        s.bind(i, to.map { Timestamp.hourBucketBound($0) } ?? "~")
        i += 1
        if let type { s.bind(i, type); i += 1 }
        if let location { s.bind(i, location); i += 1 }
        if let cursor {
            s.bind(i, cursor.0)
            s.bind(i + 1, cursor.1)
            i += 2
        }
        s.bind(i, Int64(limit))
        return try collect(s)
    }

    private func collect(_ s: SQLiteStatement) throws(SQLiteError) -> [Aggregate] {
        var out: [Aggregate] = []
        while try s.step() {
            out.append(Aggregate(
                sensorID: s.string(0), hourBucket: s.string(1), sensorType: s.string(2), location: s.string(3), count: s.int64(4),
                sum: s.double(5), min: s.double(6), max: s.double(7), avg: s.double(8), firstReading: s.string(9),
                lastReading: s.string(10), lastUpdated: s.string(11)))
        }
        return out
    }

    /// Every row (for comparisons in tests and tools).
    public func allAggregates() throws(SQLiteError) -> [Aggregate] {
        try collect(try database.prepare("SELECT * FROM aggregates ORDER BY sensor_id, hour_bucket"))
    }
}

/// The fold state of one (sensor, hour).
final class AggregateRow {
    let sensorID: String
    let hourStart: Int64
    var type: String
    var location: String
    var count: Int64 = 0
    var sum = 0.0
    var min = Double.infinity
    var max = -Double.infinity
    var first = Int64.max
    var last = Int64.min
    var dirty = false
    /// Which batch and tuple last set `type` and `location` (`AggregateFolder.fold`).
    var tupleTag = -1

    init(sensorID: String, hourStart: Int64, type: String, location: String) {
        self.sensorID = sensorID
        self.hourStart = hourStart
        self.type = type
        self.location = location
    }

    /// The row as it is written.
    func aggregate(updated: String) -> Aggregate {
        Aggregate(sensorID: sensorID, hourBucket: Timestamp.hourBucket(hourStart), sensorType: type, location: location,
                  count: count, sum: sum, min: min, max: max, avg: sum / Double(count),
                  firstReading: Timestamp.formatISO8601(first), lastReading: Timestamp.formatISO8601(last), lastUpdated: updated)
    }
}
