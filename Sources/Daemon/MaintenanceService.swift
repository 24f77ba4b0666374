public import Aggregator
import Foundation
public import Ingest
public import LogStore
public import Logging
import Metrics
public import SensorLogCore
public import ServiceLifecycle
import Synchronization

/// The server's own maintenance, one job at a time (so a compaction never swaps segments that
/// retention is deleting): every `Limits.maintenanceInterval` a retention pass
/// (`--retention-time`, `--retention-bytes`; `Log.applyRetention`), then a background compaction
/// pass (`--compaction`; `Log.compactOnline`), then the sensor indexes closed segments lack
/// (`Log.writeSensorIndexes`, also at start), each on a thread of its own.
///
/// The aggregator holds retention back: what it has not folded is never deleted (the pass
/// waits, logs why once, and sets `sensorlog_retention_blocked`). Other consumer groups do not,
/// as in Kafka: one whose committed offset falls below the new start resumes at the start, and
/// the readings it skipped are logged and counted.
public final class MaintenanceService: Service, Sendable {
    let log: Log
    let pipeline: IngestPipeline
    let aggregator: AggregatorService
    public let policy: RetentionPolicy
    let time: any TimeSource
    let logger: Logger
    let metrics: RetentionMetrics
    public let compacts: Bool
    let compaction: CompactionJob
    let sensorIndexes: SensorIndexJob
    /// Partitions held back at the last pass, so the reason is logged once per episode.
    private let blocked = Mutex<Set<Int>>([])
    /// Held by whatever changes segments (a pass here, an admin job), so that two never do at
    /// once: a compaction never swaps segments retention is deleting.
    let segmentWork = AsyncLock()

    public init(log: Log, pipeline: IngestPipeline, aggregator: AggregatorService, policy: RetentionPolicy, compacts: Bool,
                time: any TimeSource, logger: Logger) {
        self.log = log
        self.pipeline = pipeline
        self.aggregator = aggregator
        self.policy = policy
        self.compacts = compacts
        self.time = time
        self.logger = logger
        metrics = RetentionMetrics(partitions: log.partitions.count)
        compaction = CompactionJob(log: log, logger: logger)
        sensorIndexes = SensorIndexJob(log: log, logger: logger)
    }

    public func run() async throws {
        let interval = log.configuration.limits.maintenanceInterval
        // Retention first: after an upgrade the first index pass reads the whole log.
        if !policy.isOff { await segmentWork.run { await retentionPass() } }
        await writeSensorIndexes()
        while true {
            do {
                try await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
            } catch {
                return  // shutting down
            }
            await segmentWork.run {
                if !policy.isOff { await retentionPass() }
                // A shutdown stops a compaction between batches (what it wrote is discarded).
                if compacts {
                    let job = compaction
                    await withGracefulShutdownHandler { await job.run() } onGracefulShutdown: { job.stop() }
                }
            }
            await writeSensorIndexes()
        }
    }

    /// Writes the `.sensors` files closed segments lack, stopping between segments at shutdown;
    /// a partition at a time, so an operator's job waits for one partition's worth at most.
    public func writeSensorIndexes() async {
        let job = sensorIndexes
        for p in log.partitions.indices {
            await segmentWork.run {
                await withGracefulShutdownHandler { await job.run(partition: p) } onGracefulShutdown: { job.stop() }
            }
        }
    }

    /// One background compaction pass now, over every partition.
    @discardableResult
    public func compactionPass() async -> Compactor.Result { await compaction.run() }

    /// One retention pass now. A failure is logged and counted; the next pass tries again.
    @discardableResult
    public func retentionPass() async -> RetentionPassResult? {
        do {
            return try await retention(policy)
        } catch {
            logger.error("retention failed; the next pass tries again", metadata: ["error": "\(error)"])
            return nil
        }
    }

    /// One retention pass under `policy` (the server's, or an operator's `sensorlog retention`),
    /// never past what the aggregator has folded; logged and counted. The caller holds
    /// `segmentWork`.
    func retention(_ policy: RetentionPolicy) async throws(LogError) -> RetentionPassResult {
        let started = time.monotonicNanoseconds
        let before = log.partitions.map(\.startOffset)
        let result: RetentionPassResult
        do {
            result = try await log.applyRetention(policy, now: time.wallNanoseconds, foldedUpTo: aggregator.committedOffsets,
                                                  floorsRaised: { await pipeline.raiseFloors($0) })
        } catch {
            metrics.failed()
            throw error
        }
        if !result.removed.isEmpty { await pipeline.logStartMoved() }
        report(result, seconds: Double(time.monotonicNanoseconds - started) / 1e9)
        reportSkippedGroups(before: before)
        return result
    }

