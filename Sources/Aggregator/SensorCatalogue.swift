/// One sensor as the catalogue shows it: its type, latest location, first and last reading and
/// how many readings it has, all from the hourly aggregates (no scan of the log).
public struct SensorSummary: Sendable, Equatable, Codable {
    public var sensorID: String
    public var type: String
    public var location: String
    public var firstReading: String
    public var lastReading: String
    public var count: Int64

    enum CodingKeys: String, CodingKey {
        case sensorID = "sensor_id", type, location, firstReading = "first_reading", lastReading = "last_reading", count
    }
}

/// What a catalogue page is filtered by.
public struct SensorFilter: Sendable {
    public var type: String?
    /// The sensor's latest location.
    public var location: String?
    public var prefix: String?

    public init(type: String? = nil, location: String? = nil, prefix: String? = nil) {
        self.type = type
        self.location = location
        self.prefix = prefix
    }
}

extension AggregateStore {
    /// Sensors by id, after `cursor` (an id), at most `limit`. Each sensor's rows are read through
    /// the primary key (sensor, hour), so a page costs its sensors' hours, whatever the store's size.
    public func sensors(_ filter: SensorFilter, after cursor: String?, limit: Int) throws(SQLiteError) -> [SensorSummary] {
        var conditions = ["sensor_id > ?"]
        var bindings = [cursor ?? ""]
        if let prefix = filter.prefix, !prefix.isEmpty {
            // Every id that starts with the prefix sorts in [prefix, prefix + U+10FFFF).
            conditions.append("sensor_id >= ? AND sensor_id < ?")
            bindings += [prefix, prefix + "\u{10FFFF}"]
        }
        if let type = filter.type {
            conditions.append("sensor_type = ?")
            bindings.append(type)
        }
        return try summaries(conditions, bindings, latestLocation: filter.location, limit: limit)
    }

    /// One sensor, or nil when the store has none of its readings.
    public func sensor(_ id: String) throws(SQLiteError) -> SensorSummary? {
        try summaries(["sensor_id = ?"], [id], latestLocation: nil, limit: 1).first
    }

    private func summaries(_ conditions: [String], _ bindings: [String], latestLocation: String?, limit: Int) throws(SQLiteError) -> [SensorSummary] {
        var sql = """
            SELECT sensor_id, \(Self.latest("sensor_type")), \(Self.latest("location")), MIN(first_reading), MAX(last_reading), SUM(count)
            FROM aggregates a WHERE \(conditions.joined(separator: " AND ")) GROUP BY sensor_id
            """
        var bindings = bindings
        if let latestLocation {
            sql += " HAVING \(Self.latest("location")) = ?"
            bindings.append(latestLocation)
        }
        sql += " ORDER BY sensor_id LIMIT ?"
        let s = try database.prepare(sql)
        for (i, b) in bindings.enumerated() { s.bind(Int32(i + 1), b) }
        s.bind(Int32(bindings.count + 1), Int64(limit))
        var out: [SensorSummary] = []
        while try s.step() {
            out.append(SensorSummary(sensorID: s.string(0), type: s.string(1), location: s.string(2), firstReading: s.string(3),
                                     lastReading: s.string(4), count: s.int64(5)))
        }
        return out
    }

    /// The column's value in the sensor's latest hour (the location of its newest reading).
    private static func latest(_ column: String) -> String {
        "(SELECT \(column) FROM aggregates b WHERE b.sensor_id = a.sensor_id ORDER BY hour_bucket DESC LIMIT 1)"
    }
}
