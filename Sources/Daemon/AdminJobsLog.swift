import Aggregator
import Foundation
import HTTPAPI
import Ingest
import LogStore
import SensorLogCore
import Synchronization

/// The jobs that change segments: compaction, retention, sensor deletion.
extension AdminService {
    func compactJob(_ body: inout AdminBody) async throws(AdminRefusal) -> Work {
        let target = try body.size("target_segment_bytes") ?? 64 << 20
        guard target >= 64 << 10, target <= Int64(Int32.max) else {
            throw AdminBody.invalid("target_segment_bytes", "must be between 65536 and 2147483647")
        }
        let deletes = try body.strings("delete_sensors")
        try await requireKnown(deletes, field: "delete_sensors")
        return { job in
            let deleted = deletes.isEmpty ? [] : try await self.deleteSensors(deletes, job)
            let started = Date()
            var result = try await self.rewriteSegments(job, merging: Int(target), roll: Set(deleted.map(\.partition)))
            result.seconds = Date().timeIntervalSince(started)
            let summary = result.segmentsBefore == result.segmentsAfter && result.records == 0
                ? "nothing to compact: \(result.segmentsBefore) segments, no run of closed segments to merge and no deleted sensor's readings left"
                : String(format: "compacted %d segments into %d; rewrote %lld records, %lld -> %lld bytes in %.2f s", result.segmentsBefore,
                         result.segmentsAfter, result.records, result.bytesBefore, result.bytesAfter, result.seconds)
            return .done(["segments_before": result.segmentsBefore, "segments_after": result.segmentsAfter,
                          "bytes_rewritten_before": result.bytesBefore, "bytes_rewritten_after": result.bytesAfter,
                          "records": result.records, "seconds": result.seconds], summary: [summary])
        }
    }

    func deleteJob(_ body: inout AdminBody) async throws(AdminRefusal) -> Work {
        let ids = try body.strings("sensors")
        guard !ids.isEmpty else { throw AdminBody.invalid("sensors", "name at least one sensor") }
        try await requireKnown(ids, field: "sensors")
        return { job in
            let deleted = try await self.deleteSensors(ids, job)
            let partitions = Set(deleted.map(\.partition))
            let rewritten = try await self.rewriteSegments(job, merging: nil, only: partitions, roll: partitions)
            let behind = deleted.filter { self.aggregator.committedOffsets[$0.partition] <= $0.offset }
            let lines = deleted.map {
                "deleted sensor \($0.sensorID) (partition \($0.partition), deletion record at offset \($0.offset)); "
                    + "its readings up to \(Timestamp.formatISO8601($0.lastReading)) are refused from now on"
            } + ["rewrote \(rewritten.segmentsRewritten) closed segment(s) without its readings"]
                + (behind.isEmpty ? [] : ["the aggregator has not folded the deletion of \(behind.map(\.sensorID).joined(separator: ", ")) yet "
                                          + "(it is behind, or failing: see its log): the rows go when it does"])
            return .done(["deleted": deleted.map { ["sensor_id": $0.sensorID, "partition": $0.partition, "offset": $0.offset,
                                                    "last_reading": Timestamp.formatISO8601($0.lastReading)] },
                          "segments_rewritten": rewritten.segmentsRewritten, "bytes_rewritten_before": rewritten.bytesBefore,
                          "bytes_rewritten_after": rewritten.bytesAfter], summary: lines)
        }
    }

    /// 404 unless the log holds a reading of every sensor named (nothing is changed then).
    func requireKnown(_ ids: [String], field: String) async throws(AdminRefusal) {
        var unknown: [String] = []
        for id in ids where await !pipeline.knows(id) { unknown.append(id) }
        guard unknown.isEmpty else {
            throw AdminRefusal(status: 404, code: "unknown_sensor",
                               "no readings of sensor \(unknown.map { "'\($0)'" }.joined(separator: ", ")) in the log: nothing to delete (a typo?); nothing was changed",
                               field: field)
        }
    }

    /// Deletes the sensors (deletion records, masks, refusals of their resends) and waits (a
    /// minute at most) until the aggregator has folded the records, so their rows are gone when
    /// the job says done.
    func deleteSensors(_ ids: [String], _ job: AdminJob) async throws -> [SensorDeletion] {
        job.phase("recording the deletions")
        let deleted = try await pipeline.delete(ids).compactMap { $0 }
        job.phase("waiting for the aggregator to drop the sensors' rows")
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(60)
        while deleted.contains(where: { aggregator.committedOffsets[$0.partition] <= $0.offset }), clock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        return deleted
    }

