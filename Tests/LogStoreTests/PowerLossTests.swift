import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// Power loss, beyond kill -9: the page cache goes too. Each scenario appends (sequentially and
/// from several threads), rolls, compacts and applies retention on a `SimulatedDisk`, cuts the
/// power at a random file operation (a write, sync, truncate, rename, unlink or directory sync
/// of an append, a roll, a journal checkpoint, a compaction swap or a retention delete), puts
/// the files back as the model says they survive, and reopens; sometimes the power goes again
/// during that recovery. Under `always` every acknowledged reading must be back at its offset,
/// exactly once; under `interval` what is back must be a prefix of what was written, holding at
/// least what the rolls synced. Recovery must never refuse, and `verify` must find nothing wrong.
///
/// `SENSORLOG_TEST_SEED` repeats a run (the appending threads' interleaving aside);
/// `SENSORLOG_POWER_LOSS_SCENARIOS` sets how many scenarios a test runs.
@Suite(.serialized) struct PowerLossTests {
    static let partitions = 2

    static let limits: Limits = {
        var limits = Limits()
        limits.partitions = partitions
        limits.minSegmentBytes = 4 << 10
        limits.segmentBytes = 8 << 10
        limits.commitJournalBytes = 64 << 10  // the least: a checkpoint every few dozen appends
        limits.fsyncInterval = .milliseconds(5)
        return limits
    }()

    static func scenarios(_ fallback: Int) -> Int {
        ProcessInfo.processInfo.environment["SENSORLOG_POWER_LOSS_SCENARIOS"].flatMap(Int.init) ?? fallback
    }

    @Test func alwaysKeepsEveryAcknowledgedReading() async throws {
        let stats = try await run(policy: .always, scenarios: Self.scenarios(160), seed: testSeed())
        #expect(stats.cutsDuringWork > 0)
    }

    @Test func intervalKeepsAPrefixAndAlwaysReopens() async throws {
        let stats = try await run(policy: .interval, scenarios: Self.scenarios(80), seed: testSeed())
        #expect(stats.cutsDuringWork > 0)
    }

    /// What a test's scenarios covered, printed at its end.
    struct Stats: CustomStringConvertible {
        var scenarios = 0
        var cutsDuringWork = 0
        var cutsAfterWork = 0
        var cutsDuringRecovery = 0
        /// Where the power was cut, by what the log was doing, and by "thread operation file".
        var cutIn: [String: Int] = [:]
        var cutAt: [String: Int] = [:]
        var acknowledged = 0
        var replayedBatches = 0
        var truncations = 0
        var partlyKeptFiles = 0
        var maintenance = Maintenance()

        /// What the work's maintenance did (before the power cut).
        struct Maintenance {
            var compactedRuns = 0
            var deletedSegments = 0
        }

        mutating func cut(at operation: String) {
            cutsDuringWork += 1
            cutAt[operation, default: 0] += 1
            cutIn[Self.phase(of: operation), default: 0] += 1
        }

        /// What the log was doing at `operation` ("label-or-thread operation file").
        static func phase(of operation: String) -> String {
            let words = operation.split(separator: " ").map(String.init)
            guard words.count == 3 else { return "?" }
            let (who, op, file) = (words[0], words[1], words[2])
            switch who {
            case "slog-maintain": return "retention"
            case "compaction": return "compaction"
            case "roll": return "roll"
            case "open": return "open"
            case "slog-sync": return "interval sync"
            case "slog-commit": return op == "sync" && file == "journal" ? "group commit" : "journal checkpoint"
            default:
                let rolling = file.hasPrefix(".index") || file.hasPrefix(".timeindex") || file == "partition-dir" || (op == "sync" && file == ".log")
                return rolling ? "roll" : "append"
            }
        }

        var description: String {
            func list(_ counts: [String: Int]) -> String {
                counts.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            }
            return """
                \(scenarios) scenarios, \(acknowledged) acknowledged appends; power cut during the work \(cutsDuringWork)×, \
                after it \(cutsAfterWork)×, again during recovery \(cutsDuringRecovery)×; recovery replayed \(replayedBatches) \
                journal batches and cut \(truncations) tails; \(partlyKeptFiles) files kept part of their unsynced writes; \
                compaction rewrote \(maintenance.compactedRuns) runs and retention deleted \(maintenance.deletedSegments) segments
                cut in: \(list(cutIn))
                cut at \(cutAt.count) kinds of operation (thread operation file): \(list(cutAt))
                """
        }
    }

