public import LogStore
public import Logging
public import SensorLogCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The one way into the log, shared by the line protocol and the HTTP API: readings arrive
/// validated; here each is checked against its sensor's type, deduplicated exactly on
/// (sensor_id, timestamp) and appended to its partition.
public final class IngestPipeline: Sendable {
    public let log: Log
    public let validator: ReadingValidator
    public let metrics: IngestMetrics
    let partitions: [PartitionIngest]
    private let outstanding = Mutex<(count: Int, waiters: [CheckedContinuation<Void, Never>])>((0, []))
    private let rejectLogBudget = Mutex<(second: Int64, lines: Int)>((0, 0))
    private let appendFailure = Mutex<LogError?>(nil)
    private let draining = Atomic<Bool>(false)
    private let drainStarted = Mutex<ContinuousClock.Instant?>(nil)
    private let lost = Atomic<Int>(0)
    /// Cluster mode: who appends each partition (see `route(through:)`); nil on one node.
    private let routing = Mutex<(any PartitionRouting)?>(nil)
    /// The next timestamp for a line that carries none (see `serverTimestamp()`).
    private let lastServerTimestamp = Atomic<Int64>(0)
    /// The validator's types, for checking forwarded submissions (`submitAsOwner`).
    private let acceptedTypes: Set<String>

    /// Opens the pipeline over `log`, rebuilding the per-sensor state from what the log holds.
    /// - Complexity: reads and decodes the whole log once.
    public let time: any TimeSource

    /// - Parameter time: receive times and the rejection-log budget read its wall clock (the log's
    ///   by default).
    public init(log: Log, validator: ReadingValidator, metrics: IngestMetrics, time: (any TimeSource)? = nil) async throws(LogError) {
        self.log = log
        self.time = time ?? log.configuration.time
        self.validator = validator
        self.metrics = metrics
        let typeNames = validator.typeNames
        acceptedTypes = Set(typeNames)
        let floors = try Retention.floors(dataDirectory: log.dataDirectory, partitions: log.partitions.count)
        var partitions: [PartitionIngest] = []
        let budget = SensorBudget(limit: log.configuration.limits.maxSensors)
        for p in 0..<log.partitions.count {
            let ingest = PartitionIngest(partition: p, log: log, typeNames: typeNames, floor: floors[p], budget: budget)
            try await ingest.rebuild()
            partitions.append(ingest)
        }
        self.partitions = partitions
    }

    /// Cluster mode: from now on a partition's readings are appended by its owner, through
    /// `routing` (this node's, or forwarded). Call before any listener starts.
    public func route(through routing: any PartitionRouting) async {
        self.routing.withLock { $0 = routing }
        for p in partitions { await p.route(through: routing) }
    }

    /// Takes into the dedupe what a cluster's follower copied into `partition` (see
    /// `PartitionIngest.absorb`).
    public func absorb(partition: Int) async throws(LogError) { try await partitions[partition].absorb() }

    /// A submission another node forwarded, as this partition's owner: the same checks, dedupe
    /// and append as a local one. Not counted in this node's metrics (the forwarding node counts it).
    public func submitAsOwner(_ readings: [Reading], partition: Int, detailed: Bool) async -> Result<SubmissionResult, LogError> {
        guard partition >= 0, partition < partitions.count, readings.allSatisfy({ log.partition(for: $0.sensorID) == partition }) else {
            return .failure(LogError(.invalidArgument, "a forwarded submission holds readings of another partition"))
        }
        guard readings.allSatisfy({ acceptedTypes.contains($0.type) }) else {
            return .failure(LogError(.invalidArgument, "a forwarded submission holds a type this node does not accept; every node needs the same --sensor-type flags"))
        }
        guard routing.withLock({ $0?.owns(partition) }) == true else {
            return .failure(LogError(.unavailable, "this node does not own partition \(partition)"))
        }
        // Not counted for `drain()`: other nodes forward without pause, and the listeners'
        // shutdown would wait for a quiet moment that may not come. The cluster node waits for
        // its handlers itself, before the log closes.
        return await partitions[partition].submit(readings, detailed: detailed)
    }