    /// Under the segment lock, on a thread: merges runs of closed segments of the partitions
    /// `only` (all when nil) up to `merging` bytes (nil: none) and rewrites the segments that
    /// hold deleted readings, at the background compaction's pace. The active segments of
    /// `roll` are closed first, so what a deletion masked there goes too.
    func rewriteSegments(_ job: AdminJob, merging: Int?, only: Set<Int>? = nil, roll: Set<Int> = []) async throws -> Compactor.Result {
        job.phase("waiting for the server's own maintenance")
        let log = self.log
        return try await maintenance.segmentWork.run {
            try await onThread("slog-admin") { () throws -> Compactor.Result in
                job.phase("rewriting segments")
                if !roll.isEmpty { try log.rollActiveSegments(only: roll) }
                let partitions = log.partitions.filter { only?.contains($0.id) ?? true }
                let total = partitions.reduce(Int64(0)) { $0 + $1.closedSegmentBytes }
                let pacer = Pacer(bytesPerSecond: log.configuration.limits.compactionBytesPerSecond)
                var done: Int64 = 0
                let throttle = { (bytes: Int) throws in
                    if self.stopping.load(ordering: .relaxed) { throw CompactionStopped() }
                    done += Int64(bytes)
                    job.progress(done: done, total: max(total, done))
                    pacer.spend(bytes)
                }
                var result = Compactor.Result()
                let segmentsBefore = partitions.reduce(0) { $0 + $1.segmentCount }
                for p in partitions.map(\.id) {
                    if let merging { result.add(try log.compactOnline(partition: p, memory: CompactionMemory(), merging: merging, throttle: throttle)) }
                    result.add(try log.dropDeleted(partition: p, throttle: throttle))
                }
                result.segmentsBefore = segmentsBefore
                result.segmentsAfter = partitions.reduce(0) { $0 + $1.segmentCount }
                return result
            }
        }
    }

    func retentionJob(_ body: inout AdminBody) throws(AdminRefusal) -> Work {
        let olderThan = try body.duration("older_than")
        let maxBytes = try body.size("max_bytes")
        let force = try body.bool("force")
        let dryRun = try body.bool("dry_run")
        guard olderThan != nil || maxBytes != nil else { throw AdminBody.invalid("older_than", "give older_than or max_bytes") }
        return { job in
            job.phase("planning")
            let log = self.log
            let now = log.configuration.time.wallNanoseconds
            let (candidates, blocked) = try await onThread("slog-admin") { () throws -> ([Retention.Candidate], [String]) in
                let directory = try LogDirectory(dataDirectory: log.dataDirectory)
                let candidates = try Retention.plan(directory, olderThan: olderThan.map { now - Int64($0 / .nanoseconds(1)) }, maxBytes: maxBytes)
                return (candidates, try RetentionReport.unread(candidates, dataDirectory: log.dataDirectory, partitions: log.partitions.count))
            }
            if dryRun {
                let report = RetentionReport.report(candidates, refused: force ? [] : blocked, deleted: false, dryRun: true)
                return .done(report.json, summary: report.text)
            }
            guard blocked.isEmpty || force else {
                let report = RetentionReport.report(candidates, refused: blocked, deleted: false, dryRun: false)
                throw JobFailure(code: "refused", "\(blocked.count) segment(s) not yet read by a consumer group; let it catch up or pass --force",
                                 exit: .problemsFound, result: report.json, summary: report.text + blocked.map { "refusing: \($0)" })
            }
            job.phase("waiting for the server's own maintenance")
            let pass = try await self.maintenance.segmentWork.run { () async throws -> RetentionPassResult in
                job.phase("deleting segments")
                return try await self.maintenance.retention(RetentionPolicy(maxAge: olderThan, maxBytes: maxBytes))
            }
            let removed = candidates.filter { $0.endOffset <= log.partitions[$0.partition].startOffset }
            let held = pass.blocked.sorted { $0.key < $1.key }.map { "partition \($0.key): \($0.value)" }
            let report = RetentionReport.report(removed, refused: held, deleted: !removed.isEmpty, dryRun: false)
            guard held.isEmpty else {
                throw JobFailure(code: "refused", "retention would pass what the aggregator has folded; it stopped there",
                                 exit: .problemsFound, result: report.json, summary: report.text + held.map { "refusing: \($0)" })
            }
            return .done(report.json, summary: report.text)
        }
    }
}
