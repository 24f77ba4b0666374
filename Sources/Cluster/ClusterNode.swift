public import Ingest
public import JetStream
public import LogStore
public import Logging
public import SensorLogCore
import Synchronization

/// What a node of a cluster runs with (sensorlogd's `--cluster` flags).
public struct ClusterConfiguration: Sendable {
    public var nats: NATSConfiguration
    /// This node's name: the holder of its leases, unique in the cluster.
    public var nodeID: String
    /// Copies of each stream and of the lease bucket (3 in production; 1 for a one-server trial).
    public var replicas = 3
    /// A lease not renewed within this expires on the servers (and is given up here sooner).
    public var leaseTTL: Duration = .seconds(6)
    /// How often leases are renewed, and free partitions looked for.
    public var renewInterval: Duration = .seconds(1)
    /// How often the streams of partitions owned elsewhere are read into the local log.
    public var followInterval: Duration = .milliseconds(100)
    /// JetStream's own duplicate window: a retry guard only; the dedupe of record is the owner's.
    public var duplicateWindow: Duration = .seconds(120)
    /// How long an owner tries to learn a write's outcome before it steps down.
    public var writeWait: Duration = .seconds(5)
    /// How long a node waits for the owner to answer a forwarded submission.
    public var forwardTimeout: Duration = .seconds(10)
    /// Readings per forwarded message and per batch in a stream: NATS's default payload limit is
    /// 1 MiB, and 2 048 of the largest readings (about 350 bytes each) stay under it.
    public var forwardChunkReadings = 2_048
    /// How often an owner purges its streams below its log's start (retention on the streams).
    public var purgeInterval: Duration = .seconds(10)

    public init(nats: NATSConfiguration, nodeID: String) {
        self.nats = nats
        self.nodeID = nodeID
    }
}

/// One node of a cluster (docs/cluster-design.md): it takes leases on the partitions the
/// cluster's members prefer it for, writes those through their streams, follows every other
/// partition's stream into its local log, and forwards readings of partitions it does not own to
/// their owner over NATS request-reply (`slog.fwd.p<n>`).
public final class ClusterNode: PartitionRouting, @unchecked Sendable {
    public let configuration: ClusterConfiguration
    public let connection: NATSConnection
    let leases: KeyValueBucket
    let membership: Lease
    let owners: [PartitionOwner]
    let log: Log
    let pipeline: IngestPipeline
    let logger: Logger
    private let state: Mutex<State>
    private static let forwards = BlockingPool(name: "cluster-forwards", threads: 32)

    struct State {
        var owned: [Bool]
        var lastRenewed: [ContinuousClock.Instant]
        var freeRounds: [Int]
        var subscriptions: [Subscription?]
        var live: [String] = []
        /// Every stream has been read to its end once: this node may become a member.
        var caughtUp = false
        var followedOnce: [Bool] = []
        var ownedSince: [ContinuousClock.Instant] = []
        /// Forwarded submissions being answered.
        var handlers = 0
        /// Per partition, the follower's last failure (logged once until it changes or clears).
        var followError: [Int: String] = [:]
    }

    /// Connects, checks that the cluster's partition count is this log's, opens every stream and
    /// routes the pipeline's appends through this node. Blocks on the network. A cluster that is
    /// starting (no JetStream leader yet) is asked again until `joinTimeout`.
    public init(_ configuration: ClusterConfiguration, log: Log, pipeline: IngestPipeline, logger: Logger,
                joinTimeout: Duration = .seconds(60)) async throws {
        self.configuration = configuration
        self.log = log
        self.pipeline = pipeline
        self.logger = logger
        let connection = try NATSConnection(configuration.nats)
        self.connection = connection
        let deadline = ContinuousClock.now + joinTimeout
        while true {
            do {
                (leases, owners) = try Self.open(configuration, connection: connection, log: log, pipeline: pipeline)
                break
            } catch let error as ClusterConfigurationError {
                connection.close()
                throw error
            } catch {
                guard ContinuousClock.now < deadline else {
                    connection.close()
                    throw error
                }
                logger.warning("cannot open the cluster's streams yet; retrying", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .milliseconds(500))
            }
        }
        membership = Lease(bucket: leases, key: "node.\(configuration.nodeID)", holder: configuration.nodeID)
        let n = log.partitions.count
        state = Mutex(State(owned: Array(repeating: false, count: n), lastRenewed: Array(repeating: .now, count: n),
                            freeRounds: Array(repeating: 0, count: n), subscriptions: Array(repeating: nil, count: n),
                            followedOnce: Array(repeating: false, count: n), ownedSince: Array(repeating: .now, count: n)))
        await pipeline.route(through: self)
    }

