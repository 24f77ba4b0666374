import Aggregator
import Foundation
import HTTPAPI
import Ingest
import LogStore
import SensorLogCore
import Synchronization

/// The jobs that change what is derived from the log: group offsets, the aggregates; and the
/// check of it all.
extension AdminService {
    func resetJob(_ body: inout AdminBody) throws(AdminRefusal) -> Work {
        guard let group = try body.string("group") else { throw AdminBody.invalid("group", "name the consumer group") }
        guard group != AggregateStore.group else {
            throw AdminBody.invalid("group", "the aggregator group is reset by rebuild-aggregates, which replays the log into a new store")
        }
        let to = try body.string("to")
        let offset = try body.int("to_offset")
        let datetime = try body.time("to_datetime")
        let partition = try body.int("partition").map(Int.init)
        let create = try body.bool("create")
        let execute = try body.bool("execute")
        let target: ConsumerGroups.ResetTarget
        switch (to, offset, datetime) {
        case ("earliest"?, nil, nil): target = .earliest
        case ("latest"?, nil, nil): target = .latest
        case (nil, let o?, nil): target = .offset(o)
        case (nil, nil, let t?): target = .timestamp(t)
        default: throw AdminBody.invalid("to", "give exactly one of to (earliest or latest), to_offset, to_datetime")
        }
        if let partition, !log.partitions.indices.contains(partition) { throw AdminBody.invalid("partition", "no partition \(partition)") }
        let groups = ConsumerGroups(dataDirectory: log.dataDirectory, partitions: log.partitions.count)
        let before: [Int64]?
        do { before = try groups.committed(group) } catch { throw AdminBody.invalid("group", error.message) }
        if before == nil && !create {
            let known = groups.list()
            throw AdminRefusal(status: 404, code: "unknown_group",
                               "no consumer group '\(group)' (groups: \(known.isEmpty ? "none" : known.joined(separator: ", "))); pass create to start it",
                               field: "group")
        }
        let log = self.log
        return { _ in
            let after = try groups.resetOffsets(
                group, to: target, partition: partition,
                start: { (p: Int) throws(LogError) -> Int64 in log.partitions[p].startOffset },
                end: { (p: Int) throws(LogError) -> Int64 in log.partitions[p].endOffset },
                seek: { (p: Int, t: Int64) throws(LogError) -> Int64 in try log.offset(partition: p, atOrAfter: t) })
            if execute { try groups.commit(group, offsets: after) }
            let lines = after.enumerated().filter { partition == nil || partition == $0.offset }.map { p, o in
                "\(group) partition \(p): \(before.map { String($0[p]) } ?? "none") -> \(o)"
            } + [execute ? "offsets written" : "dry run: add --execute to write them"]
            return .done(["group": group, "executed": execute, "before": before.map { $0 as Any } ?? NSNull(), "after": after], summary: lines)
        }
    }

    func rebuildJob(_ body: inout AdminBody) throws(AdminRefusal) -> Work {
        let until = try body.time("until")
        if until != nil, (try? Retention.floors(dataDirectory: log.dataDirectory, partitions: log.partitions.count))?.contains(where: { $0 != nil }) ?? true {
            throw AdminBody.invalid("until", "an in-place rebuild until a time, once retention has cut the log, would count readings twice; "
                                    + "rebuild into another file (sensorlog rebuild-aggregates --output)")
        }
        return { job in
            job.phase("waiting for another rebuild")
            return try await self.rebuildWork.run { try await self.rebuild(job, until: until) }
        }
    }

    private func rebuild(_ job: AdminJob, until: Int64?) async throws -> AdminJob.Outcome {
        let (log, aggregator) = (self.log, self.aggregator)
        job.phase("folding the log from its start")
        // A repair's marker set meanwhile asks for a rebuild after this one: only the marker this
        // rebuild found is its to clear.
        let pending = AggregateRebuild.isPending(dataDirectory: log.dataDirectory)
        let result = try await onThread("slog-admin") { () throws -> AggregateRebuild.Result in
            let result = try AggregateRebuild.rebuildWhileServing(
                log: log, aggregator: aggregator, until: until, stopped: { self.stopping.load(ordering: .relaxed) },
                progress: { done, total in job.progress(done: done, total: total) })
            // The store is the fold of the log again: the repair's marker no longer applies.
            if pending {
                try log.configuration.fileOperations.remove(DataLayout(log.dataDirectory).aggregatesRebuildPending,
                                                            display: AggregateRebuild.pendingMarker)
            }
            return result
        }
        let rate = Double(result.readings) / max(result.seconds, 1e-9)
        var lines = [String(format: "rebuilt %lld readings into %d hourly rows in %.2f s (%.1f M readings/s) -> %@", result.readings, result.rows,
                            result.seconds, rate / 1e6, AggregateStore.fileName)]
        if result.keptRows > 0 { lines.insert("kept \(result.keptRows) hourly rows from the current store: their hours began before the retained log", at: 0) }
        return .done(["readings": result.readings, "rows": result.rows, "seconds": result.seconds, "readings_per_second": rate,
                      "kept_rows": result.keptRows, "output": AggregateStore.fileName, "offsets": result.offsets], summary: lines)
    }

