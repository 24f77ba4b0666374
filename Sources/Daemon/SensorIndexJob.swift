import Foundation
import LogStore
import Logging
import Metrics
import SensorLogCore
import Synchronization

/// Writes the `.sensors` files closed segments lack (`Log.writeSensorIndexes`) on a thread of its
/// own: at start (segments from before sensor indexes, or left stale by a crash) and after every
/// maintenance pass (segments rolled or swapped since). Appends never wait for it; until a file
/// is there, readers build the segment's index in memory.
final class SensorIndexJob: Sendable {
    let log: Log
    let logger: Logger
    private let stopping = Atomic<Bool>(false)
    private let files = Counter(label: "sensorlog_sensor_index_files_written_total")
    private let job = JobMetrics(job: "sensor_index")

    init(log: Log, logger: Logger) {
        self.log = log
        self.logger = logger
    }

    func stop() { stopping.store(true, ordering: .relaxed) }

    /// One partition's closed segments.
    func run(partition: Int) async {
        await onThread("slog-sensor-index") { self.pass(partition) }
    }

    private func pass(_ partition: Int) {
        let started = DispatchTime.now().uptimeNanoseconds
        do {
            let done = try log.writeSensorIndexes(only: [partition]) { self.stopping.load(ordering: .relaxed) }
            files.increment(by: done.written)
            job.ran(nanoseconds: Int64(DispatchTime.now().uptimeNanoseconds - started))
            if done.written > 0 {
                logger.info("wrote sensor indexes", metadata: ["partition": "\(partition)", "files": "\(done.written)", "bytes": "\(done.bytes)"])
            }
            if done.unindexable > 0 {
                logger.warning("closed segments with a batch that does not decode have no sensor index; run sensorlog verify",
                               metadata: ["segments": "\(done.unindexable)"])
            }
        } catch {
            job.failed()
            logger.error("writing sensor indexes failed; the next pass tries again", metadata: ["error": "\(error)"])
        }
    }
}
