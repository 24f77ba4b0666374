import Foundation
import LogStore
import SensorLogCore
import Synchronization

extension AggregateRebuild {
    /// A fold of every partition from its first offset into a new store, in runs (each from
    /// where the last stopped), on all cores: a sensor lives in one partition, so each partition
    /// is folded whole by one worker with a folder of its own (every row takes its readings in
    /// log order, so the rows are bit for bit those of one fold), while one writer thread puts
    /// what the workers hand off into the store. A worker that must drop rows from memory waits
    /// until its hand-offs are written, and reads them back through a connection of its own.
    struct Fold {
        let store: AggregateStore
        /// A reader of a partition from an offset (called from the workers).
        let reader: @Sendable (Int, Int64) -> PartitionReader
        var offsets: [Int64]
        var readings: Int64 = 0
        let totalBytes: Int64
        var bytesRead: Int64 = 0
        /// Partitions whose fold reached a batch appended after `until`.
        var reachedUntil: Set<Int> = []
        /// Per partition, the latest hour of a row it wrote: none of its sensors has a stored row
        /// of a later hour (so a fold of a new store asks the store nothing).
        var latestStoredHour: [Int64]
        /// Asked between batches: true abandons the fold.
        let stopped: @Sendable () -> Bool
        let tuning: Tuning

        /// How a run spreads: workers, and the rows each hands off at once and keeps in memory.
        struct Tuning: Sendable {
            var workers: Int
            /// Hand-offs of this many rows keep the writer busy beside the folds.
            var handOffRows: Int
            /// Rows a worker keeps in memory: together about what one fold kept.
            var maxCachedRows: Int
            /// Hand-offs waiting for the writer before a worker waits too (bounds their memory).
            var queuedHandOffs: Int

            init(workers: Int = ProcessInfo.processInfo.activeProcessorCount, handOffRows: Int = 250_000,
                 maxCachedRows: Int? = nil, queuedHandOffs: Int = 2) {
                self.workers = max(1, workers)
                self.handOffRows = handOffRows
                self.maxCachedRows = maxCachedRows ?? 2_000_000 / self.workers
                self.queuedHandOffs = queuedHandOffs
            }
        }

        init(store: AggregateStore, partitions: Int, totalBytes: Int64, tuning: Tuning = Tuning(),
             stopped: @escaping @Sendable () -> Bool = { false }, reader: @escaping @Sendable (Int, Int64) -> PartitionReader) throws {
            self.store = store
            self.reader = reader
            offsets = [Int64](repeating: 0, count: partitions)
            latestStoredHour = [Int64](repeating: try store.latestHourStart() ?? .min, count: partitions)
            self.totalBytes = totalBytes
            self.stopped = stopped
            self.tuning = tuning
        }

        /// Folds each partition from where it stopped until its reader catches up, a batch
        /// appended after `until`, or the offset `limit` gives for it (asked at each batch; not
        /// beyond: a batch across it is folded up to it), and commits.
        mutating func run(until: Int64?, limit: @escaping @Sendable (Int) -> Int64? = { _ in nil }, progress: (Int64, Int64) -> Void) throws {
            let jobs = offsets.indices.filter { !reachedUntil.contains($0) }.map {
                PartitionJob(partition: $0, from: offsets[$0], limit: limit, latestStoredHour: latestStoredHour[$0], tuning: tuning)
            }
            let writer = AggregateWriter(store: store, queueLimit: tuning.queuedHandOffs)
            let shared = FoldWork(jobs: jobs)
            let threads = (0..<min(max(1, tuning.workers), max(1, jobs.count))).map { n in
                let (path, until, reader, stopped) = (store.path, until, reader, stopped)
                return Thread {
                    nameCurrentThread("slog-fold-\(n)")
                    shared.work { job throws in
                        let lookups = try AggregateStore(path: path, readOnly: true)
                        return try job.fold(until: until, reader: reader, lookups: lookups, writer: writer, stopped: stopped) { shared.read($0) }
                    }
                }
            }
            for thread in threads { thread.start() }
            while !shared.wait(seconds: 0.2) { progress(bytesRead + shared.bytesRead, totalBytes) }
            let outcomes: [PartitionJob.Outcome]
            do {
                outcomes = try shared.outcomes()
            } catch {
                writer.close()
                throw error
            }
            for outcome in outcomes {
                let p = outcome.partition
                offsets[p] = outcome.offset
                readings += outcome.readings
                latestStoredHour[p] = max(latestStoredHour[p], outcome.latestHour)
                if outcome.reachedUntil { reachedUntil.insert(p) }
            }
            bytesRead += shared.bytesRead
            try writer.finish(offsets: offsets)
        }
    }