    /// `verify`, and `verify --repair` while serving: the check runs with the segments held
    /// still (no compaction swap or retention cut in the middle of it); the repair salvages
    /// damaged closed segments and rewrites bad index files through the compaction swap
    /// (`Log.repairOnline`), then rebuilds the aggregates in place when the aggregator may have
    /// folded records the salvage removed (or a repair's rebuild is pending). A damaged active
    /// segment is left for the stopped server, and the job says so (exit 1).
    func verifyJob(_ body: inout AdminBody) throws(AdminRefusal) -> Work {
        let repair = try body.bool("repair")
        return { job in
            job.phase("waiting for the server's own maintenance")
            let (found, repairs, removed) = try await self.maintenance.segmentWork.run {
                let found = try await self.check(job)
                guard repair else { return (found, LogRepair.Outcome?.none, [Int: Int64]()) }
                job.phase("repairing")
                let (repairs, removed) = try await self.repairSegments(found)
                return (found, Optional(repairs), removed)
            }
            guard var repairs else { return try Self.verdict(found, repairs: nil, after: nil) }
            for p in removed.keys { await self.pipeline.recordsRemoved(partition: p) }
            if AggregateRebuild.isPending(dataDirectory: self.log.dataDirectory) {
                _ = try await self.rebuildWork.run { try await self.rebuild(job, until: nil) }
                repairs.done.append("\(AggregateStore.fileName): rebuilt from the repaired log in place while serving")
            }
            let after = try await self.maintenance.segmentWork.run { try await self.check(job) }
            return try Self.verdict(found, repairs: repairs, after: after)
        }
    }

    private func check(_ job: AdminJob) async throws -> LogCheck.Findings {
        let log = self.log
        return try await onThread("slog-admin") { () throws -> LogCheck.Findings in
            job.phase("verifying")
            return try LogCheck.check(try LogDirectory(dataDirectory: log.dataDirectory)) { job.progress(done: $0, total: $1) }
        }
    }

    /// Repairs the partitions with problems; per partition, the first offset now removed. The
    /// rebuild marker goes down before a segment the aggregator may have folded changes, so a
    /// crash before the rebuild still ends in one (at the next start, or the next repair).
    private func repairSegments(_ found: LogCheck.Findings) async throws -> (LogRepair.Outcome, [Int: Int64]) {
        let (log, aggregator) = (self.log, self.aggregator)
        return try await onThread("slog-admin") { () throws -> (LogRepair.Outcome, [Int: Int64]) in
            var outcome = LogRepair.Outcome()
            var removed: [Int: Int64] = [:]
            for partition in found.partitions where !partition.problems.isEmpty {
                let (repair, first) = log.repairOnline(partition) { offsets in
                    if aggregator.committedOffsets[partition.partition] > offsets.lowerBound,
                       !AggregateRebuild.isPending(dataDirectory: log.dataDirectory) {
                        try AggregateRebuild.markPending(dataDirectory: log.dataDirectory)
                    }
                }
                outcome.done += repair.done
                outcome.failed += repair.failed
                if let first { removed[partition.partition] = first }
            }
            return (outcome, removed)
        }
    }

    /// The verify report; exit 1 (a failed job) when errors remain.
    static func verdict(_ found: LogCheck.Findings, repairs: LogRepair.Outcome?, after: LogCheck.Findings?) throws -> AdminJob.Outcome {
        let report = LogCheck.report(found: found, repairs: repairs, after: after)
        let remaining = (after ?? found).errors.count
        guard remaining == 0 else {
            throw JobFailure(code: "problems_found", "\(remaining) error(s) in the log", exit: .problemsFound, result: report.json,
                             summary: report.text)
        }
        return .done(report.json, summary: report.text)
    }
}