    /// Readings that were read but could not be appended before shutdown (the log refused them).
    /// sensorlogd exits non-zero when there are any.
    public var lostReadings: Int { lost.load(ordering: .relaxed) }

    /// Counts readings lost at shutdown: logged, counted as `lost_at_shutdown` and remembered
    /// for the exit status.
    public func recordLost(_ count: Int, via transport: Transport) {
        lost.add(count, ordering: .relaxed)
        metrics.rejected(count, via: transport, reason: "lost_at_shutdown")
    }

    /// Distinct sensors known, over all partitions.
    public func sensorCount() async -> Int {
        var total = 0
        for p in partitions { total += await p.sensorCount }
        return total
    }

    /// What `submitWhole` did.
    public enum WholeSubmission: Sendable {
        /// Nothing was written: the reading at `index` belongs to a sensor of type `expected`.
        case typeConflict(index: Int, expected: String)
        case submitted([IngestOutcome])
    }

    /// `submit` for readings that must be written all or none (an HTTP array): every sensor's
    /// type is checked first, and the types of sensors new to the log stay claimed until the
    /// append is done, so no concurrent submission can make an item of `readings` conflict after
    /// the check. Duplicates are still skipped one by one.
    /// - Throws: as `submit`.
    public func submitWhole(_ readings: [Reading], via transport: Transport) async throws(LogError) -> WholeSubmission {
        let indices = byPartition(readings)
        let groups = indices.map { $0.map { (index: $0, reading: readings[$0]) } }
        var claimed: [(partition: Int, sensorIDs: [String])] = []
        func release() async {
            for (p, ids) in claimed where !ids.isEmpty { await partitions[p].releaseClaims(ids) }
        }
        for (p, group) in groups.enumerated() where !group.isEmpty {
            switch await partitions[p].claimTypes(group) {
            case .success(let ids):
                claimed.append((p, ids))
            case .failure(let found):
                // Report the first conflict in the array, wherever its partition.
                var first = found.conflicts[0]
                for (q, later) in groups.enumerated().dropFirst(p + 1) where !later.isEmpty {
                    if let c = await partitions[q].typeConflicts(later).first, c.index < first.index { first = c }
                }
                await release()
                return .typeConflict(index: first.index, expected: first.expected)
            }
        }
        do {
            let outcomes = try await submit(readings, groups: indices, via: transport)
            await release()
            return .submitted(outcomes)
        } catch {
            await release()
            throw error
        }
    }

    /// Appends the new readings among `readings` (already validated) and reports each one's fate.
    /// Returns once what was appended is durable under the fsync policy; counts metrics.
    /// - Throws: the log's error (disk full, I/O) when a partition could not append; readings of
    ///   other partitions may have been appended, and a retry is deduplicated against them.
    public func submit(_ readings: [Reading], via transport: Transport) async throws(LogError) -> [IngestOutcome] {
        try await submit(readings, groups: byPartition(readings), via: transport)
    }

    /// The indices of `readings` by partition, as many groups as partitions.
    private func byPartition(_ readings: [Reading]) -> [[Int]] {
        var groups = [[Int]](repeating: [], count: partitions.count)
        for (i, r) in readings.enumerated() { groups[log.partition(for: r.sensorID)].append(i) }
        return groups
    }

    private func submit(_ readings: [Reading], groups: [[Int]], via transport: Transport) async throws(LogError) -> [IngestOutcome] {
        var outcomes = [IngestOutcome](repeating: .duplicate, count: readings.count)
        try await run(groups.map { $0.map { readings[$0] } }, detailed: true, via: transport) { p, result in
            for (k, outcome) in (result.outcomes ?? []).enumerated() { outcomes[groups[p][k]] = outcome }
        }
        return outcomes
    }

    /// The partition of a sensor's readings.
    public func partition(for sensorID: String) -> Int { log.partition(for: sensorID) }

    /// Retention is about to delete readings up to these timestamps (per partition): from now on
    /// they are refused `too_old`.
    public func raiseFloors(_ floors: [Int64?]) async {
        for (p, floor) in floors.enumerated() where p < partitions.count { await partitions[p].raise(floor: floor) }
    }