    /// One partition's part of a run.
    struct PartitionJob: Sendable {
        let partition: Int
        let from: Int64
        let limit: @Sendable (Int) -> Int64?
        let latestStoredHour: Int64
        let tuning: Fold.Tuning

        struct Outcome: Sendable {
            var partition: Int
            var offset: Int64
            var readings: Int64 = 0
            var latestHour = Int64.min
            var reachedUntil = false
        }

        func fold(until: Int64?, reader makeReader: (Int, Int64) -> PartitionReader, lookups: AggregateStore, writer: AggregateWriter,
                  stopped: () -> Bool, read: (Int64) -> Void) throws -> Outcome {
            let folder = try AggregateFolder(store: lookups, maxCachedRows: tuning.maxCachedRows, latestStoredHour: latestStoredHour)
            let reader = makeReader(partition, from)
            var out = Outcome(partition: partition, offset: from)
            var batch = DecodedBatch()
            var counted: Int64 = 0
            defer { read(reader.bytesRead - counted) }
            while let first = try reader.next(into: &batch) {
                if stopped() { throw LogError(.io, "the rebuild was stopped (shutdown); the current store stays") }
                if let until, batch.header.appendTime > until {
                    out.reachedUntil = true  // for good: later batches may be older, but the fold stops here
                    break
                }
                let bound = limit(partition)
                if let bound, batch.baseOffset >= bound { break }
                let end = bound.map { batch.nextOffset > $0 ? batch.firstIndex(atOrAfter: $0) : batch.count } ?? batch.count
                try folder.fold(batch, from: first, to: end)
                if batch.kind == .readings { out.readings += Int64(end - first) }  // not removed records
                // Never past the bound, even when nothing of the batch lies beyond it.
                out.offset = bound.map { min(reader.nextOffset, $0) } ?? reader.nextOffset
                read(reader.bytesRead - counted)
                counted = reader.bytesRead
                // A deletion must be in the store before a row of the sensor is looked up again.
                if folder.pendingRows >= tuning.handOffRows || folder.hasPendingDeletions {
                    try handOff(folder, to: writer, into: &out)
                }
                if let bound, out.offset >= bound { break }
            }
            try handOff(folder, to: writer, into: &out)
            out.latestHour = folder.handedOffHour
            return out
        }

        private func handOff(_ folder: AggregateFolder, to writer: AggregateWriter, into out: inout Outcome) throws {
            let changes = folder.handOff()
            guard !changes.rows.isEmpty || !changes.deletedSensors.isEmpty else { return }
            let ticket = try writer.submit(changes)
            // Rows may leave memory, and deleted sensors be looked up, only once written (this
            // hand-off and, the writer keeping their order, every one before it).
            if folder.cachedRows > tuning.maxCachedRows || !changes.deletedSensors.isEmpty {
                try writer.waitWritten(ticket)
                folder.committed()
            }
        }
    }
}