    private static func open(_ c: ClusterConfiguration, connection: NATSConnection, log: Log, pipeline: IngestPipeline) throws -> (KeyValueBucket, [PartitionOwner]) {
        let leases = try KeyValueBucket(connection, name: "SLOG_LEASES", replicas: c.replicas, ttl: c.leaseTTL)
        let config = try KeyValueBucket(connection, name: "SLOG_CONFIG", replicas: c.replicas)
        try checkPartitions(log.partitions.count, config: config)
        var owners: [PartitionOwner] = []
        for p in 0..<log.partitions.count {
            let stream = PartitionStream(connection, partition: p, replicas: c.replicas, duplicateWindow: c.duplicateWindow)
            if try stream.open() == 0, log.partitions[p].endOffset > 0 {
                throw ClusterConfigurationError("partition \(p) has \(log.partitions[p].endOffset) records in this node's log and none in the cluster's stream: a node's data directory must be empty when it first joins (not a single node's, nor another cluster's)")
            }
            let unchanged = [Int64?](repeating: nil, count: log.partitions.count)
            owners.append(PartitionOwner(partition: p, stream: stream, lease: Lease(bucket: leases, key: "p\(p)", holder: c.nodeID),
                                         log: log, writeWait: c.writeWait, floors: config) { timestamp in
                var raised = unchanged
                raised[p] = timestamp
                await pipeline.raiseFloors(raised)
            })
        }
        return (leases, owners)
    }

    /// The partition count is the cluster's, fixed by the first node (a key of its own bucket,
    /// without TTL): a node whose log has another count would number streams differently.
    private static func checkPartitions(_ count: Int, config: KeyValueBucket) throws {
        let mine = Array(String(count).utf8)
        for _ in 0..<2 {
            if let (value, _) = try config.get("partitions") {
                guard value == mine else {
                    throw ClusterConfigurationError("the cluster has \(String(decoding: value, as: UTF8.self)) partitions and this node's log \(count); a node's log must have the cluster's")
                }
                return
            }
            let created = Result { () throws(NATSError) in try config.create("partitions", mine) }
            if case .failure(let error) = created, error.kind != .wrongLastSequence { throw error }
            if case .success = created { return }
            // Another node set it first: read it again.
        }
    }

    // MARK: routing

    public func owns(_ partition: Int) -> Bool { state.withLock { $0.owned[partition] } }

    public var maxReadingsPerAppend: Int { configuration.forwardChunkReadings }

    public func appendAsOwner(_ readings: [Reading], partition: Int, expectedEnd: Int64) async throws(LogError) -> AppendResult {
        do {
            return try await owners[partition].append(readings, expectedEnd: expectedEnd)
        } catch let error as LogError where error.code == .invalidArgument || error.code == .unavailable {
            throw error  // nothing written: still the owner
        } catch {
            markLost(partition)
            logger.warning("stepped down as owner after a failed write", metadata: ["partition": "\(partition)", "error": "\(error)"])
            throw LogError(.unavailable, "partition \(partition): this node stepped down as its owner (\(error)); retry")
        }
    }