    /// Retention deleted the start of some partitions: the dedupe forgets what went.
    public func logStartMoved() async {
        for (p, ingest) in partitions.enumerated() { await ingest.forgetOffsets(before: log.partitions[p].startOffset) }
    }

    /// Deletes each of `sensorIDs` (see `PartitionIngest.delete`); nil for a sensor with no
    /// reading in the log. Returns once every deletion record is durable.
    public func delete(_ sensorIDs: [String]) async throws(LogError) -> [SensorDeletion?] {
        var done: [SensorDeletion?] = []
        for id in sensorIDs { done.append(try await partitions[partition(for: id)].delete(id).get()) }
        return done
    }

    /// A repair removed records of `partition` (see `PartitionIngest.forgetCachedKeys`).
    public func recordsRemoved(partition: Int) async { await partitions[partition].forgetCachedKeys() }

    /// Whether the log holds a reading of `sensorID` the ingest knows of (not deleted since).
    public func knows(_ sensorID: String) async -> Bool { await partitions[partition(for: sensorID)].knows(sensorID) }

    /// What `submitCounting` did: counts, and one refused reading to show in a log line.
    public struct Counted: Sendable {
        public var appended = 0
        public var refused: [String: Int] = [:]
        public var example: (reading: Reading, outcome: IngestOutcome)?
        /// Per partition, the first reading refused for a reason other than a duplicate: its
        /// index in that partition's group.
        public var problems: [(partition: Int, index: Int, outcome: IngestOutcome)] = []
    }

    /// The line protocol's form of `submit`: the same checks and append, counted, with no
    /// per-reading report.
    /// - Parameter groups: the readings by partition (`partition(for:)`), as many groups as partitions.
    @discardableResult
    public func submitCounting(_ groups: [[Reading]], via transport: Transport) async throws(LogError) -> Counted {
        precondition(groups.count == partitions.count)
        var counted = Counted()
        try await run(groups, detailed: false, via: transport) { p, result in
            counted.appended += result.appended
            for (reason, n) in result.refusals where n > 0 { counted.refused[reason, default: 0] += n }
            if counted.example == nil, let first = result.firstRefused { counted.example = (groups[p][first.index], first.outcome) }
            if let problem = result.firstProblem { counted.problems.append((p, problem.index, problem.outcome)) }
        }
        return counted
    }

    private func run(_ groups: [[Reading]], detailed: Bool, via transport: Transport,
                     _ collect: (Int, SubmissionResult) -> Void) async throws(LogError) {
        begin()
        defer { end() }
        var failure: LogError?
        var appended = 0
        var refused: [String: Int] = [:]
        let results: [(Int, Result<SubmissionResult, LogError>)]
        if let routing = routing.withLock({ $0 }) {
            results = await routed(groups, detailed: detailed, routing)
        } else {
            var local: [(Int, Result<SubmissionResult, LogError>)] = []
            for (p, group) in groups.enumerated() where !group.isEmpty { local.append((p, await partitions[p].submit(group, detailed: detailed))) }
            results = local
        }
        for (p, result) in results {
            let group = groups[p]
            switch result {
            case .success(let result):
                appended += result.appended
                for (reason, n) in result.refusals { refused[reason, default: 0] += n }
                collect(p, result)
            case .failure(let error):
                failure = failure ?? error
                // The line protocol keeps what it read and retries it, and MQTT leaves it with the
                // broker to deliver again: not refused (yet). What TCP loses at shutdown is
                // counted as `lost_at_shutdown` there.
                if transport != .tcp && transport != .mqtt { metrics.rejected(group.count, via: transport, reason: error.code.rawValue) }
            }
        }
        metrics.ingested(appended, via: transport)
        for (reason, n) in refused { metrics.rejected(n, via: transport, reason: reason) }
        // Only an append clears a failure: a submission of duplicates alone wrote nothing, and
        // says nothing about whether the log can take writes again.
        if failure != nil || appended > 0 { appendFailure.withLock { $0 = failure } }
        if let failure { throw failure }
    }

