public import SensorLogCore

extension Log {
    /// Appends a batch that another log encoded and numbered: a follower's copy of a partition's
    /// stream in cluster mode (docs/cluster-design.md). The bytes are kept as they are, append
    /// time included, so the copy is the same log batch for batch. The batch must:
    /// - pass the checks every read makes (header, length, CRC, a payload that decodes);
    /// - be a live kind: readings or sensor deletions (compaction's kinds are never appended);
    /// - hold only sensors of this partition;
    /// - start exactly at the partition's end.
    /// A deletion masks its sensor's earlier readings once it is durable, as `appendDeletion`.
    /// - Throws: `.notContiguous` for a gap or a batch already copied (read the source again
    ///   from `endOffset`), `.corruptBatch`, `.invalidArgument`.
    public func appendCopy(_ batch: [UInt8], toPartition partition: Int) async throws(LogError) -> AppendResult {
        guard partitions.indices.contains(partition) else { throw LogError(.invalidArgument, "no partition \(partition)") }
        let decoded = try checkedCopy(batch, partition: partition)
        var copy = batch
        var outcome: Result<(AppendResult, DurabilityWaiter?), LogError>!
        copy.withUnsafeMutableBytes { raw in
            let header = decoded.header
            do throws(LogError) {
                outcome = .success(try partitions[partition].write(
                    encoded: UnsafeRawBufferPointer(raw), count: header.recordCount, maxTimestamp: header.maxTimestamp,
                    appendTime: header.appendTime, at: header.baseOffset))
            } catch { outcome = .failure(error) }
        }
        let (result, waiter) = try outcome.get()
        if let waiter { try await partitions[partition].wait(waiter) }
        if decoded.kind == .sensorDeletions {
            for sensorID in decoded.sensorIDs { partitions[partition].deletions.add(sensorID, before: result.baseOffset) }
        }
        return result
    }

    /// Encodes `readings` (all of `partition`) as the batch that would continue the partition now:
    /// numbered from its end, stamped with this log's clock. Nothing is written: cluster mode's
    /// owner publishes the batch to the partition's stream first, then `appendCopy`s it (as its
    /// only writer, it knows the end does not move in between).
    public func encodeNext(_ readings: [Reading], partition: Int) throws(LogError) -> [UInt8] {
        guard partitions.indices.contains(partition), !readings.isEmpty, readings.count <= configuration.limits.maxBatchRecords else {
            throw LogError(.invalidArgument, "cannot encode \(readings.count) readings for partition \(partition)")
        }
        let encoder = encoders.take()
        defer { encoders.give(encoder) }
        var outcome: Result<[UInt8], LogError>!
        readings.withUnsafeBufferPointer { buffer in
            do throws(LogError) {
                let bytes = try encoder.encode(buffer, appendTime: configuration.time.wallNanoseconds,
                                               maxBatchBytes: configuration.limits.maxBatchBytes)
                var batch = Array(bytes)
                let end = partitions[partition].endOffset
                batch.withUnsafeMutableBytes { $0.storeBytes(of: end.littleEndian, toByteOffset: 0, as: Int64.self) }
                // What every copy will check, checked before the batch leaves this node.
                _ = try checkedCopy(batch, partition: partition)
                outcome = .success(batch)
            } catch { outcome = .failure(error) }
        }
        return try outcome.get()
    }

    /// The batch decoded, if it may be copied into `partition`.
    private func checkedCopy(_ batch: [UInt8], partition: Int) throws(LogError) -> DecodedBatch {
        let refuse = { (why: String) in LogError(.corruptBatch, "a copied batch for partition \(partition) \(why)") }
        var decoded = DecodedBatch()
        let outcome: Result<Void, DecodeError> = batch.withUnsafeBytes { raw in
            Result { () throws(DecodeError) in
                let header = try BatchHeader.parse(raw, maxBatchBytes: configuration.limits.maxBatchBytes)
                guard header.length == raw.count else { throw DecodeError("is \(raw.count) bytes, its header says \(header.length)") }
                guard BatchHeader.checksum(raw) == header.crc else { throw DecodeError("fails its CRC") }
                try BatchDecoder().decode(raw, header: header, into: &decoded)
            }
        }
        if case .failure(let error) = outcome { throw refuse(error.message) }
        guard decoded.header.kind == .readings || decoded.header.kind == .sensorDeletions else {
            throw LogError(.invalidArgument, "a copied batch of kind \(decoded.header.kind) for partition \(partition): only readings and deletions are appended")
        }
        if let stray = decoded.sensorIDs.first(where: { self.partition(for: $0) != partition }) {
            throw LogError(.invalidArgument, "a copied batch for partition \(partition) holds sensor \(stray) of partition \(self.partition(for: stray))")
        }
        return decoded
    }
}
