import LogStore
import SensorLogCore

/// The state of one partition's producers: per-sensor type and latest timestamp, and enough of the
/// log's shape to decide exactly whether an out-of-order reading is already stored.
///
/// Submissions queue and are taken together: the readings of every waiting submission are checked
/// and appended as one batch (one write, one fsync under `always`), so no submission ever sees
/// another's readings before they are in the log.
actor PartitionIngest {
    struct SensorState {
        var lastTimestamp: Int64
        var type: UInt8
    }

    /// A run of consecutive batches of the partition: its offsets, time bounds and a filter of
    /// its keys. Runs grow up to `spanRecords` (or one larger batch), so memory is about 1.3
    /// bytes a reading however small the batches (one reading per write makes one-reading
    /// batches): the filter's 10 bits a key, plus 40 bytes a run.
    struct BatchSpan {
        var baseOffset: Int64
        var endOffset: Int64
        var minTimestamp: Int64
        var maxTimestamp: Int64
        var filter: KeyFilter
    }

    /// Readings per span (`Limits.dedupeSpanReadings`).
    let spanRecords: Int

    struct Key: Hashable {
        var sensorID: String
        var timestamp: Int64
    }

    private struct Submission {
        var readings: [Reading]
        var detailed: Bool
    }

    /// What a queued submission is woken with: its result, or the turn to lead the next batch.
    private enum Wake {
        case done(Result<SubmissionResult, LogError>)
        case lead
    }

    private struct Waiting {
        /// nil: a deletion waiting for the lead (it runs alone, between batches).
        var submission: Submission?
        var continuation: CheckedContinuation<Wake, Never>
    }

    let partition: Int
    let log: Log
    private var typeNames: [String]
    private var sensors = PartitionIngest.emptySensors
    private static let emptySensors = StringTable(placeholder: SensorState(lastTimestamp: 0, type: 0))
    private var spans: [BatchSpan] = []
    /// prefixMax[i] = max of spans[0...i].maxTimestamp: spans before the first index whose
    /// running maximum reaches t cannot hold t.
    private var prefixMax: [Int64] = []
    private var keyCache: KeyCache
    /// Types claimed for sensors not yet in the log by arrays being written (see `claimTypes`),
    /// with how many arrays hold each claim.
    private var claims: [String: (type: UInt8, holds: Int)] = [:]
    private var queue: [Waiting] = []
    /// A submitter is leading a batch (see `submit`).
    private var running = false

    /// Readings at or before this timestamp are refused (`Retention` removed that far).
    private(set) var floor: Int64?
    /// Deleted sensors, each with the newest reading deleted: a reading of the sensor at or
    /// before it is refused `deleted`, a newer one starts the sensor afresh.
    private var deleted: [String: Int64] = [:]

    /// Shared by every partition: new sensors past `Limits.maxSensors` are refused.
    private let budget: SensorBudget

    init(partition: Int, log: Log, typeNames: [String], floor: Int64?, budget: SensorBudget) {
        self.budget = budget
        self.partition = partition
        self.log = log
        self.typeNames = typeNames
        self.floor = floor
        spanRecords = log.configuration.limits.dedupeSpanReadings
        keyCache = KeyCache(maxKeys: log.configuration.limits.dedupeCachedKeys)
    }

    /// Where the state has read the log to: batches from here on were appended by someone else
    /// (a cluster's follower copying the owner's) and are not in the state yet.
    private var absorbedEnd: Int64 = 0
    /// Set in cluster mode: appends go through the partition's owner.
    private var routing: (any PartitionRouting)?

    func route(through routing: any PartitionRouting) { self.routing = routing }

    /// Rebuilds the state from the whole partition (start-up).
    func rebuild() throws(LogError) { try absorbLog() }

    /// Takes into the state what the log holds past what it read: in a cluster, the batches a
    /// follower copied from the owner's stream (before this node owns the partition, its dedupe
    /// must know them). Between two batches of appends, as a deletion: a failed append's undo
    /// must not write over what this adds.
    func absorb() async throws(LogError) {
        await takeLead()
        defer { passLead() }
        try absorbLog()
    }

    private func absorbLog() throws(LogError) {
        defer { absorbedEnd = max(absorbedEnd, log.partitions[partition].startOffset) }  // all of it removed by retention
        let reader = log.reader(partition: partition, from: absorbedEnd)
        var batch = DecodedBatch()
        var hashes: [UInt64] = []
        while let first = try reader.next(into: &batch) {
            absorbedEnd = max(absorbedEnd, batch.nextOffset)
            if batch.kind == .sensorDeletions {
                for i in first..<batch.count { forget(batch.sensorID(at: i), lastReading: batch.timestamps[i], deletionOffset: batch.offset(at: i)) }
            }
            guard batch.kind == .readings else { continue }
            hashes.removeAll(keepingCapacity: true)
            for i in 0..<batch.count { hashes.append(KeyFilter.hash(batch.sensorID(at: i), batch.timestamps[i])) }
            addSpan(baseOffset: batch.baseOffset, endOffset: batch.nextOffset,
                    minTimestamp: batch.header.minTimestamp, maxTimestamp: batch.header.maxTimestamp, hashes: hashes)
            for i in first..<batch.count {
                let t = Int(batch.recordTuples[i])
                let id = batch.sensorIDs[t]
                let ts = batch.timestamps[i]
                if let slot = sensors.slot(of: id) {
                    if ts > sensors[slot: slot].lastTimestamp { sensors[slot: slot].lastTimestamp = ts }
                } else {
                    sensors.insert(id, SensorState(lastTimestamp: ts, type: typeIndex(batch.types[Int(batch.tupleTypes[t])])))
                    budget.add(1)
                }
            }
        }
    }

    var sensorCount: Int { sensors.count }

    func knows(_ sensorID: String) -> Bool { sensors.slot(of: sensorID) != nil }

    /// A deletion record's effect: the sensor's type is released, its readings up to
    /// `lastReading` are refused from now on, and readers stop seeing them.
    private func forget(_ sensorID: String, lastReading: Int64, deletionOffset: Int64) {
        if sensors[sensorID] != nil { budget.release(1) }
        sensors[sensorID] = nil
        deleted[sensorID] = max(deleted[sensorID] ?? .min, lastReading)
        log.partitions[partition].deletions.add(sensorID, before: deletionOffset)
    }

    /// Deletes a sensor: its deletion record goes into the log (stamped with its newest
    /// reading), between two batches of appends so no reading of it is in flight.
    /// - Returns: the deletion, or nil when the partition has no reading of the sensor.
    func delete(_ sensorID: String) async -> Result<SensorDeletion?, LogError> {
        await takeLead()
        defer { passLead() }
        guard let state = sensors[sensorID] else { return .success(nil) }
        guard routing == nil else { return .failure(LogError(.invalidArgument, "deleting a sensor is not supported in cluster mode yet")) }
        do {
            let appended = try await log.appendDeletion(sensorID, lastReading: state.lastTimestamp, toPartition: partition)
            advanceAbsorbed(appended)
            forget(sensorID, lastReading: state.lastTimestamp, deletionOffset: appended.baseOffset)
            return .success(SensorDeletion(sensorID: sensorID, partition: partition, offset: appended.baseOffset, lastReading: state.lastTimestamp))
        } catch {
            return .failure(error)
        }
    }

    private func takeLead() async {
        if running {
            _ = await withCheckedContinuation { queue.append(Waiting(submission: nil, continuation: $0)) }
        }
        running = true
    }

    /// Hands the lead to the first waiting submission or deletion.
    private func passLead() {
        if queue.isEmpty {
            running = false
        } else {
            queue.removeFirst().continuation.resume(returning: .lead)
        }
    }

    private func typeIndex(_ name: String) -> UInt8 {
        if let i = typeNames.firstIndex(of: name) { return UInt8(i) }
        precondition(typeNames.count < 255, "more than 255 reading types")
        typeNames.append(name)
        return UInt8(typeNames.count - 1)
    }

    /// Retention is about to delete readings up to `newFloor`: refuse them from now on (a resend
    /// must not find them gone and be stored again).
    func raise(floor newFloor: Int64?) {
        guard let newFloor else { return }
        floor = max(floor ?? .min, newFloor)
    }

    /// Retention deleted the offsets below `start`: the dedupe forgets the runs that held them
    /// (their readings are at or before the floor, refused before any run is looked at).
    func forgetOffsets(before start: Int64) {
        let n = spans.prefix { $0.endOffset <= start }.count
        guard n > 0 else { return }
        for span in spans.prefix(n) { keyCache.remove(span.baseOffset) }
        spans.removeFirst(n)
        var running = Int64.min
        prefixMax = spans.map { span in
            running = max(running, span.maxTimestamp)
            return running
        }
    }

    /// A repair replaced records of the partition by removed records: keys decoded before are
    /// no longer the log's, and a resend of a lost reading must be judged against the log.
    func forgetCachedKeys() { keyCache = KeyCache(maxKeys: keyCache.maxKeys) }

    /// Adds a batch's keys; its offsets [baseOffset, endOffset) may hold removed records too.
    private func addSpan(baseOffset: Int64, endOffset: Int64, minTimestamp: Int64, maxTimestamp: Int64, hashes: [UInt64]) {
        if let last = spans.last, last.endOffset == baseOffset, last.filter.count + hashes.count <= last.filter.capacity {
            let i = spans.count - 1
            spans[i].endOffset = endOffset
            spans[i].minTimestamp = min(last.minTimestamp, minTimestamp)
            spans[i].maxTimestamp = max(last.maxTimestamp, maxTimestamp)
            for h in hashes { spans[i].filter.insert(h) }
            prefixMax[i] = max(i > 0 ? prefixMax[i - 1] : .min, spans[i].maxTimestamp)
            keyCache.remove(last.baseOffset)  // its keys are no longer the whole span's
            return
        }
        var filter = KeyFilter(capacity: max(spanRecords, hashes.count))
        for h in hashes { filter.insert(h) }
        prefixMax.append(max(prefixMax.last ?? .min, maxTimestamp))
        spans.append(BatchSpan(baseOffset: baseOffset, endOffset: endOffset,
                               minTimestamp: minTimestamp, maxTimestamp: maxTimestamp, filter: filter))
    }

    /// The sensors among `readings` whose first reading (stored, claimed by an array being
    /// written, or earlier in `readings`) fixed another type. Changes nothing.
    func typeConflicts(_ readings: [(index: Int, reading: Reading)]) -> [(index: Int, expected: String)] {
        var conflicts: [(Int, String)] = []
        var seen: [String: String] = [:]
        for (index, r) in readings {
            if let state = sensors[r.sensorID] {
                let expected = typeNames[Int(state.type)]
                if expected != r.type { conflicts.append((index, expected)) }
            } else if let claim = claims[r.sensorID] {
                let expected = typeNames[Int(claim.type)]
                if expected != r.type { conflicts.append((index, expected)) }
            } else if let first = seen[r.sensorID] {
                if first != r.type { conflicts.append((index, first)) }
            } else {
                seen[r.sensorID] = r.type
            }
        }
        return conflicts
    }

    /// Checks `readings` as `typeConflicts` does and, when none conflicts, claims the type of each
    /// sensor new to the log until `releaseClaims`: a reading of another type that arrives
    /// meanwhile is refused, so an array checked whole is also written whole.
    /// - Returns: the conflicts (nothing claimed), or the sensors claimed.
    func claimTypes(_ readings: [(index: Int, reading: Reading)]) -> Result<[String], TypeConflicts> {
        let conflicts = typeConflicts(readings)
        guard conflicts.isEmpty else { return .failure(TypeConflicts(conflicts: conflicts)) }
        var claimed: [String] = []
        var seen = Set<String>()
        for (_, r) in readings where sensors.slot(of: r.sensorID) == nil && seen.insert(r.sensorID).inserted {
            claims[r.sensorID, default: (typeIndex(r.type), 0)].holds += 1
            claimed.append(r.sensorID)
        }
        return .success(claimed)
    }

    /// Gives up claims taken by `claimTypes`.
    func releaseClaims(_ sensorIDs: [String]) {
        for id in sensorIDs {
            guard var claim = claims[id] else { continue }
            claim.holds -= 1
            claims[id] = claim.holds > 0 ? claim : nil
        }
    }

    /// Checks and appends `readings`; returns once they are durable under the fsync policy.
    /// - Parameter detailed: report each reading's outcome (HTTP), not only the counts (TCP).
    ///
    /// The first submitter leads: it takes everything queued behind it into its batch, and when
    /// done hands the lead to the first submission that queued meanwhile. No task is spawned to
    /// drain the queue, which would cost a task and a thread wake-up per one-reading request.
    func submit(_ readings: [Reading], detailed: Bool) async -> Result<SubmissionResult, LogError> {
        let submission = Submission(readings: readings, detailed: detailed)
        if running {
            let wake = await withCheckedContinuation { continuation in
                queue.append(Waiting(submission: submission, continuation: continuation))
            }
            if case .done(let result) = wake { return result }
        }
        running = true
        // Followers up to the first deletion waiting: it runs after this batch, alone.
        let followers = Array(queue.prefix { $0.submission != nil })
        queue.removeFirst(followers.count)
        let results = await process([submission] + followers.map { $0.submission! })
        for (waiting, result) in zip(followers, results.dropFirst()) { waiting.continuation.resume(returning: .done(result)) }
        passLead()
        return results[0]
    }

    /// Dedupe and type check in order, then one append per `maxBatchRecords`. On failure every
    /// change to the state is undone, so a retry is judged as if the failed attempt never happened.
    private func process(_ submissions: [Submission]) async -> [Result<SubmissionResult, LogError>] {
        var results = submissions.map {
            SubmissionResult(outcomes: $0.detailed ? [IngestOutcome](repeating: .duplicate, count: $0.readings.count) : nil)
        }
        var fresh: [Reading] = []
        fresh.reserveCapacity(submissions.reduce(0) { $0 + $1.readings.count })
        // For detailed submissions: (submission, index in it, index in `fresh`).
        var detailedFresh: [(submission: Int, index: Int, fresh: Int)] = []
        var undo: [(String, SensorState?)] = []
        var freshKeys: Set<Key>?
        var lastTypeName = ""
        var lastType: UInt8 = 0
        // The hot loop works on the state moved out of the actor (no copy-on-write, no
        // exclusivity checks); it is moved back before the first suspension.
        var sensors = self.sensors
        self.sensors = Self.emptySensors

        for (s, submission) in submissions.enumerated() {
            for (i, r) in submission.readings.enumerated() {
                if let floor, r.timestamp <= floor {
                    results[s].tooOld += 1
                    results[s].refuse(i, .tooOld)
                    continue
                }
                if !deleted.isEmpty, let last = deleted[r.sensorID], r.timestamp <= last {
                    results[s].deleted += 1
                    results[s].refuse(i, .deleted)
                    continue
                }
                if r.type != lastTypeName {
                    lastTypeName = r.type
                    lastType = typeIndex(r.type)
                }
                let type = lastType
                var isFresh = false
                if let slot = sensors.slot(of: r.sensorID) {
                    let state = sensors[slot: slot]
                    if state.type != type {
                        results[s].mismatches += 1
                        results[s].refuse(i, .typeMismatch(expected: typeNames[Int(state.type)]))
                        continue
                    }
                    if r.timestamp > state.lastTimestamp {
                        undo.append((r.sensorID, state))
                        sensors[slot: slot].lastTimestamp = r.timestamp
                        freshKeys?.insert(Key(sensorID: r.sensorID, timestamp: r.timestamp))
                        isFresh = true
                    } else {
                        // Out of order: exact check against this batch and the log.
                        if freshKeys == nil { freshKeys = Set(fresh.map { Key(sensorID: $0.sensorID, timestamp: $0.timestamp) }) }
                        let key = Key(sensorID: r.sensorID, timestamp: r.timestamp)
                        if !freshKeys!.contains(key) {
                            switch storedInLog(key) {
                            case .success(true): break
                            case .success(false):
                                freshKeys!.insert(key)
                                isFresh = true
                            case .failure(let error):
                                restore(undo, into: &sensors)
                                self.sensors = sensors
                                return submissions.map { _ in .failure(error) }
                            }
                        }
                    }
                } else {
                    if !claims.isEmpty, let claim = claims[r.sensorID], claim.type != type {
                        results[s].mismatches += 1
                        results[s].refuse(i, .typeMismatch(expected: typeNames[Int(claim.type)]))
                        continue
                    }
                    guard budget.take() else {
                        results[s].tooManySensors += 1
                        results[s].refuse(i, .tooManySensors)
                        continue
                    }
                    undo.append((r.sensorID, nil))
                    sensors.insert(r.sensorID, SensorState(lastTimestamp: r.timestamp, type: type))
                    freshKeys?.insert(Key(sensorID: r.sensorID, timestamp: r.timestamp))
                    isFresh = true
                }
                if isFresh {
                    if submission.detailed { detailedFresh.append((s, i, fresh.count)) }
                    results[s].appended += 1
                    fresh.append(r)
                } else {
                    results[s].duplicates += 1
                    if results[s].firstRefused == nil { results[s].firstRefused = (i, .duplicate) }
                }
            }
        }

        self.sensors = sensors

        var start = 0
        var chunkBases: [Int64] = []
        let limit = min(log.configuration.limits.maxBatchRecords, routing?.maxReadingsPerAppend ?? .max)
        while start < fresh.count {
            let end = min(start + limit, fresh.count)
            let chunk = start == 0 && end == fresh.count ? fresh : Array(fresh[start..<end])
            do {
                let result = if let routing {
                    try await routing.appendAsOwner(chunk, partition: partition, expectedEnd: absorbedEnd)
                } else {
                    try await log.append(chunk, toPartition: partition)
                }
                advanceAbsorbed(result)
                var lo = Int64.max
                var hi = Int64.min
                var hashes: [UInt64] = []
                hashes.reserveCapacity(chunk.count)
                for r in chunk {
                    lo = min(lo, r.timestamp)
                    hi = max(hi, r.timestamp)
                    hashes.append(KeyFilter.hash(r.sensorID, r.timestamp))
                }
                addSpan(baseOffset: result.baseOffset, endOffset: result.baseOffset + Int64(chunk.count), minTimestamp: lo, maxTimestamp: hi, hashes: hashes)
                chunkBases.append(result.baseOffset)
            } catch {
                // Readings of earlier chunks are in the log and stay known; the rest is undone.
                // Every submission fails: a producer that retries is deduplicated against what landed.
                var keep = Set<String>()
                for r in fresh[..<start] { keep.insert(r.sensorID) }
                restore(undo.filter { !keep.contains($0.0) }, into: &self.sensors)
                return submissions.map { _ in .failure(error) }
            }
            start = end
        }
        for (s, i, k) in detailedFresh {
            results[s].outcomes?[i] = .appended(partition: partition, offset: chunkBases[k / limit] + Int64(k % limit))
        }
        return results.map { .success($0) }
    }

    /// This actor's own append is in the state already.
    private func advanceAbsorbed(_ appended: AppendResult) {
        if absorbedEnd == appended.baseOffset { absorbedEnd = appended.baseOffset + Int64(appended.count) }
    }

    private func restore(_ undo: [(String, SensorState?)], into sensors: inout StringTable<SensorState>) {
        for (id, state) in undo.reversed() { sensors[id] = state }
        budget.release(undo.count(where: { $0.1 == nil }))
    }

    /// Whether (sensor, timestamp) is in the partition: only spans whose time bounds hold the
    /// timestamp and whose filter may hold the key are decoded (and their keys cached).
    private func storedInLog(_ key: Key) -> Result<Bool, LogError> {
        let hash = KeyFilter.hash(key.sensorID, key.timestamp)
        var lo = 0
        var hi = prefixMax.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if prefixMax[mid] < key.timestamp { lo = mid + 1 } else { hi = mid }
        }
        for j in lo..<spans.count
        where spans[j].minTimestamp <= key.timestamp && key.timestamp <= spans[j].maxTimestamp && spans[j].filter.mayContain(hash) {
            let keys: Set<Key>
            if let cached = keyCache.get(spans[j].baseOffset) {
                keys = cached
            } else {
                do {
                    keys = try decodeKeys(spans[j])
                } catch {
                    return .failure(error)
                }
                keyCache.put(spans[j].baseOffset, keys)
            }
            if keys.contains(key) { return .success(true) }
        }
        return .success(false)
    }

    /// The keys stored at the span's offsets. Compaction may have merged its batches with their
    /// neighbours, and retention cut its start: a batch may begin before the span and end after
    /// it, and the walk starts at the log's start if that is later.
    private func decodeKeys(_ span: BatchSpan) throws(LogError) -> Set<Key> {
        var next = max(span.baseOffset, log.partitions[partition].startOffset)
        let reader = log.reader(partition: partition, from: next)
        var batch = DecodedBatch()
        // Sized by the keys the span holds: its offsets may include many removed records.
        var keys = Set<Key>(minimumCapacity: span.filter.count)
        while next < span.endOffset {
            guard let first = try reader.next(into: &batch), batch.baseOffset <= next, next < batch.nextOffset else {
                throw LogError(.corruptBatch, "batch at offset \(next) of partition \(partition) is missing")
            }
            if batch.kind == .readings {
                for i in first..<batch.count where batch.offset(at: i) < span.endOffset {
                    keys.insert(Key(sensorID: batch.sensorID(at: i), timestamp: batch.timestamps[i]))
                }
            }
            next = batch.nextOffset
        }
        return keys
    }
}

/// Decoded key sets of recently checked batches, bounded by the total number of keys held.
struct KeyCache {
    let maxKeys: Int
    private var sets: [Int64: Set<PartitionIngest.Key>] = [:]
    private var order: [Int64] = []
    private var held = 0

    init(maxKeys: Int) { self.maxKeys = maxKeys }

    func get(_ base: Int64) -> Set<PartitionIngest.Key>? { sets[base] }

    mutating func remove(_ base: Int64) {
        guard let removed = sets.removeValue(forKey: base) else { return }
        held -= removed.count
        order.removeAll { $0 == base }
    }

    mutating func put(_ base: Int64, _ keys: Set<PartitionIngest.Key>) {
        while held + keys.count > maxKeys, !order.isEmpty {
            let evicted = order.removeFirst()
            held -= sets.removeValue(forKey: evicted)?.count ?? 0
        }
        sets[base] = keys
        order.append(base)
        held += keys.count
    }
}
