/// Every bound sensorlog enforces, in one place. The servers, the log and the tool read their
/// limits from here; `validate()` runs at start-up so a bad flag fails before anything opens.
public struct Limits: Sendable, Equatable {
    /// Longest sensor_id, in UTF-8 bytes.
    public var maxSensorIDBytes = 128
    /// Longest location, in UTF-8 bytes.
    public var maxLocationBytes = 128
    /// Longest type name, in UTF-8 bytes.
    public var maxTypeBytes = 64

    /// Most readings in one batch (one append).
    public var maxBatchRecords = 65_536
    /// Largest encoded batch, header included. A reader refuses a batch header that claims more,
    /// so a corrupt length can never make it allocate without bound.
    public var maxBatchBytes = 32 << 20

    /// Number of partitions of a new log. Fixed once the log exists.
    public var partitions = 8
    /// Most partitions a log may have.
    public var maxPartitions = 1024

    /// The active segment rolls once it holds this many bytes.
    public var segmentBytes = 64 << 20
    /// Smallest `segmentBytes` accepted.
    public var minSegmentBytes = 64 << 10
    /// The active segment rolls once its first batch is this old.
    public var segmentMaxAge: Duration = .seconds(24 * 3600)

    /// An offset- and time-index entry is added every time this many log bytes were written.
    public var indexIntervalBytes = 4096

    /// Longest line-protocol line, in bytes; a longer one is skipped without being buffered.
    public var maxLineBytes = 64 << 10
    /// Most line-protocol connections at once.
    public var maxConnections = 1024
    /// A line-protocol connection that sends nothing for this long is closed.
    public var idleTimeout: Duration = .seconds(300)
    /// A line-protocol connection must finish its authentication (with `--tcp-auth-file`) within
    /// this: until then it holds a connection slot without being a producer.
    public var lineProtocolAuthTimeout: Duration = .seconds(10)
    /// A TLS connection (either listener) must complete its handshake within this.
    public var tlsHandshakeTimeout: Duration = .seconds(10)
    /// Parsed readings one connection may hold while the log catches up; past it the connection
    /// stops reading its socket. A connection holds at most this, plus what one wake-up reads
    /// (below), plus one submission in flight: about 64 bytes a reading, so some 5 MiB.
    /// Larger batches amortise more per-batch work; this is where the curve flattens.
    public var maxPendingReadingsPerConnection = 32_768
    /// Largest single socket read of a line-protocol connection.
    public var maxSocketReadBytes = 256 << 10
    /// Socket reads per wake-up before other connections get a turn (and a paused connection
    /// stops): `maxSocketReadBytes` times this is the overshoot past the pending bound.
    public var socketReadsPerWakeup = 4
    /// Most HTTP connections at once; one more is closed as it is accepted (and counted), so that
    /// idle connections can never exhaust the open files every other client needs.
    public var maxHTTPConnections = 1024
    /// A new HTTP connection must have sent a whole request head (request line and headers)
    /// within this: a slow-loris trickling header bytes holds a slot no longer.
    public var httpHeaderTimeout: Duration = .seconds(10)
    /// From its head, a request's body must have arrived whole within this, plus the time its
    /// bytes take at `minBodyBytesPerSecond` (a trickled body is closed; a large one on a slow
    /// link is not: 25 MB at the minimum rate adds some 6 minutes).
    public var httpRequestTimeout: Duration = .seconds(60)
    public var minBodyBytesPerSecond = 64 << 10
    /// Largest request line (the URL) plus headers of an HTTP request: 431 past it.
    public var maxHTTPHeaderBytes = 16 << 10
    /// Open files kept free beyond the connection caps: segments, indexes, the journal, SQLite,
    /// the admin socket. Start-up raises the soft open-file limit to the hard one, and lowers the
    /// caps when even that cannot hold both caps and this.
    public var fileDescriptorReserve = 256
    /// Largest HTTP request body.
    public var maxBodyBytes = 1 << 20
    /// Largest line-protocol body over HTTP (`/write`, `/api/v2/write`), after gzip inflation:
    /// InfluxDB's own default, since its clients size their batches for it (QuestDB's flush
    /// 75 000 rows at a time).
    public var maxWriteBodyBytes = 25_000_000
    /// Largest MQTT message taken; a larger one is skipped unread, counted and acknowledged.
    public var maxMQTTPayloadBytes = 1 << 20
    /// The keep-alive sensorlogd asks its MQTT broker for.
    public var mqttKeepAlive: Duration = .seconds(30)
    /// The longest wait between two attempts to reach the MQTT broker (the wait doubles from 1 s).
    public var mqttMaxBackoff: Duration = .seconds(30)
    /// Most readings in one `POST /sensor/data` array.
    public var maxReadingsPerRequest = 10_000

