import Foundation
public import LogStore
public import Logging
public import SensorLogCore
public import ServiceLifecycle

/// The `aggregator` consumer group inside sensorlogd: reads every partition from the offsets
/// stored in `aggregates.sqlite`, folds readings into hourly rows, and commits the changed rows
/// with the new offsets in one transaction, every 100 ms or 500 000 readings, and whenever it
/// has caught up. After any crash it resumes from exactly the offsets its rows reflect.
public final class AggregatorService: Service, @unchecked Sendable {
    public let log: Log
    public let storePath: String
    let logger: Logger
    let commitInterval: Duration
    let commitRecords: Int
    private let condition = NSCondition()
    private var stopRequested = false
    private var finished = false
    /// The fold thread is running (so a pause has someone to wait for).
    private var started = false
    /// Asked for by `whilePaused`; the fold thread commits, closes the store and waits.
    private var pauseRequested = false
    private var paused = false
    private var committed: [Int64]
    private var lastError: String?

    /// Commit spacing is measured on `time`'s monotonic clock (the log's by default).
    let time: any TimeSource

    public init(log: Log, logger: Logger, commitInterval: Duration = .milliseconds(100), commitRecords: Int = 2_000_000,
                time: (any TimeSource)? = nil) throws(SQLiteError) {
        self.log = log
        self.time = time ?? log.configuration.time
        self.storePath = DataLayout(log.dataDirectory).aggregates
        self.logger = logger
        self.commitInterval = commitInterval
        self.commitRecords = commitRecords
        // Create the store (and learn its offsets) before the servers start answering /groups.
        committed = try AggregateStore(path: storePath).offsets(partitions: log.partitions.count)
    }

    /// Per partition, the next offset the committed aggregates have not folded yet.
    public var committedOffsets: [Int64] {
        condition.lock()
        defer { condition.unlock() }
        return committed
    }

    public func run() async throws {
        let thread = Thread { [self] in
            nameCurrentThread("slog-aggregator")
            loop()
        }
        thread.start()
        try? await gracefulShutdown()
        requestStop()
        await waitUntilFinished()
    }

    /// Returns once the fold thread has committed and stopped (after `requestStop`).
    public func waitUntilFinished() async {
        while !isFinished { try? await Task.sleep(for: .milliseconds(5)) }
    }

    /// Asks the fold thread to commit what it has and stop.
    public func requestStop() {
        condition.lock()
        stopRequested = true
        condition.broadcast()
        condition.unlock()
    }

    private var isFinished: Bool {
        condition.lock()
        defer { condition.unlock() }
        return finished
    }

    private var shouldStop: Bool {
        condition.lock()
        defer { condition.unlock() }
        return stopRequested
    }