    // MARK: One scenario

    func run(policy: FsyncPolicy, scenarios: Int, seed: UInt64) async throws -> Stats {
        var stats = Stats()
        var rng = SplitMix64(seed: seed)
        // The first scenario runs uncut and tells how many file operations a scenario makes (the
        // most any made so far, from then on).
        var operationsPerScenario: Int?
        for n in 0..<scenarios {
            let scenarioSeed = rng.next()
            let dir = TemporaryDirectory()
            defer {
                dir.cleanup()
                try? FileManager.default.removeItem(atPath: dir.path + ".graveyard")
            }
            let count = try await scenario(policy: policy, directory: dir.path, seed: scenarioSeed,
                                           cutWithin: operationsPerScenario, stats: &stats, label: "seed \(seed) scenario \(n)")
            operationsPerScenario = max(operationsPerScenario ?? 0, count)
        }
        print("PowerLossTests \(policy): \(stats)")
        return stats
    }

    /// Runs one scenario; returns how many file operations its work made before the cut.
    func scenario(policy: FsyncPolicy, directory: String, seed: UInt64, cutWithin: Int?, stats: inout Stats, label: String)
        async throws -> Int {
        var rng = SplitMix64(seed: seed)
        let unsynced = SimulatedDisk.UnsyncedWrites.allCases[Int(rng.next() % 2)]
        let label = "\(label) (\(unsynced) unsynced writes)"
        // `meta.json` is written through the real system calls (`LogMetadata.write` takes no
        // `FileOperations`), durably: it is there before the disk is simulated.
        try LogMetadata(partitions: Self.partitions, createdAt: 0).write(directory)
        let disk = SimulatedDisk(root: directory)
        // Half the scenarios cut at any operation; the others at one of the few operations of a
        // roll, a journal checkpoint, a compaction or a retention pass (or a group commit).
        if let cutWithin {
            let target = ["any", "any", "any", "any", "any", "roll", "journal checkpoint", "compaction", "retention", "group commit"]
                .filter { policy == .always || !["journal checkpoint", "group commit"].contains($0) }
            switch target[Int(rng.next() % UInt64(target.count))] {
            case "any": disk.cut(atOperation: 1 + Int(rng.next() % UInt64(cutWithin + cutWithin / 10)))
            case let phase:
                // About the operations of one or two of them: a checkpoint syncs each segment and
                // zeroes a journal header; a roll writes two index files; retention writes its
                // floors and unlinks four files a segment; a compaction writes and renames three
                // files, a manifest, and unlinks the run's other segments.
                let within: UInt64 = ["journal checkpoint": 4, "roll": 11, "group commit": 10, "retention": 14, "compaction": 32][phase]!
                disk.cut(atOperation: 1 + Int(rng.next() % within)) { Stats.phase(of: $0) == phase }
            }
        }
        let ledger = Ledger()
        let configuration = LogConfiguration(limits: Self.limits, fsync: policy, fileOperations: disk.operations)
        var retentionBound = [Int64](repeating: 0, count: Self.partitions)
        // Where the active segment started at the cut: a roll synced everything before it.
        var rolledEnd = [Int64](repeating: 0, count: Self.partitions)

        // The work, until it is done or the power is cut.
        if let log = try? SimulatedDisk.labelled("open", { try Log.open(dataDirectory: directory, configuration: configuration) }) {
            var source = ReadingSource(stream: 0)
            var streams: Int64 = 0
            let steps = 12 + Int(rng.next() % 12)
            for _ in 0..<steps where !disk.hasCut {
                switch rng.next() % 10 {
                case 0...3:
                    for _ in 0..<(1 + rng.next() % 8) {
                        let p = Int(rng.next() % UInt64(Self.partitions))
                        guard ledger.append(log, source.readings(1 + Int(rng.next() % 300), partition: p), to: p) else { break }
                    }
                case 4...5:
                    let threads = 2 + Int(rng.next() % 3)
                    streams += Int64(threads)
                    let maintains = rng.next() % 2 == 0
                    try await appendConcurrently(log, ledger, threads: threads, appends: 3 + Int(rng.next() % 10), seed: rng.next(),
                                                 firstStream: streams - Int64(threads) + 1) {
                        if maintains { try await maintain(log, &rng, &retentionBound, &stats.maintenance) }
                    }
                case 6:
                    let p = Int(rng.next() % UInt64(Self.partitions))
                    SimulatedDisk.labelled("roll") { _ = try? log.rollActiveSegments(only: [p]) }
                default:
                    try await maintain(log, &rng, &retentionBound, &stats.maintenance)
                }
            }
            disk.cutNow()
            for p in 0..<Self.partitions { rolledEnd[p] = log.partitions[p].retentionView().active.baseOffset }
            try? log.close()
        } else {
            disk.cutNow()
        }
        let operations = disk.operationCount
        if disk.cutOperation == SimulatedDisk.afterTheLastOperation {
            stats.cutsAfterWork += 1
        } else {
            stats.cut(at: disk.cutOperation ?? "?")
        }
        stats.partlyKeptFiles += disk.restoreDurableState(unsynced, &rng).partlyKept

        // Recovery, through at most two more power cuts.
        var reopened: Log?
        for attempt in 0..<3 {
            let recoveryDisk = SimulatedDisk(root: directory)
            let cutsAgain = attempt < 2 && rng.next() % 4 == 0
            if cutsAgain { recoveryDisk.cut(atOperation: 1 + Int(rng.next() % 48)) }
            let configuration = LogConfiguration(limits: Self.limits, fsync: policy, fileOperations: recoveryDisk.operations)
            do {
                let log = try Log.open(dataDirectory: directory, configuration: configuration)
                for p in log.partitions {
                    stats.replayedBatches += p.recovery.journalBatches
                    if p.recovery.truncatedBytes > 0 { stats.truncations += 1 }
                }
                guard cutsAgain else {
                    reopened = log
                    break
                }
                recoveryDisk.cutNow()
                try? log.close()
            } catch {
                guard recoveryDisk.hasCut else {
                    Issue.record("\(label): recovery refused the log after a power cut at \(disk.cutOperation ?? "?"): \(error)")
                    return operations
                }
            }
            stats.cutsDuringRecovery += 1
            recoveryDisk.restoreDurableState(unsynced, &rng)
        }
        guard let log = reopened else {
            Issue.record("\(label): no recovery completed")
            return operations
        }
        defer { try? log.close() }
        stats.scenarios += 1
        stats.acknowledged += ledger.acknowledgedAppends

        // What came back.
        let context = "\(label), power cut at \(disk.cutOperation ?? "?")"
        for p in 0..<Self.partitions {
            let start = log.partitions[p].startOffset
            let end = log.partitions[p].endOffset
            let back = try readAll(log.reader(partition: p, from: 0))
            #expect(back.map(\.offset) == Array(start..<end), "\(context): partition \(p) offsets are not \(start)..<\(end)")
            #expect(start <= retentionBound[p], "\(context): partition \(p) starts at \(start), past what retention deleted")
            let acknowledged = ledger.acknowledged[p] ?? [:]
            let attempted = ledger.attempted
            var seen: Set<Reading> = []
            for (offset, reading) in back {
                #expect(seen.insert(reading).inserted, "\(context): partition \(p) holds a reading twice (again at \(offset))")
                if let acknowledged = acknowledged[offset] {
                    #expect(reading.isIdentical(to: acknowledged), "\(context): partition \(p) offset \(offset) holds another reading")
                } else if policy == .always {
                    #expect(attempted.contains(reading), "\(context): partition \(p) offset \(offset) holds a reading never appended")
                } else {
                    Issue.record("\(context): partition \(p) offset \(offset) holds a reading no append returned")
                }
            }
            // Under `always` every acknowledged reading survives; under `interval` those a roll synced.
            let durable = acknowledged.keys.filter { policy == .always || $0 < rolledEnd[p] }
            let lost = durable.filter { $0 >= end || ($0 < start && $0 >= retentionBound[p]) }
            if !lost.isEmpty {
                Issue.record("\(context): partition \(p) (\(start)..<\(end)) lost \(lost.count) acknowledged readings, from offset \(lost.min()!)")
            }
        }
        let files = try LogDirectory(dataDirectory: directory, limits: Self.limits)
        for p in 0..<Self.partitions {
            let errors = try files.verify(partition: p).problems.filter { $0.severity == .error }
            #expect(errors.isEmpty, "\(context): verify found \(errors)")
        }
        return operations
    }