    public func forward(_ readings: [Reading], partition: Int, detailed: Bool) async -> Result<SubmissionResult, LogError> {
        var merged = SubmissionResult(detailed: detailed)
        var start = 0
        let timeout = Int64(configuration.forwardTimeout / .milliseconds(1))
        let (connection, subject) = (connection, Self.forwardSubject(partition))
        while start < readings.count {
            let end = min(start + configuration.forwardChunkReadings, readings.count)
            let request = ForwardCodec.encode(Array(readings[start..<end]), detailed: detailed)
            let reply: [UInt8]
            do {
                reply = try await Self.request(connection, subject, request, timeoutMilliseconds: timeout)
            } catch {
                return .failure(LogError(.unavailable, "no owner of partition \(partition) answered (\(error)); retry"))
            }
            guard let result = ForwardCodec.decodeResult(reply) else {
                return .failure(LogError(.unavailable, "the owner of partition \(partition) answered something unreadable"))
            }
            switch result {
            case .success(let piece):
                guard Self.fits(piece, count: end - start, detailed: detailed) else {
                    return .failure(LogError(.unavailable, "the owner of partition \(partition) answered for another number of readings"))
                }
                merged.append(piece, after: start)
            case .failure(let error): return .failure(error)
            }
            start = end
        }
        return .success(merged)
    }

    /// Whether an owner's answer is about `count` readings (its indices are used to index them).
    static func fits(_ r: SubmissionResult, count: Int, detailed: Bool) -> Bool {
        (!detailed || r.outcomes?.count == count) && (r.firstRefused?.index ?? 0) < max(count, 1)
            && (r.firstProblem?.index ?? 0) < max(count, 1)
    }

    static func forwardSubject(_ partition: Int) -> String { "slog.fwd.p\(partition)" }