    private func report(_ result: RetentionPassResult, seconds: Double) {
        metrics.ran(result, seconds: seconds)
        for removed in result.removed {
            logger.info("retention deleted segments", metadata: [
                "partition": "\(removed.partition)", "segments": "\(removed.segments)", "bytes": "\(removed.bytes)",
                "start_offset": "\(removed.startOffset)", "floor": "\(Timestamp.formatISO8601(removed.floor))",
                "seconds": "\(String(format: "%.3f", seconds))",
            ])
        }
        let newlyBlocked = blocked.withLock { held in
            defer { held = Set(result.blocked.keys) }
            return result.blocked.filter { !held.contains($0.key) }
        }
        for (partition, why) in newlyBlocked.sorted(by: { $0.key < $1.key }) {
            logger.warning("retention is held back", metadata: ["partition": "\(partition)", "reason": "\(why)"])
        }
    }

    /// Consumer groups (other than the aggregator) whose committed offsets the deletion passed.
    private func reportSkippedGroups(before: [Int64]) {
        let groups = ConsumerGroups(dataDirectory: log.dataDirectory, partitions: log.partitions.count)
        for name in groups.list() {
            guard let committed = try? groups.committed(name) else { continue }
            for (p, partition) in log.partitions.enumerated() {
                let start = partition.startOffset
                guard start > before[p], committed[p] < start else { continue }
                let skipped = start - max(committed[p], before[p])
                logger.warning("retention deleted readings a consumer group had not read; it resumes at the log's start",
                               metadata: ["group": "\(name)", "partition": "\(p)", "committed": "\(committed[p])",
                                          "start_offset": "\(start)", "skipped": "\(skipped)"])
                metrics.skipped(skipped, group: name)
            }
        }
    }
}

/// The retention metrics (described in `DaemonMetrics`).
final class RetentionMetrics: Sendable {
    private let blocked: [Metrics.Gauge]
    private let segments = Counter(label: "sensorlog_retention_segments_removed_total")
    private let bytes = Counter(label: "sensorlog_retention_bytes_removed_total")
    private let job = JobMetrics(job: "retention")

    init(partitions: Int) {
        blocked = (0..<partitions).map { Metrics.Gauge(label: "sensorlog_retention_blocked", dimensions: [("partition", String($0))]) }
        for gauge in blocked { gauge.record(0) }
    }

    func ran(_ result: RetentionPassResult, seconds: Double) {
        job.ran(nanoseconds: Int64(seconds * 1e9))
        segments.increment(by: result.segments)
        bytes.increment(by: Int(result.bytes))
        for (p, gauge) in blocked.enumerated() { gauge.record(result.blocked[p] == nil ? 0 : 1) }
    }

    func failed() { job.failed() }

    func skipped(_ readings: Int64, group: String) {
        Counter(label: "sensorlog_consumer_group_skipped_total", dimensions: [("group", group)]).increment(by: Int(readings))
    }
}

/// One kind of maintenance job's `sensorlog_maintenance_jobs_total{job,outcome}` and
/// `sensorlog_maintenance_job_duration_seconds{job}`.
struct JobMetrics: Sendable {
    private let ok: Counter
    private let failures: Counter
    private let duration: Metrics.Timer

    init(job: String) {
        ok = Counter(label: "sensorlog_maintenance_jobs_total", dimensions: [("job", job), ("outcome", "ok")])
        failures = Counter(label: "sensorlog_maintenance_jobs_total", dimensions: [("job", job), ("outcome", "failed")])
        duration = Metrics.Timer(label: "sensorlog_maintenance_job_duration_seconds", dimensions: [("job", job)])
    }

    func ran(nanoseconds: Int64) {
        ok.increment()
        duration.recordNanoseconds(nanoseconds)
    }

    func failed() { failures.increment() }
}

/// A lock for async code that may hold it across suspensions (a maintenance pass, an admin
/// job); waiters are served in order.
actor AsyncLock {
    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func lock() async {
        guard held else {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func unlock() {
        if waiters.isEmpty { held = false } else { waiters.removeFirst().resume() }
    }

    /// Runs `body` holding the lock.
    nonisolated func run<T: Sendable>(_ body: () async throws -> T) async rethrows -> T {
        await lock()
        do {
            let value = try await body()
            await unlock()
            return value
        } catch {
            await unlock()
            throw error
        }
    }
}