    /// Runs until stopped; a failure (disk full for SQLite, a corrupt batch) is logged and the
    /// fold restarts from the stored offsets after a pause.
    private func loop() {
        condition.lock()
        started = true
        condition.unlock()
        // The connection a failed fold keeps for its retry: opening a new one when the last one
        // closed makes SQLite rebuild `aggregates.sqlite-shm`, and on a nearly full file system
        // with blocks smaller than a page its memory-mapped pages can fault (SIGBUS) when written.
        var kept: AggregateStore?
        while !shouldStop {
            // A pause may put another file at the path (an in-place rebuild): the kept
            // connection is closed before the pauser hears the aggregator is paused.
            if waitWhilePaused(beforeParking: { kept = nil }) { continue }
            do {
                let store = try kept ?? AggregateStore(path: storePath)
                kept = store
                try consume(store)
                kept = nil
            } catch {
                // Kept only when it is clean; a connection stuck in a transaction (a failed
                // ROLLBACK) or in an I/O error state is reopened, as before.
                if kept?.inTransaction ?? false { kept = nil }
                condition.lock()
                lastError = "\(error)"
                condition.unlock()
                logger.error("aggregator stopped on an error; retrying from the committed offsets in 1 s", metadata: ["error": "\(error)"])
                condition.lock()
                if !stopRequested && !pauseRequested { _ = condition.wait(until: Date().addingTimeInterval(1)) }
                condition.unlock()
            }
        }
        condition.lock()
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    /// Runs `body` while the fold thread is stopped with everything it folded committed and its
    /// store closed (an in-place rebuild swaps the store then); the fold resumes afterwards from
    /// the offsets of whatever store is then in place. Blocking: call it from a thread of its own.
    public func whilePaused<T>(_ body: () throws -> T) rethrows -> T {
        condition.lock()
        pauseRequested = true
        condition.broadcast()
        while started && !finished && !paused { condition.wait() }
        condition.unlock()
        defer {
            condition.lock()
            pauseRequested = false
            condition.broadcast()
            condition.unlock()
        }
        return try body()
    }

    /// Parks the fold thread while a pause is asked for. Returns whether it parked.
    /// - Parameter beforeParking: closes what must be closed before the pauser may act (a kept
    ///   connection: an in-place rebuild swaps the file while paused).
    private func waitWhilePaused(beforeParking: () -> Void = {}) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard pauseRequested else { return false }
        beforeParking()
        paused = true
        condition.broadcast()
        while pauseRequested && !stopRequested { condition.wait() }
        paused = false
        return true
    }

    private var shouldPause: Bool {
        condition.lock()
        defer { condition.unlock() }
        return pauseRequested
    }

    private func consume(_ store: AggregateStore) throws {
        let folder = try AggregateFolder(store: store)
        var offsets = try store.offsets(partitions: log.partitions.count)
        publish(offsets)
        let readers = offsets.enumerated().map { log.reader(partition: $0, from: $1) }
        var batch = DecodedBatch()
        var pending = 0
        func now() -> Duration { .nanoseconds(time.monotonicNanoseconds) }
        var lastCommit = now()
        // A commit rewrites every row touched since the last one; with many sensors that costs,
        // so commits are spaced to at least 4 times their own duration (at most 20% of the time).
        var lastCommitCost: Duration = .zero
        while true {
            let stopping = shouldStop
            let pausing = shouldPause
            var progressed = false
            for (p, reader) in readers.enumerated() {
                var budget = log.configuration.limits.aggregatorFoldBudget
                while budget > 0, let first = try reader.next(into: &batch) {
                    try folder.fold(batch, from: first)
                    offsets[p] = reader.nextOffset
                    budget -= batch.count - first
                    pending += batch.count - first
                    progressed = true
                }
            }
            let sinceCommit = now() - lastCommit
            let due = sinceCommit >= max(commitInterval, lastCommitCost * 4)
            // Caught up: commit after 20 ms (not more than 50 times a second, or a trickle of
            // one-reading requests would commit every poll). Not spaced by the last commit's cost:
            // after a burst that cost is the burst's big commit, and four times it kept the fold's
            // last readings uncommitted (and its lag above zero) for up to a second while the fold
            // had nothing else to do (issue 18: consume + aggregate 2.74 -> 0.83 M/s). A commit
            // when caught up writes only the rows touched since the last one.
            let caughtUp = !progressed && sinceCommit >= .milliseconds(20)
            if pending > 0 && (pending >= commitRecords || due || caughtUp || stopping || pausing) {
                let started = now()
                try folder.commit(offsets: offsets, now: time.wallNanoseconds)
                publish(offsets)
                pending = 0
                lastCommit = now()
                lastCommitCost = lastCommit - started
            }
            if (stopping && !progressed) || pausing { return }
            if !progressed {
                condition.lock()
                if !stopRequested && !pauseRequested { _ = condition.wait(until: Date().addingTimeInterval(0.005)) }
                condition.unlock()
            }
        }
    }

    private func publish(_ offsets: [Int64]) {
        condition.lock()
        committed = offsets
        lastError = nil
        condition.unlock()
    }
}