    /// A request to the owner, asked again while nobody owns the partition (a hand-over, or a
    /// takeover waiting for a dead owner's lease to expire), as a Kafka producer waits out a
    /// leader election: the producer hears of it only past the timeout.
    private static func request(_ connection: NATSConnection, _ subject: String, _ data: [UInt8],
                                timeoutMilliseconds: Int64) async throws(NATSError) -> [UInt8] {
        let deadline = ContinuousClock.now + .milliseconds(timeoutMilliseconds)
        while true {
            let left = max(1, (deadline - ContinuousClock.now) / .milliseconds(1))
            do {
                return try await NATSConnection.offPool(forwards) { () throws(NATSError) in
                    try connection.request(subject, data, timeoutMilliseconds: Int64(left))
                }
            } catch where error.kind == .noResponders && ContinuousClock.now + .milliseconds(50) < deadline && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// Answers forwarded submissions while this node owns `partition`.
    private func subscribe(_ partition: Int) throws(NATSError) -> Subscription {
        let pipeline = pipeline
        return try connection.subscribe(Self.forwardSubject(partition)) { [self] request in
            state.withLock { $0.handlers += 1 }
            Task {
                defer { state.withLock { $0.handlers -= 1 } }
                guard let (readings, detailed) = ForwardCodec.decodeSubmission(request.data) else {
                    request.respond(ForwardCodec.encode(.failure(LogError(.invalidArgument, "an unreadable forwarded submission"))))
                    return
                }
                request.respond(ForwardCodec.encode(await pipeline.submitAsOwner(readings, partition: partition, detailed: detailed)))
            }
        }
    }

    private func markLost(_ partition: Int) {
        let subscription = state.withLock { s -> Subscription? in
            s.owned[partition] = false
            defer { s.subscriptions[partition] = nil }
            return s.subscriptions[partition]
        }
        subscription?.unsubscribe()
    }

    // MARK: the control loop

    /// Follows the streams and keeps the leases until the task is cancelled, then gives up what
    /// it owns (so others take it over without waiting out the TTL) and disconnects. Leases and
    /// streams have a task each: a long catch-up must not hold up the renewals.
    public func run() async {
        await publishProgress()  // at 0 before following: no purge passes this node meanwhile
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: self.configuration.purgeInterval)
                    await self.purgeStreams()
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    await self.manageLeases()
                    try? await Task.sleep(for: self.configuration.renewInterval)
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    if await self.followOthers() { self.state.withLock { $0.caughtUp = true } }
                    try? await Task.sleep(for: self.configuration.followInterval)
                }
            }
        }
        // Out of the cancelled task: its sleeps would return at once (a spin, not a wait).
        await Task.detached { [self] in await shutDown() }.value
    }

    /// No more forwarded submissions, then the ones under way answered, then the leases given up.
    private func shutDown() async {
        for p in owners.indices { markLost(p) }
        await drainHandlers()
        for p in owners.indices where await owners[p].epoch != nil { await owners[p].resign() }
        let (membership, leases, key) = (membership, leases, "node.\(configuration.nodeID)")
        let progress = "progress.\(configuration.nodeID)"
        _ = try? await NATSConnection.offPool(PartitionOwner.control) { () throws(NATSError) in
            if membership.epoch != nil { try leases.delete(key) }
            try leases.delete(progress)
        }
        connection.close()
    }

    /// Waits (a few seconds at most) for forwarded submissions under way to be answered.
    private func drainHandlers() async {
        let deadline = ContinuousClock.now + .seconds(5)
        while state.withLock({ $0.handlers }) > 0, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Reads the streams of partitions owned elsewhere into the local log, and into the dedupe.
    /// - Returns: whether every stream has been read to its end at least once (an owned one counts).
    private func followOthers() async -> Bool {
        for p in owners.indices where !owns(p) {
            do {
                let atEnd = try await owners[p].catchUp()
                state.withLock { s in
                    if atEnd { s.followedOnce[p] = true }
                    s.followError[p] = nil
                }
            } catch {
                // Once per distinct failure: a copy that cannot go on fails every 100 ms.
                let text = "\(error)"
                let new = state.withLock { s in
                    defer { s.followError[p] = text }
                    return s.followError[p] != text
                }
                if new { logger.error("cannot follow the stream", metadata: ["partition": "\(p)", "error": "\(text)"]) }
            }
            // Whatever reached the log, even before a failure: the dedupe must know it.
            do { try await pipeline.absorb(partition: p) } catch {
                logger.error("cannot read what the follower copied", metadata: ["partition": "\(p)", "error": "\(error)"])
            }
        }
        return state.withLock { s in s.followedOnce.indices.allSatisfy { s.followedOnce[$0] || s.owned[$0] } }
    }

    private func manageLeases() async {
        let live = await liveNodes()
        let plan = Self.assignment(owners.count, among: live)
        await publishProgress()
        for p in owners.indices {
            let held = await owners[p].epoch != nil
            if held && owns(p) {
                await keep(p, live: live, preferred: plan[p])
            } else if held {
                // Held but not serving: a takeover that did not finish, or a failed append's
                // step-down that came after a new takeover. Give it up; the next round takes it.
                await owners[p].resign()
            } else {
                if owns(p) { markLost(p) }  // stepped down during an append
                await tryToTake(p, preferred: plan[p])
            }
        }
    }

    /// Retention on the streams, every `purgeInterval` on a task of its own: for each partition
    /// this node owns whose local log retention has cut, the stream loses what lies wholly before
    /// the log's start, but nothing a live node (one whose progress report has not expired) has
    /// yet to apply.
    private func purgeStreams() async {
        let cut = owners.indices.filter { owns($0) && log.partitions[$0].startOffset > 0 }
        guard !cut.isEmpty, let applied = await appliedByAll() else { return }
        for p in cut where p < applied.count {
            // The start first, then the floors: retention writes a floor before it drops the
            // segments, so floors read after the start cover everything before it.
            let start = log.partitions[p].startOffset
            guard let floors = try? Retention.floors(dataDirectory: log.dataDirectory, partitions: owners.count) else {
                logger.warning("cannot purge the streams: the retention floors are unreadable", metadata: ["partition": "\(p)"])
                return
            }
            do {
                guard let first = try await owners[p].purge(localStart: start, retentionFloor: floors[p], appliedByAll: applied[p]) else { continue }
                logger.info("purged the stream below the log's start", metadata: [
                    "partition": "\(p)", "log_start_offset": "\(start)", "stream_first_sequence": "\(first)"])
            } catch {
                logger.warning("cannot purge the stream", metadata: ["partition": "\(p)", "error": "\(error)"])
            }
        }
    }

    /// Per partition, the least sequence the nodes report having applied (their progress keys).
    private func appliedByAll() async -> [UInt64]? {
        let (leases, n) = (leases, owners.count)
        return try? await NATSConnection.offPool(PartitionOwner.control) { () throws(NATSError) -> [UInt64]? in
            var least = [UInt64](repeating: .max, count: n)
            var any = false
            for key in try leases.keys() where key.hasPrefix("progress.") {
                guard let (value, _) = try leases.get(key) else { continue }
                let applied = String(decoding: value, as: UTF8.self).split(separator: ",").map { UInt64($0) ?? 0 }
                guard applied.count == n else { return nil }  // unreadable: purge nothing
                any = true
                for p in 0..<n { least[p] = min(least[p], applied[p]) }
            }
            return any ? least : nil
        } ?? nil
    }

    /// How far this node has applied each stream, for every node's `status()`: a key of the lease
    /// bucket, so it expires with a node that is gone.
    private func publishProgress() async {
        var applied: [String] = []
        for owner in owners { applied.append(String(await owner.follower.nextSequence - 1)) }
        let (leases, key, value) = (leases, "progress.\(configuration.nodeID)", Array(applied.joined(separator: ",").utf8))
        _ = try? await NATSConnection.offPool(PartitionOwner.control) { () throws(NATSError) in try leases.put(key, value) }
    }

    /// The members whose lease is alive, this node's renewed. A node joins the members only once
    /// it has read every stream to its end: a member is preferred for partitions at once, and
    /// their owners hand them over, which a node far behind would make wait for its catch-up.
    private func liveNodes() async -> [String] {
        let (membership, leases, joined) = (membership, leases, state.withLock { $0.caughtUp })
        do {
            let live = try await NATSConnection.offPool(PartitionOwner.control) { () throws(NATSError) in
                if joined {
                    let renewed = membership.epoch != nil ? try membership.renew() : false
                    if !renewed { _ = try membership.take() }
                }
                return try leases.keys().filter { $0.hasPrefix("node.") }.map { String($0.dropFirst(5)) }
            }
            state.withLock { $0.live = live }
            return live
        } catch {
            logger.warning("cannot read the cluster's members", metadata: ["error": "\(error)"])
            return state.withLock { $0.live }
        }
    }

    private func keep(_ p: Int, live: [String], preferred: String?) async {
        do {
            guard try await owners[p].renew() else {
                markLost(p)
                logger.warning("lost the lease", metadata: ["partition": "\(p)"])
                return
            }
            state.withLock { $0.lastRenewed[p] = .now }
            // Hand over only between members that both see themselves as such, and not at once
            // after taking it: two nodes whose member lists differ for a moment would otherwise
            // pass the partition back and forth.
            let since = state.withLock { $0.ownedSince[p] }
            if live.contains(configuration.nodeID), let preferred, preferred != configuration.nodeID,
               ContinuousClock.now - since > configuration.renewInterval * 5 {
                markLost(p)
                await owners[p].resign()
                logger.info("handed the partition over to the node preferred for it", metadata: ["partition": "\(p)"])
            }
        } catch {
            // The cluster is out of reach: give up before the lease can expire on the servers.
            let since = state.withLock { $0.lastRenewed[p] }
            if ContinuousClock.now - since > configuration.leaseTTL / 2 {
                markLost(p)
                await owners[p].abandon()
                logger.error("stepped down: the lease could not be renewed", metadata: ["partition": "\(p)", "error": "\(error)"])
            }
        }
    }

    /// Takes a free partition: at once when this node is the one preferred for it, after a few
    /// rounds otherwise (the preferred one is gone, or slow).
    private func tryToTake(_ p: Int, preferred: String?) async {
        do {
            let lease = owners[p].lease
            let holder = try await NATSConnection.offPool(PartitionOwner.control) { () throws(NATSError) in try lease.currentHolder() }
            let rounds = state.withLock { s -> Int in
                s.freeRounds[p] = holder == nil ? s.freeRounds[p] + 1 : 0
                return s.freeRounds[p]
            }
            guard holder == nil || holder == configuration.nodeID else { return }
            guard holder == configuration.nodeID || preferred == configuration.nodeID || rounds >= 3 else { return }
            let started = ContinuousClock.now
            guard try await owners[p].takeOver() else { return }
            try await pipeline.absorb(partition: p)
            let subscription = try subscribe(p)
            state.withLock { s in
                s.owned[p] = true
                s.lastRenewed[p] = .now
                s.ownedSince[p] = .now
                s.subscriptions[p] = subscription
            }
            let epoch = await owners[p].epoch ?? 0
            logger.info("took the partition over", metadata: [
                "partition": "\(p)", "epoch": "\(epoch)", "took": "\(ContinuousClock.now - started)",
            ])
        } catch {
            logger.warning("cannot take the partition over", metadata: ["partition": "\(p)", "error": "\(error)"])
            if await owners[p].epoch != nil { await owners[p].resign() }  // taken but not served: give it back
        }
    }

    /// The member each partition belongs to: rendezvous hashing (FNV-1a, the same in every
    /// process) with bounded loads. Pairs of member and partition are taken from the highest
    /// score down, and a member stops taking once it holds its share (⌊partitions / members⌋,
    /// one more for the first partitions % members to reach it). Plain rendezvous hashing gave
    /// `node-1, node-2, node-3` 1, 3 and 4 of 8 partitions, and `m2` of `m0, m1, m2` none; with
    /// the bound a member joining or leaving still moves few partitions besides its own.
    static func assignment(_ partitions: Int, among nodes: [String]) -> [String?] {
        var owners = [String?](repeating: nil, count: partitions)
        let members = Set(nodes)
        guard !members.isEmpty else { return owners }
        let (share, extra) = partitions.quotientAndRemainder(dividingBy: members.count)
        var pairs: [(score: UInt64, node: String, partition: Int)] = []
        for node in members { for p in 0..<partitions { pairs.append((score(node, p), node, p)) } }
        pairs.sort { ($0.score, $0.node, $0.partition) > ($1.score, $1.node, $1.partition) }
        var held: [String: Int] = [:]
        var full = 0  // members holding share + 1
        for pair in pairs where owners[pair.partition] == nil {
            let n = held[pair.node, default: 0]
            guard n < share || (n == share && full < extra) else { continue }
            if n == share { full += 1 }
            owners[pair.partition] = pair.node
            held[pair.node] = n + 1
        }
        return owners
    }

    static func score(_ node: String, _ partition: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in "\(node)/\(partition)".utf8 {
            h ^= UInt64(byte)
            h &*= 0x100_0000_01b3
        }
        h ^= h >> 33
        h &*= 0xff51_afd7_ed55_8ccd
        return h ^ (h >> 33)
    }
}