    /// Size of each of the two commit journal files under the `always` policy (written full of
    /// zeros once). A file is retired (every segment synced, the file emptied) at three quarters
    /// of it, so this bounds what recovery replays.
    public var commitJournalBytes = 16 << 20

    /// Fsync period under the `interval` policy.
    public var fsyncInterval: Duration = .milliseconds(100)

    /// Most distinct sensors the server takes (`--max-sensors`; 0: no bound); a reading of a new
    /// sensor past it is refused `too_many_sensors`. The dedupe keeps each sensor in memory
    /// (about 100 bytes plus its id), so this bounds what one producer minting ids can cost.
    /// InfluxDB's `max-series-per-database` default.
    public var maxSensors = 1_000_000

    /// Most reading types (`--sensor-type`): the dedupe keeps a sensor's type in one byte (255 at
    /// most), and this leaves room.
    public var maxSensorTypes = 200
    /// Readings per run of batches in the dedupe's in-memory key filters: an out-of-order check
    /// decodes about this many for each run whose bounds and filter may hold its key.
    public var dedupeSpanReadings = 4096
    /// Keys the dedupe keeps decoded from recently checked runs, per partition.
    public var dedupeCachedKeys = 65_536
    /// Rejected lines or requests logged a second for the whole process; the rest are counted only.
    public var rejectionLogLinesPerSecond = 20
    /// A line-protocol connection whose append failed retries after this, its socket paused.
    public var appendRetryDelay: Duration = .seconds(1)
    /// At shutdown, how long a line-protocol connection still retries readings refused as
    /// `unavailable` (in a cluster, their partition's owner did not answer) before they count as
    /// lost: a partition changes hands within a few seconds.
    public var shutdownRetryWindow: Duration = .seconds(15)
    /// The `Retry-After` of a 503 (the log cannot write) and of an unhealthy `/health`, in seconds.
    public var retryAfterSeconds = 5
    /// Page size of `/aggregates` and `/sensors/{id}/readings` when none is asked, and the most.
    public var defaultPageSize = 1000
    public var maxPageSize = 10_000
    /// The longest a consumer's `GET /groups/{g}/records` waits for records (`wait_ms`).
    public var maxRecordsWait: Duration = .seconds(30)
    /// How often a waiting records request looks for new records.
    public var recordsPollInterval: Duration = .milliseconds(5)
    /// Batches one page of a sensor's readings looks at, at most (bounds one request's work).
    public var maxBatchesPerPage = 4096
    /// Readings the aggregator folds from one partition before it turns to the next.
    public var aggregatorFoldBudget = 65_536
    /// How often the server's maintenance runs: a retention pass, then a compaction pass (Kafka's
    /// `log.retention.check.interval.ms` is five minutes; a pass that finds nothing costs a stat
    /// per segment, and a header walk of each segment not yet known dense).
    public var maintenanceInterval: Duration = .seconds(60)
    /// Memory a partition may spend on the sensor indexes of closed segments it keeps loaded
    /// (the active segment's is kept whatever its size: about a byte per reading of it in the
    /// worst case, batches of one reading per sensor).
    public var sensorIndexCacheBytes = 32 << 20
    /// Background compaction rewrites closed segments whose batches average fewer records than
    /// this (the real-time rate of 10 000 sensors at 1 reading/s gives batches of about 125).
    public var compactionBatchRecords = 1024
    /// Bytes a second background compaction reads, at most: a 64 MiB segment in about 2 s.
    public var compactionBytesPerSecond = 32 << 20

    public init() {}

