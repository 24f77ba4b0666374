import SensorLogCore

import LogStore

/// The batch codec (BatchHeader.swift, BatchDecoder.swift, SensorScan.swift): the path a reader
/// takes over a batch's bytes.
enum BatchTarget {
    static let maxBatchBytes = Limits().maxBatchBytes

    /// The first byte chooses: even, the rest is a batch as a segment holds it (so the CRC must
    /// match, as in the file); odd, its length and CRC fields are set to what the rest holds
    /// first, so the fuzzer reaches the payload decoder. A batch the reader's checks accept (header
    /// parse, length, CRC, decode) must: have the CRC it carries; decode to the records the header
    /// counts, each timestamp within the header's bounds and each offset within the batch's;
    /// give, through the sensor index's hashing and the sensor scan, the same sensors and records
    /// as the full decode; and re-encode to a batch that decodes to the same records.
    @Sendable static func run(_ input: UnsafeRawBufferPointer) {
        guard let mode = input.first else { return }
        var bytes = Array(input.dropFirst())
        if mode & 1 == 1, bytes.count >= BatchHeader.size {
            bytes.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: UInt32(truncatingIfNeeded: raw.count).littleEndian, toByteOffset: 8, as: UInt32.self)
                raw.storeBytes(of: BatchHeader.checksum(UnsafeRawBufferPointer(raw)).littleEndian, toByteOffset: 12, as: UInt32.self)
            }
        }
        bytes.withUnsafeBytes { raw in decodeAndCheck(raw) }
    }

    static func decodeAndCheck(_ raw: UnsafeRawBufferPointer) {
        // As SegmentScanner.probe: the header, then a batch exactly as long as it says, then its CRC.
        guard let header = try? BatchHeader.parse(raw, maxBatchBytes: maxBatchBytes), header.length == raw.count,
              BatchHeader.checksum(raw) == header.crc
        else { return }
        let decoder = BatchDecoder()
        var batch = DecodedBatch()
        do { try decoder.decode(raw, header: header, into: &batch) } catch { return }

        check(header.recordCount >= 1 && header.length > BatchHeader.size && header.length <= maxBatchBytes, "header out of bounds")
        check(header.minTimestamp <= header.maxTimestamp, "header timestamps out of order")
        switch header.kind {
        case .readings, .sparseReadings:
            check(batch.count == header.readingCount, "decoded \(batch.count) readings, header says \(header.readingCount)")
        case .sensorDeletions:
            check(batch.count == header.recordCount, "decoded \(batch.count) deletions, header says \(header.recordCount)")
        case .removed:
            check(batch.count == 0, "a batch of removed records decoded to records")
        }
        check(batch.livePositions.isEmpty || batch.livePositions.count == batch.count, "live positions do not match the records")
        for (a, b) in zip(batch.livePositions, batch.livePositions.dropFirst()) { check(a < b, "live positions not increasing") }
        for i in 0..<batch.count {
            check(batch.timestamps[i] >= header.minTimestamp && batch.timestamps[i] <= header.maxTimestamp,
                  "record \(i) timestamp \(batch.timestamps[i]) outside [\(header.minTimestamp), \(header.maxTimestamp)]")
            let offset = batch.offset(at: i)
            check(offset >= header.baseOffset && offset < header.nextOffset, "record \(i) offset \(offset) outside the batch")
            check(batch.firstIndex(atOrAfter: offset) == i, "firstIndex(atOrAfter:) does not find record \(i)")
            _ = batch.sensorID(at: i)
        }
        guard batch.kind == .readings else { return }
        let readings = batch.readings  // traps if an index column points outside its dictionary

        // The sensor index hashes the ids from the dictionary alone: the same ids as the decode.
        if let hashes = try? decoder.sensorHashes(raw, header: header) {
            check(hashes == batch.sensorIDs.map(SensorIndex.hash), "sensorHashes differs from the decoded sensor ids")
        } else {
            check(false, "sensorHashes refuses a batch the decoder accepts")
        }
        // The scan of one sensor finds what the full decode holds for it.
        for id in Set(batch.sensorIDs).sorted().prefix(3) {
            var found: [LocatedReading] = []
            do { try decoder.scan(raw, header: header, sensorID: Array(id.utf8), from: .min, to: .max, partition: 0, into: &found) } catch {
                check(false, "scan refuses a batch the decoder accepts: \(error)")
            }
            let expected = (0..<batch.count).filter { batch.sensorID(at: $0) == id }
            check(found.map(\.offset) == expected.map(batch.offset(at:)), "scan finds other offsets than the decode")
            check(zip(found, expected).allSatisfy { $0.reading.isIdentical(to: batch.reading(at: $1)) }, "scan finds other readings")
        }

        // Re-encoded (with the same removed runs), the readings come back bit for bit.
        let runs = removedRuns(batch)
        let encoder = BatchEncoder()
        withExtendedLifetime(encoder) {
            guard let again = try? readings.withUnsafeBufferPointer({ try encoder.encode($0, removed: runs, appendTime: header.appendTime, maxBatchBytes: 1 << 30) })
            else { return check(false, "decoded readings do not re-encode") }
            guard let header2 = try? BatchHeader.parse(again, maxBatchBytes: 1 << 30) else { return check(false, "re-encoded header refused") }
            var batch2 = DecodedBatch()
            do { try BatchDecoder().decode(again, header: header2, into: &batch2) } catch { return check(false, "re-encoded batch refused: \(error)") }
            check(header2.recordCount == header.recordCount && header2.minTimestamp == header.minTimestamp
                  && header2.maxTimestamp == header.maxTimestamp, "re-encoded header differs")
            let readings2 = batch2.readings
            check(readings2.count == readings.count && zip(readings, readings2).allSatisfy { $0.isIdentical(to: $1) }, "re-encoded readings differ")
            check(batch2.livePositions == batch.livePositions, "re-encoded positions differ")
        }
    }

    /// The removed runs of a sparse batch, from its live positions.
    static func removedRuns(_ batch: DecodedBatch) -> [RemovedRun] {
        guard !batch.livePositions.isEmpty else { return [] }
        var runs: [RemovedRun] = []
        var live = 0
        var next: Int32 = 0
        for p in batch.livePositions {
            if p > next {
                runs.append(RemovedRun(liveBefore: live, count: Int(p - next)))
                live = 0
            }
            live += 1
            next = p + 1
        }
        let total = Int32(batch.header.recordCount)
        if total > next { runs.append(RemovedRun(liveBefore: live, count: Int(total - next))) }
        return runs
    }
}