/// A cluster's configuration does not fit this node.
public struct ClusterConfigurationError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// What `GET /cluster` and `sensorlog cluster status` show: this node's view of the members,
/// each partition's owner and epoch, the stream's end and how far this node has applied it.
public struct ClusterStatus: Encodable, Sendable {
    public struct Partition: Encodable, Sendable {
        public var partition: Int
        /// The lease's holder now (nil: no owner; writes to the partition are refused until one takes it).
        public var owner: String?
        public var ownedHere: Bool
        /// The latest fence's epoch this node has read (its own, when it owns the partition).
        public var epoch: UInt64
        public var streamLastSequence: UInt64?
        /// The stream's first sequence: above 1 once retention purged it (`last + 1` when empty).
        public var streamFirstSequence: UInt64?
        /// The NATS server (its `server_name`) leading the stream's replicas.
        public var streamLeader: String?
        /// The stream sequence this node's log holds up to.
        public var appliedSequence: UInt64
        /// Stream messages not in this node's log yet (nil when the stream cannot be read).
        public var lag: UInt64?
        /// The partition's end offset in this node's log.
        public var localEnd: Int64
        /// A former owner's batches that got in after a newer fence, skipped.
        public var skippedStale: Int

        enum CodingKeys: String, CodingKey {
            case partition, owner, epoch, lag
            case ownedHere = "owned_here", streamLastSequence = "stream_last_sequence", appliedSequence = "applied_sequence"
            case streamFirstSequence = "stream_first_sequence", streamLeader = "stream_leader"
            case localEnd = "local_end", skippedStale = "skipped_stale"
        }
    }

