import SensorLogCore

import LogStore

/// Opening a log over arbitrary files: recovery of the segments (PartitionLoader) and the replay
/// of the commit journal (JournalRecord.swift, `PartitionLoader.replay`).
enum RecoveryTarget {
    /// Small limits, so that little input reaches every branch; no fsync (the files are in
    /// /dev/shm and no power is lost here).
    static func configuration(_ fsync: FsyncPolicy) -> LogConfiguration {
        var limits = Limits()
        limits.partitions = 1
        limits.indexIntervalBytes = 64
        limits.commitJournalBytes = 64 << 10
        let noSync = FileOperations(sync: { _ in 0 }, fullSync: { _ in 0 }, syncDirectory: { _ in 0 })
        return LogConfiguration(limits: limits, fsync: fsync, fileOperations: noSync)
    }

    /// Segment files, index files and no journal: a `FileSet`, its first byte odd to have the
    /// batches' CRCs set first.
    @Sendable static func recovery(_ input: UnsafeRawBufferPointer) {
        open(input, fsync: .interval)
    }

    /// The same with the commit journal's files (under `always`, the policy that writes them).
    @Sendable static func journal(_ input: UnsafeRawBufferPointer) {
        open(input, fsync: .always)
    }

    /// Recovery either refuses with a `LogError`, or returns a log that: `verify` finds no error
    /// in the batches of (framing: header, CRC, offsets; and payloads unless the CRCs were forged;
    /// in a closed segment recovery checked only through its index, only that check's part); opens again with nothing left to cut and the same offsets; and reads
    /// (through a reader) from its start, offsets only going up, never past its end.
    static func open(_ input: UnsafeRawBufferPointer, fsync: FsyncPolicy) {
        guard let mode = input.first else { return }
        var files = FileSet(UnsafeRawBufferPointer(rebasing: input.dropFirst()))
        if mode & 1 == 1 { files.fixChecksums() }
        let directory = Scratch.fresh("log")
        files.write(to: directory)
        let config = configuration(fsync)

        let log: Log
        do { log = try Log.open(dataDirectory: directory, configuration: config) } catch { return }
        let first = (log.partitions[0].startOffset, log.partitions[0].endOffset)
        let rebuiltIndexes = log.partitions[0].recovery.rebuiltIndexes
        do { try log.close() } catch { check(false, "a recovered log does not close: \(error)") }

        let verification: PartitionVerification
        do { verification = try LogDirectory(dataDirectory: directory, limits: config.limits).verify(partition: 0) } catch {
            return check(false, "verify cannot read a recovered log: \(error)")
        }
        // With the CRCs forged (odd first byte), a batch may carry a valid CRC over a payload the
        // decoder refuses: recovery checks CRCs, not payloads (the batch target covers the
        // decoder), so verify's "does not decode" is expected there and nowhere else.
        // Recovery checks a closed segment cheaply, as Kafka's: through its index, walking the
        // batch headers from the last entry on, without CRCs. When that check passed (no index
        // rebuilt), damage elsewhere in the closed segment is for verify and the readers (which
        // refuse it); when recovery rebuilt the index, it read every batch, CRCs and all.
        let closed = DataLayout(directory).partition(0).segment(0)
        let trustedClosed = rebuiltIndexes == 0
        let batchErrors = verification.problems.filter { (problem: VerifyProblem) -> Bool in
            let forgedPayload = mode & 1 == 1 && problem.message.contains("does not decode")
            let inTrustedClosed = trustedClosed && problem.path == closed.display
            return problem.severity == .error && problem.path.hasSuffix(".log") && !forgedPayload && !inTrustedClosed
        }
        check(batchErrors.isEmpty, "recovery returned a log whose batches fail verify: \(batchErrors)")
        check(verification.startOffset == first.0 && verification.endOffset == first.1,
              "verify reads offsets \(verification.startOffset)..<\(verification.endOffset), recovery said \(first.0)..<\(first.1)")

        let again: Log
        do { again = try Log.open(dataDirectory: directory, configuration: config) } catch {
            return check(false, "a recovered log does not open again: \(error)")
        }
        defer { try? again.close() }
        let recovery = again.partitions[0].recovery
        check(recovery.truncatedBytes == 0 && recovery.journalBatches == 0 && recovery.rebuiltIndexes == 0,
              "the second open still cut, replayed or rebuilt: \(recovery)")
        check((again.partitions[0].startOffset, again.partitions[0].endOffset) == first, "the second open has other offsets")

        let reader = again.reader(partition: 0, from: first.0)
        var next = first.0
        do {
            while let (batch, _) = try reader.next() {
                check(batch.nextOffset > next && batch.baseOffset >= next, "reader repeats offsets at \(next)")
                next = batch.nextOffset
            }
        } catch {
            let forgedPayload = mode & 1 == 1 && error.message.contains("does not decode")
            let inTrustedClosed = trustedClosed && error.path == closed.display
            check(forgedPayload || inTrustedClosed, "a recovered log does not read: \(error)")
        }
        check(next <= first.1, "the reader ends at \(next), past the log's end at \(first.1)")
    }
}