    /// A compaction or a retention pass, chosen by `rng`; a failure (the power is cut) ends it.
    func maintain(_ log: Log, _ rng: inout SplitMix64, _ retentionBound: inout [Int64], _ done: inout Stats.Maintenance) async throws {
        let p = Int(rng.next() % UInt64(Self.partitions))
        if rng.next() % 2 == 0 {
            let result = SimulatedDisk.labelled("compaction") {
                try? log.compactOnline(partition: p, memory: CompactionMemory(), merging: 24 << 10)
            }
            done.compactedRuns += result?.runs ?? 0
        } else {
            let maxBytes = Int64(8 << 10) + Int64(rng.next() % UInt64(40 << 10))
            let result = try? await log.applyRetention(RetentionPolicy(maxBytes: maxBytes), now: WallClock.nowNanoseconds(),
                                              foldedUpTo: [Int64](repeating: .max, count: Self.partitions), floorsRaised: { _ in })
            done.deletedSegments += result?.segments ?? 0
            // What it decided to delete (the partition forgets the segments before their files go).
            for q in 0..<Self.partitions { retentionBound[q] = max(retentionBound[q], log.partitions[q].startOffset) }
        }
    }

    /// `threads` threads append `appends` batches each to random partitions while `meanwhile` runs.
    func appendConcurrently(_ log: Log, _ ledger: Ledger, threads: Int, appends: Int, seed: UInt64, firstStream: Int64,
                            meanwhile: () async throws -> Void) async throws {
        let done = DispatchGroup()
        for t in 0..<threads {
            done.enter()
            Thread {
                nameCurrentThread("append-\(t)")
                var rng = SplitMix64(seed: seed &+ UInt64(t))
                var source = ReadingSource(stream: firstStream + Int64(t))
                for _ in 0..<appends {
                    let p = Int(rng.next() % UInt64(Self.partitions))
                    guard ledger.append(log, source.readings(1 + Int(rng.next() % 150), partition: p), to: p) else { break }
                }
                done.leave()
            }.start()
        }
        try await meanwhile()
        #expect(done.wait(timeout: .now() + 60) == .success, "appending threads hung")
    }
}