    public var node: String
    /// The NATS server this node is connected to now.
    public var nats: String?
    /// Nodes whose membership lease is alive.
    public var members: [String]
    public var partitions: [Partition]
    /// Every node that reported its progress lately (members, and nodes still catching up).
    public var nodes: [Node]

    public struct Node: Encodable, Sendable {
        public var node: String
        /// Per partition, the stream sequence the node's log holds up to.
        public var applied: [UInt64]
        /// Per partition, stream messages not in the node's log yet (as of its last report, a
        /// second old at most).
        public var lag: [UInt64?]
        public var member: Bool
    }
}

extension ClusterNode {
    /// This node's view of the cluster now (reads each lease and stream: a few milliseconds).
    public func status() async -> ClusterStatus {
        let live = state.withLock { $0.live }
        let (owners, leases) = (owners, leases)
        // One hop off the cooperative pool for every NATS read the answer needs.
        let read = (try? await NATSConnection.offPool(PartitionOwner.reads) { () throws(NATSError) in
            let tails = try owners.map { owner throws(NATSError) in (try owner.lease.currentHolder(), try owner.stream.state()) }
            var reports: [(String, [UInt8])] = []
            for key in try leases.keys() where key.hasPrefix("progress.") {
                if let (value, _) = try leases.get(key) { reports.append((String(key.dropFirst("progress.".count)), value)) }
            }
            return (tails, reports)
        })
        var partitions: [ClusterStatus.Partition] = []
        for (p, owner) in owners.enumerated() {
            let (holder, stream) = read.map { ($0.0[p].0, Optional($0.0[p].1)) } ?? (nil, nil)
            let last = stream?.lastSequence
            let follower = await owner.follower
            let applied = follower.nextSequence - 1
            partitions.append(ClusterStatus.Partition(
                partition: p, owner: holder, ownedHere: owns(p), epoch: follower.epoch, streamLastSequence: last, streamFirstSequence: stream?.firstSequence,
                streamLeader: stream?.leader,
                appliedSequence: applied, lag: last.map { $0 > applied ? $0 - applied : 0 }, localEnd: log.partitions[p].endOffset,
                skippedStale: follower.skipped))
        }
        let nodes = (read?.1 ?? []).sorted { $0.0 < $1.0 }.map { name, value in
            let applied = String(decoding: value, as: UTF8.self).split(separator: ",").map { UInt64($0) ?? 0 }
            let lag = applied.indices.map { p in
                p < partitions.count ? partitions[p].streamLastSequence.map { $0 > applied[p] ? $0 - applied[p] : 0 } : nil
            }
            return ClusterStatus.Node(node: name, applied: applied, lag: lag, member: live.contains(name))
        }
        return ClusterStatus(node: configuration.nodeID, nats: connection.connectedURL, members: live.sorted(), partitions: partitions,
                             nodes: nodes)
    }
}