    /// Checks the bounds against each other.
    /// - Throws: `LimitsError` naming the first bound that is out of range.
    public func validate() throws(LimitsError) {
        guard (1...maxPartitions).contains(partitions) else {
            throw LimitsError("partitions must be between 1 and \(maxPartitions), got \(partitions)")
        }
        guard segmentBytes >= minSegmentBytes else {
            throw LimitsError("segment bytes must be at least \(minSegmentBytes) (64 KiB), got \(segmentBytes)")
        }
        guard segmentBytes <= Int(UInt32.max) else {
            throw LimitsError("segment bytes must be below 4 GiB, got \(segmentBytes)")
        }
        guard maxBatchRecords >= 1, maxBatchRecords <= 1 << 20 else {
            throw LimitsError("max batch records must be between 1 and 1048576, got \(maxBatchRecords)")
        }
        guard maxBatchBytes >= 64 << 10 else {
            throw LimitsError("max batch bytes must be at least 64 KiB, got \(maxBatchBytes)")
        }
        guard indexIntervalBytes >= 64 else {
            throw LimitsError("index interval must be at least 64 bytes, got \(indexIntervalBytes)")
        }
        guard commitJournalBytes >= 64 << 10 else {
            throw LimitsError("commit journal bytes must be at least 64 KiB, got \(commitJournalBytes)")
        }
        guard fsyncInterval > .zero else {
            throw LimitsError("fsync interval must be positive")
        }
        guard maxLineBytes >= 256 else { throw LimitsError("max line bytes must be at least 256, got \(maxLineBytes)") }
        guard maxConnections >= 1 else { throw LimitsError("max connections must be at least 1, got \(maxConnections)") }
        guard httpHeaderTimeout > .zero, httpRequestTimeout > .zero, idleTimeout <= .seconds(86_400 * 365),
              httpHeaderTimeout <= .seconds(86_400), httpRequestTimeout <= .seconds(86_400) else {
            throw LimitsError("HTTP header and request timeouts must be between 1 second and a day (the idle timeout at most a year)")
        }
        guard maxConnections <= 1 << 20, maxHTTPConnections <= 1 << 20 else {
            throw LimitsError("connection caps must be at most 1048576 (the kernel's own bound on open files)")
        }
        guard maxSensors >= 0 else { throw LimitsError("max sensors must be 0 (no bound) or more, got \(maxSensors)") }
        guard maxHTTPConnections >= 1 else { throw LimitsError("max HTTP connections must be at least 1, got \(maxHTTPConnections)") }
        guard idleTimeout > .zero else { throw LimitsError("idle timeout must be positive") }
        guard lineProtocolAuthTimeout > .zero else { throw LimitsError("line-protocol authentication timeout must be positive") }
        guard tlsHandshakeTimeout > .zero else { throw LimitsError("TLS handshake timeout must be positive") }
        guard maxPendingReadingsPerConnection >= 1 else { throw LimitsError("max pending readings must be at least 1") }
        guard maxSocketReadBytes >= 4096 else { throw LimitsError("max socket read bytes must be at least 4096, got \(maxSocketReadBytes)") }
        guard socketReadsPerWakeup >= 1 else { throw LimitsError("socket reads per wake-up must be at least 1") }
        guard maxBodyBytes >= 1024 else { throw LimitsError("max body bytes must be at least 1024, got \(maxBodyBytes)") }
        guard maxMQTTPayloadBytes >= 1024 else { throw LimitsError("max MQTT payload bytes must be at least 1024, got \(maxMQTTPayloadBytes)") }
        guard maxWriteBodyBytes >= 1024 else { throw LimitsError("max write body bytes must be at least 1024, got \(maxWriteBodyBytes)") }
        guard (1...maxBatchRecords).contains(maxReadingsPerRequest) else {
            throw LimitsError("max readings per request must be between 1 and \(maxBatchRecords)")
        }
        guard segmentMaxAge > .zero else {
            throw LimitsError("segment max age must be positive")
        }
        guard maintenanceInterval > .zero else { throw LimitsError("maintenance interval must be positive") }
        guard compactionBytesPerSecond >= 1 << 20 else {
            throw LimitsError("compaction bytes per second must be at least 1 MiB, got \(compactionBytesPerSecond)")
        }
    }
}

/// A bound that is out of range, with a message for the operator.
public struct LimitsError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