/// Unique readings of one stream (its own timestamps), for a given partition.
struct ReadingSource {
    static let sensors: [[String]] = {
        var sensors = [[String]](repeating: [], count: PowerLossTests.partitions)
        for i in 0..<64 {
            let id = "sensor-\(i)"
            sensors[PartitionHash.partition(of: id, partitions: PowerLossTests.partitions)].append(id)
        }
        return sensors
    }()

    let stream: Int64
    var next: Int64 = 0
    var rng: SplitMix64

    init(stream: Int64) {
        self.stream = stream
        rng = SplitMix64(seed: UInt64(bitPattern: stream))
    }

    mutating func readings(_ count: Int, partition: Int) -> [Reading] {
        let sensors = Self.sensors[partition]
        return (0..<count).map { _ in
            next += 1
            return Reading(sensorID: sensors[Int(rng.next() % UInt64(sensors.count))], type: "temperature",
                           value: Double(rng.next() % 100_000) / 1000, location: "lab",
                           timestamp: 1_700_000_000_000_000_000 + stream * 1_000_000_000 + next * 1000)
        }
    }
}

/// Which appends were tried and which returned (acknowledged), by partition and offset.
final class Ledger: @unchecked Sendable {
    private let lock = NSLock()
    private var _acknowledged: [Int: [Int64: Reading]] = [:]
    private var _attempted: Set<Reading> = []
    private var appends = 0

    var acknowledged: [Int: [Int64: Reading]] { lock.withLock { _acknowledged } }
    var attempted: Set<Reading> { lock.withLock { _attempted } }
    var acknowledgedAppends: Int { lock.withLock { appends } }

    /// Appends `readings` to `partition`; false when the append failed.
    func append(_ log: Log, _ readings: [Reading], to partition: Int) -> Bool {
        lock.withLock { _attempted.formUnion(readings) }
        guard let result = try? log.appendBlocking(readings, toPartition: partition) else { return false }
        lock.withLock {
            appends += 1
            for (i, reading) in readings.enumerated() { _acknowledged[partition, default: [:]][result.baseOffset + Int64(i)] = reading }
        }
        return true
    }
}