/// The workers' queue of partitions, what they did, and the bytes they read.
private final class FoldWork: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: [AggregateRebuild.PartitionJob]
    private var done: [AggregateRebuild.PartitionJob.Outcome] = []
    private var failure: (any Error)?
    private var running = 0
    private let read = Atomic<Int64>(0)

    init(jobs: [AggregateRebuild.PartitionJob]) { pending = jobs.reversed() }

    var bytesRead: Int64 { read.load(ordering: .relaxed) }

    func read(_ bytes: Int64) { read.add(bytes, ordering: .relaxed) }

    /// Takes jobs until none is left (or one failed).
    func work(_ body: (AggregateRebuild.PartitionJob) throws -> AggregateRebuild.PartitionJob.Outcome) {
        condition.withLock { running += 1 }
        while let job = condition.withLock({ failure == nil ? pending.popLast() : nil }) {
            do {
                let outcome = try body(job)
                condition.withLock { done.append(outcome) }
            } catch {
                condition.withLock { if failure == nil { failure = error } }
            }
        }
        condition.withLock {
            running -= 1
            condition.broadcast()
        }
    }

    /// Waits up to `seconds` for every worker to finish; true when they have.
    func wait(seconds: Double) -> Bool {
        condition.withLock {
            let deadline = Date().addingTimeInterval(seconds)
            while !(pending.isEmpty || failure != nil) || running > 0 {
                if !condition.wait(until: deadline) { return false }
            }
            return true
        }
    }

    func outcomes() throws -> [AggregateRebuild.PartitionJob.Outcome] {
        try condition.withLock {
            if let failure { throw failure }
            return done
        }
    }
}

/// The one thread that writes a fold's hand-offs into the store, in the order they come.
final class AggregateWriter: @unchecked Sendable {
    private let store: AggregateStore
    private let condition = NSCondition()
    private var queue: [AggregateFolder.Changes] = []
    private var submitted = 0
    private var written = 0
    private var failure: (any Error)?
    private var closing = false
    private var finished = false
    private let queueLimit: Int

    init(store: AggregateStore, queueLimit: Int) {
        self.store = store
        self.queueLimit = max(1, queueLimit)
        Thread { [self] in loop() }.start()
    }

    /// Queues `changes` (waiting while the queue is full); returns the ticket `waitWritten` takes.
    func submit(_ changes: AggregateFolder.Changes) throws -> Int {
        try condition.withLock {
            while queue.count >= queueLimit && failure == nil { condition.wait() }
            if let failure { throw failure }
            queue.append(changes)
            submitted += 1
            condition.broadcast()
            return submitted
        }
    }

    func waitWritten(_ ticket: Int) throws {
        try condition.withLock {
            while written < ticket && failure == nil { condition.wait() }
            if let failure { throw failure }
        }
    }

    /// Writes what is queued, then `offsets`, and stops the thread.
    func finish(offsets: [Int64]) throws {
        close()
        if let failure = condition.withLock({ failure }) { throw failure }
        try store.commit(rows: [], deletedSensors: [], offsets: offsets)
    }

    /// Writes what is queued (unless a write failed) and stops the thread.
    func close() {
        condition.withLock {
            closing = true
            condition.broadcast()
            while !finished { condition.wait() }
        }
    }

    private func loop() {
        nameCurrentThread("slog-fold-writer")
        while let changes = condition.withLock({ () -> AggregateFolder.Changes? in
            while queue.isEmpty && !closing { condition.wait() }
            guard !queue.isEmpty, failure == nil else { return nil }
            defer { condition.broadcast() }  // room in the queue
            return queue.removeFirst()
        }) {
            do {
                // Each hand-off in its own transaction, deletions before rows (the offsets come at the end).
                try store.commit(rows: changes.rows, deletedSensors: changes.deletedSensors, offsets: [])
                condition.withLock {
                    written += 1
                    condition.broadcast()
                }
            } catch {
                condition.withLock {
                    failure = error
                    condition.broadcast()
                }
            }
        }
        condition.withLock {
            finished = true
            condition.broadcast()
        }
    }
}
