import Ingest
import LogStore
import SensorLogCore
import Testing

import TestSupport

/// A partition's owner refuses a forwarded submission for what its readings are
/// (`invalid_argument`: the nodes' `--sensor-type` flags differ). The line protocol and MQTT must
/// count those readings refused, not keep them and retry for ever; HTTP answers the refusal; and
/// none of it is an append failure that would turn `/health` to 503.
@Suite struct OwnerRefusalTests {
    /// Owns partition 0; partition 1's owner refuses every forward.
    final class RefusingOwner: PartitionRouting {
        let log: Log
        init(log: Log) { self.log = log }
        func owns(_ partition: Int) -> Bool { partition == 0 }
        func appendAsOwner(_ readings: [Reading], partition: Int, expectedEnd: Int64) async throws(LogError) -> AppendResult {
            try log.appendBlocking(readings, toPartition: partition)  // no stream here: the local log alone
        }
        var maxReadingsPerAppend: Int { 2_048 }
        func forward(_ readings: [Reading], partition: Int, detailed: Bool) async -> Result<SubmissionResult, LogError> {
            .failure(LogError(.invalidArgument, "a forwarded submission holds a type this node does not accept"))
        }
    }

    @Test func theLineProtocolCountsTheOwnersRefusalAndHTTPAnswersIt() async throws {
        let f = try await Fixture.make(partitions: 2)
        defer { f.close() }
        await f.pipeline.route(through: RefusingOwner(log: f.log))
        let ids = (0..<40).map { "s\($0)" }
        let refusedIDs = ids.filter { f.log.partition(for: $0) == 1 }
        #expect(!refusedIDs.isEmpty && refusedIDs.count < ids.count)
        var groups = [[Reading]](repeating: [], count: 2)
        for id in ids { groups[f.log.partition(for: id)].append(r(id, 1)) }

        for transport in [Transport.tcp, .mqtt] {
            let counted = try await f.pipeline.submitCounting(groups, via: transport)
            #expect(counted.refused[IngestPipeline.refusedByOwner] == refusedIDs.count)
            #expect(counted.ownerRefusal?.code == .invalidArgument)
        }
        #expect(f.pipeline.unavailableReason == nil, "a refusal is not an append failure")
        #expect(f.log.partitions[0].endOffset == Int64(ids.count - refusedIDs.count), "partition 0's readings were stored once")

        await #expect(throws: LogError.self) { _ = try await f.pipeline.submitCounting(groups, via: .httpLineProtocol) }
        #expect(f.pipeline.unavailableReason == nil)
    }
}