    /// Cluster mode: every partition's group at once, each to this node's pipeline or forwarded
    /// to its owner: one after another, a submission would wait for a round trip per partition.
    private func routed(_ groups: [[Reading]], detailed: Bool, _ routing: any PartitionRouting) async -> [(Int, Result<SubmissionResult, LogError>)] {
        await withTaskGroup(of: (Int, Result<SubmissionResult, LogError>).self) { tasks in
            for (p, group) in groups.enumerated() where !group.isEmpty {
                tasks.addTask { [partitions] in
                    (p, routing.owns(p) ? await partitions[p].submit(group, detailed: detailed)
                                        : await routing.forward(group, partition: p, detailed: detailed))
                }
            }
            var out: [(Int, Result<SubmissionResult, LogError>)] = []
            for await result in tasks { out.append(result) }
            return out.sorted { $0.0 < $1.0 }
        }
    }

    /// Why the log cannot accept writes, if it cannot: the last append failed (until one
    /// succeeds), or a background fsync failed. `/health` answers 503 while this is non-nil.
    public var unavailableReason: LogError? {
        if let failure = appendFailure.withLock({ $0 }) {
            // A full disk heals without a write: once there is room for a few of the largest
            // batches again, say so, or a producer that waits for /health would wait forever.
            guard failure.code == .diskFull, freeBytes() >= Int64(4 * log.configuration.limits.maxBatchBytes) else { return failure }
            appendFailure.withLock { if $0?.code == .diskFull { $0 = nil } }
        }
        return log.syncError
    }

    /// Waits until every submission under way has finished (shutdown: after the listeners stop).
    public func drain() async {
        drainStarted.withLock { $0 = $0 ?? .now }
        draining.store(true, ordering: .relaxed)
        await withCheckedContinuation { continuation in
            let ready = outstanding.withLock { state -> Bool in
                if state.count == 0 { return true }
                state.waiters.append(continuation)
                return false
            }
            if ready { continuation.resume() }
        }
    }

    private func freeBytes() -> Int64 {
        var stats = statvfs()
        guard statvfs(log.dataDirectory, &stats) == 0 else { return 0 }
        return Int64(stats.f_bavail) * Int64(stats.f_frsize)
    }

    /// Whether a shutdown is waiting for the submissions under way: a failed one is not retried.
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Whether readings refused with `error` during the drain are still worth a retry: only a
    /// cluster's `unavailable` (no owner answered; one takes over within seconds), and only within
    /// `Limits.shutdownRetryWindow` of the drain's start.
    public func retriesWhileDraining(_ error: LogError) -> Bool {
        guard error.code == .unavailable, let started = drainStarted.withLock({ $0 }) else { return false }
        return ContinuousClock.now - started < log.configuration.limits.shutdownRetryWindow
    }

    /// The receive time for a reading that carries no timestamp: the wall clock, but strictly
    /// after the last one handed out, so that two such readings of one sensor (same socket
    /// read, or same nanosecond on two connections) never share a timestamp and dedupe to one.
    public func serverTimestamp() -> Int64 {
        let now = time.wallNanoseconds
        var last = lastServerTimestamp.load(ordering: .relaxed)
        while true {
            let next = max(now, last &+ 1)
            let (exchanged, current) = lastServerTimestamp.compareExchange(expected: last, desired: next, ordering: .relaxed)
            if exchanged { return next }
            last = current
        }
    }

    /// Counts a submission as under way before its task starts, so that `drain()` cannot miss it.
    /// Pair with `end()`.
    public func begin() {
        outstanding.withLock { $0.count += 1 }
    }

    public func end() {
        let waiters = outstanding.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count -= 1
            guard state.count == 0 else { return [] }
            defer { state.waiters = [] }
            return state.waiters
        }
        for w in waiters { w.resume() }
    }

    /// Logs a rejected line or request, at most `Limits.rejectionLogLinesPerSecond` such lines a
    /// second for the whole process.
    public func logRejection(_ logger: Logger, _ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata,
                             level: Logger.Level = .info) {
        let second = time.wallNanoseconds / 1_000_000_000
        let allowed = rejectLogBudget.withLock { budget -> Bool in
            if budget.second != second { budget = (second, 0) }
            budget.lines += 1
            return budget.lines <= log.configuration.limits.rejectionLogLinesPerSecond
        }
        if allowed { logger.log(level: level, message(), metadata: metadata()) }
    }
}
