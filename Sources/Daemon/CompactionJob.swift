import Foundation
import LogStore
import Logging
import Metrics
import SensorLogCore
import Synchronization

/// Background compaction: one pass over every partition (`Log.compactOnline`) on a thread of its
/// own (it reads and writes whole segments, and sleeps to keep to
/// `Limits.compactionBytesPerSecond`), stoppable between batches.
final class CompactionJob: Sendable {
    let log: Log
    let logger: Logger
    private let memory = CompactionMemory()
    private let stopping = Atomic<Bool>(false)
    private let segments = Counter(label: "sensorlog_compaction_segments_rewritten_total")
    private let bytesRead = Counter(label: "sensorlog_compaction_bytes_read_total")
    private let bytesWritten = Counter(label: "sensorlog_compaction_bytes_written_total")
    private let job = JobMetrics(job: "compaction")

    init(log: Log, logger: Logger) {
        self.log = log
        self.logger = logger
    }

    /// Asks a running pass to stop at its next batch (shutdown).
    func stop() { stopping.store(true, ordering: .relaxed) }

    /// One pass over every partition; returns what it did (also logged and counted).
    @discardableResult
    func run() async -> Compactor.Result {
        await onThread("slog-compact") { self.pass() }
    }

    private func pass() -> Compactor.Result {
        var total = Compactor.Result()
        let started = DispatchTime.now().uptimeNanoseconds
        let pacer = Pacer(bytesPerSecond: log.configuration.limits.compactionBytesPerSecond)
        for p in log.partitions.indices where !stopping.load(ordering: .relaxed) {
            do {
                let result = try log.compactOnline(partition: p, memory: memory) { bytes in
                    if stopping.load(ordering: .relaxed) { throw CompactionStopped() }
                    pacer.spend(bytes)
                }
                guard result.bytesBefore > 0 else { continue }
                report(result, partition: p)
                total.add(result)
            } catch is CompactionStopped {
                break
            } catch {
                logger.error("background compaction failed; the next pass tries again", metadata: ["partition": "\(p)", "error": "\(error)"])
                job.failed()
            }
        }
        job.ran(nanoseconds: Int64(DispatchTime.now().uptimeNanoseconds - started))
        return total
    }

    private func report(_ result: Compactor.Result, partition: Int) {
        segments.increment(by: result.segmentsRewritten)
        bytesRead.increment(by: Int(result.bytesBefore))
        bytesWritten.increment(by: Int(result.bytesAfter))
        logger.info("compacted segments", metadata: [
            "partition": "\(partition)", "segments_before": "\(result.segmentsBefore)", "segments_after": "\(result.segmentsAfter)",
            "bytes_before": "\(result.bytesBefore)", "bytes_after": "\(result.bytesAfter)", "records": "\(result.records)",
        ])
    }
}

struct CompactionStopped: Error {}

/// Keeps a job to a byte rate: after each chunk, sleeps until the bytes so far are due.
final class Pacer: @unchecked Sendable {
    private let bytesPerSecond: Double
    private let started = DispatchTime.now().uptimeNanoseconds
    private var spent: Double = 0

    init(bytesPerSecond: Int) { self.bytesPerSecond = Double(bytesPerSecond) }

    func spend(_ bytes: Int) {
        spent += Double(bytes)
        let due = spent / bytesPerSecond
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
        if due > elapsed + 0.001 { usleep(UInt32(min(1, due - elapsed) * 1e6)) }
    }
}
