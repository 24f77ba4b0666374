import Foundation
import PropertyBased
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// Encodes and decodes through the real header parse and CRC check.
func roundTrip(_ readings: [Reading]) throws -> [Reading] {
    let encoder = BatchEncoder()
    let decoder = BatchDecoder()
    let bytes = try readings.withUnsafeBufferPointer { try encoder.encode($0, appendTime: 42, maxBatchBytes: Limits().maxBatchBytes) }
    let header = try BatchHeader.parse(bytes, maxBatchBytes: Limits().maxBatchBytes)
    #expect(header.length == bytes.count)
    #expect(header.crc == BatchHeader.checksum(bytes))
    #expect(header.recordCount == readings.count)
    #expect(header.minTimestamp == readings.map(\.timestamp).min())
    #expect(header.maxTimestamp == readings.map(\.timestamp).max())
    var batch = DecodedBatch()
    try decoder.decode(bytes, header: header, into: &batch)
    return batch.readings
}

func identical(_ a: [Reading], _ b: [Reading]) -> Bool {
    a.count == b.count && zip(a, b).allSatisfy { $0.isIdentical(to: $1) }
}

@Suite struct CRC32CTests {
    // Published CRC32C vectors: RFC 3720 (iSCSI) appendix B.4, and the "123456789" check value.
    @Test func publishedVectors() {
        func crc(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { CRC32CChecksum.checksum($0) } }
        #expect(crc(Array("123456789".utf8)) == 0xE306_9283)
        #expect(crc([UInt8](repeating: 0, count: 32)) == 0x8A91_36AA)
        #expect(crc([UInt8](repeating: 0xFF, count: 32)) == 0x62A8_AB43)
        #expect(crc((0..<32).map { UInt8($0) }) == 0x46DD_794E)
        #expect(crc((0..<32).map { UInt8(31 - $0) }) == 0x113F_DB5C)
        #expect(crc([]) == 0)
    }

    @Test func hardwareMatchesTableOnEveryLength() {
        var rng = SplitMix64(seed: 1)
        for length in Array(0..<300) + [1023, 3072, 3073, 4096, 65_537, 1 << 20] {
            let bytes = (0..<length).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            bytes.withUnsafeBytes { raw in
                #expect(CRC32CChecksum.checksum(raw) == CRC32CChecksum.portableChecksum(raw), "length \(length)")
                // Continuing a checksum equals checksumming the concatenation.
                let half = raw.count / 2
                let continued = CRC32CChecksum.checksum(UnsafeRawBufferPointer(rebasing: raw[half...]),
                                                        continuing: CRC32CChecksum.checksum(UnsafeRawBufferPointer(rebasing: raw[..<half])))
                #expect(continued == CRC32CChecksum.checksum(raw))
            }
        }
    }
}

@Suite struct BatchCodecTests {
    @Test func standardWorkloadRoundTrips() throws {
        let readings = Array(standardWorkload(seconds: 1, sensors: 2000))
        #expect(identical(try roundTrip(readings), readings))
    }

    @Test func awkwardValuesRoundTripBitForBit() throws {
        let values: [Double] = [0, -0.0, 1e300, -1e-300, .pi, 0.1, 0.3, 123456.789, 9007199254740993, .leastNonzeroMagnitude,
                                .greatestFiniteMagnitude, .nan, .infinity, -.infinity, Double(bitPattern: 0x7FF8_0000_DEAD_BEEF)]
        let readings = values.enumerated().map { Reading(sensorID: "s", type: "t", value: $1, location: "l", timestamp: Int64($0)) }
        #expect(identical(try roundTrip(readings), readings))
        for v in values {
            let one = [Reading(sensorID: "s", type: "t", value: v, location: "l", timestamp: 0)]
            #expect(identical(try roundTrip(one), one))
        }
    }

    @Test func extremeTimestampsRoundTrip() throws {
        let stamps: [Int64] = [.min, .max, 0, -1, 1, .max - 1, 1_700_000_000_000_000_000]
        let readings = stamps.map { Reading(sensorID: "s-\($0 & 3)", type: "temperature", value: 1.5, location: "l", timestamp: $0) }
        #expect(identical(try roundTrip(readings), readings))
    }

    @Test func aSensorThatMovesInsideABatch() throws {
        let readings = [
            Reading(sensorID: "a", type: "temperature", value: 1, location: "x", timestamp: 3),
            Reading(sensorID: "a", type: "temperature", value: 2, location: "y", timestamp: 2),
            Reading(sensorID: "a", type: "humidity", value: 3, location: "y", timestamp: 1),
            Reading(sensorID: "a", type: "temperature", value: 4, location: "x", timestamp: 0),
            Reading(sensorID: "ab", type: "temperature", value: 5, location: "x", timestamp: 9),
            Reading(sensorID: "é😀", type: "pressure", value: 6, location: "ü", timestamp: 9),
        ]
        #expect(identical(try roundTrip(readings), readings))
    }

    @Test func standardWorkloadIsSmall() throws {
        // One second of the standard workload in one partition's batches: well under 12 B/reading.
        let readings = standardWorkload(seconds: 2)
        var groups: [Int: [Reading]] = [:]
        for r in readings { groups[PartitionHash.partition(of: r.sensorID, partitions: 8), default: []].append(r) }
        let encoder = BatchEncoder()
        var bytes = 0
        for (_, group) in groups {
            bytes += try group.withUnsafeBufferPointer { try encoder.encode($0, appendTime: 0, maxBatchBytes: 32 << 20).count }
        }
        let perReading = Double(bytes) / Double(readings.count)
        #expect(perReading < 8, "\(perReading) B/reading")
    }

    static let sensorGen = Gen.oneOf(Gen.letterOrNumber.string(of: 1...20), Gen.always("sensor-1"), Gen.always("sensor-12"))
    static let typeGen = Gen.oneOf(Gen.always("temperature"), Gen.always("humidity"), Gen.letter.string(of: 1...8))
    static let valueGen = Gen.oneOf(
        Gen.double(in: -1e6...1e6),
        Gen.int(in: -100_000...100_000).map { Double($0) / 1000 },
        Gen.uint64().map { Double(bitPattern: $0) })
    static let locationGen = Gen.oneOf(Gen.letterOrNumber.string(of: 1...10), Gen.always("site-1"))
    static let timestampGen = Gen.oneOf(
        Gen.int64(in: 1_700_000_000_000_000_000...1_700_000_100_000_000_000),
        Gen.int64(in: 1_700_000_000...1_700_000_100).map { $0 * 1_000_000_000 },
        Gen.int64())
    static let readingGen = zip(sensorGen, typeGen, valueGen, locationGen, timestampGen).map { t in
        Reading(sensorID: t.0, type: t.1, value: t.2, location: t.3, timestamp: t.4)
    }

    @Test func randomBatchesRoundTrip() async {
        await propertyCheck(count: 300, input: Self.readingGen.array(of: 1...200)) { readings in
            do {
                #expect(identical(try roundTrip(readings), readings))
            } catch {
                Issue.record("round trip threw \(error)")
            }
        }
    }

    @Test func anyFlippedByteIsDetected() async {
        // A flip anywhere under the CRC changes the checksum (CRC32C catches every burst up to 32 bits).
        await propertyCheck(count: 300, input: Self.readingGen.array(of: 1...100), Gen.int(in: 0...Int.max), Gen.uint8(in: 1...255)) {
            readings, where_, mask in
            let encoder = BatchEncoder()
            guard var bytes = try? readings.withUnsafeBufferPointer({ Array(try encoder.encode($0, appendTime: 0, maxBatchBytes: 32 << 20)) }) else {
                Issue.record("encode threw")
                return
            }
            let position = BatchHeader.crcStart + where_ % (bytes.count - BatchHeader.crcStart)
            bytes[position] ^= mask
            bytes.withUnsafeBytes { raw in
                let header = try? BatchHeader.parse(raw, maxBatchBytes: 32 << 20)
                let detected = header == nil || header!.length != raw.count || header!.crc != BatchHeader.checksum(raw)
                #expect(detected)
            }
        }
    }

    @Test func hostilePayloadsNeverTrap() async {
        // Payload bytes with a valid header and a matching CRC: the decoder must throw, never trap.
        await propertyCheck(count: 500, input: Gen.uint8().array(of: 0...300), Gen.int(in: 1...50), Gen.bool) { payload, count, lz4 in
            var header = [UInt8](repeating: 0, count: BatchHeader.size)
            func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { header.replaceSubrange(at..<(at + $0.count), with: $0) } }
            put(UInt32(BatchHeader.size + payload.count), 8)
            header[16] = 1
            header[18] = lz4 ? 1 : 0
            put(UInt32(count), 20)
            put(UInt32(lz4 ? 4096 : payload.count), 48)
            var bytes = header + payload
            if bytes.count == BatchHeader.size { bytes.append(0) ; put(UInt32(bytes.count), 8); bytes.replaceSubrange(0..<BatchHeader.size, with: header) }
            bytes.withUnsafeBytes { raw in
                guard let parsed = try? BatchHeader.parse(raw, maxBatchBytes: 32 << 20) else { return }
                var batch = DecodedBatch()
                _ = try? BatchDecoder().decode(raw, header: parsed, into: &batch)
            }
        }
    }
}

/// Sparse readings batches (kind 3): what compaction writes when it drops a deleted sensor's
/// readings without splitting the batch.
@Suite struct SparseBatchTests {
    /// Removed runs for `gaps[i]` removed records before reading i, then `trailing` after the last.
    static func runs(gaps: [Int], trailing: Int) -> [RemovedRun] {
        var runs: [RemovedRun] = []
        var live = 0
        for g in gaps + [trailing] {
            if g > 0 {
                runs.append(RemovedRun(liveBefore: live, count: g))
                live = 0
            }
            live += 1
        }
        return runs
    }

    static func encode(_ readings: [Reading], _ runs: [RemovedRun]) throws -> [UInt8] {
        // The bytes live in the encoder's buffer: keep it alive while they are copied.
        let encoder = BatchEncoder()
        return try withExtendedLifetime(encoder) {
            try readings.withUnsafeBufferPointer { Array(try encoder.encode($0, removed: runs, appendTime: 42, maxBatchBytes: 32 << 20)) }
        }
    }

    @Test func sparseBatchesRoundTripWithTheirOffsets() async {
        let input = zip(BatchCodecTests.readingGen, Gen.oneOf(Gen.always(0), Gen.always(0), Gen.int(in: 1...3)))
            .array(of: 1...120)
        await propertyCheck(count: 300, input: input, Gen.int(in: 0...4)) { pairs, trailing in
            let readings = pairs.map(\.0)
            var gaps = pairs.map(\.1)
            if gaps.allSatisfy({ $0 == 0 }) && trailing == 0 { gaps[0] = 1 }
            var expectedOffsets: [Int64] = []
            var position: Int64 = 0
            for g in gaps {
                position += Int64(g)
                expectedOffsets.append(position)
                position += 1
            }
            let total = Int(position) + trailing
            do {
                var bytes = try Self.encode(readings, Self.runs(gaps: gaps, trailing: trailing))
                bytes.withUnsafeMutableBytes { $0.storeBytes(of: Int64(1000).littleEndian, toByteOffset: 0, as: Int64.self) }
                try bytes.withUnsafeBytes { raw in
                    let header = try BatchHeader.parse(raw, maxBatchBytes: 32 << 20)
                    #expect(header.kind == .sparseReadings && header.recordCount == total)
                    #expect(header.removedCount == total - readings.count && header.readingCount == readings.count)
                    #expect(header.crc == BatchHeader.checksum(raw))
                    var batch = DecodedBatch()
                    try BatchDecoder().decode(raw, header: header, into: &batch)
                    #expect(batch.kind == .readings && identical(batch.readings, readings))
                    #expect((0..<batch.count).map { batch.offset(at: $0) } == expectedOffsets.map { $0 + 1000 })
                    #expect(batch.nextOffset == 1000 + Int64(total))
                    for (i, offset) in expectedOffsets.enumerated() {
                        #expect(batch.firstIndex(atOrAfter: 1000 + offset) == i)
                    }
                    #expect(batch.firstIndex(atOrAfter: 1000 + Int64(total)) == batch.count)
                    // The sensor scan finds the same records at the same offsets.
                    let id = readings[0].sensorID
                    var found: [LocatedReading] = []
                    try BatchDecoder().scan(raw, header: header, sensorID: Array(id.utf8), from: .min, to: .max, partition: 0, into: &found)
                    let expected = (0..<batch.count).filter { batch.reading(at: $0).sensorID == id }
                    #expect(found.map(\.offset) == expected.map { batch.offset(at: $0) })
                    #expect(identical(found.map(\.reading), expected.map { batch.reading(at: $0) }))
                }
            } catch {
                Issue.record("sparse round trip threw \(error)")
            }
        }
    }

    @Test func aHeaderThatDisagreesWithItsRunsIsRefused() throws {
        let readings = oneSensorReadings(5)
        var bytes = try Self.encode(readings, [RemovedRun(liveBefore: 2, count: 3)])
        // Claim one removed record fewer, and re-seal the CRC: the decoder still refuses it.
        bytes.withUnsafeMutableBytes { raw in
            raw.storeBytes(of: UInt32(2).littleEndian, toByteOffset: 52, as: UInt32.self)
            raw.storeBytes(of: BatchHeader.checksum(UnsafeRawBufferPointer(raw)).littleEndian, toByteOffset: 12, as: UInt32.self)
        }
        try bytes.withUnsafeBytes { raw in
            let header = try BatchHeader.parse(raw, maxBatchBytes: 32 << 20)
            var batch = DecodedBatch()
            #expect(throws: DecodeError.self) { try BatchDecoder().decode(raw, header: header, into: &batch) }
        }
        // A removed count on another kind, or all of a sparse batch removed, fails the header check.
        let encoder = BatchEncoder()
        var dense = try withExtendedLifetime(encoder) {
            try readings.withUnsafeBufferPointer { Array(try encoder.encode($0, appendTime: 1, maxBatchBytes: 32 << 20)) }
        }
        dense.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 52, as: UInt32.self) }
        dense.withUnsafeBytes { raw in #expect(throws: DecodeError.self) { try BatchHeader.parse(raw, maxBatchBytes: 32 << 20) } }
        bytes.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(8).littleEndian, toByteOffset: 52, as: UInt32.self) }
        bytes.withUnsafeBytes { raw in #expect(throws: DecodeError.self) { try BatchHeader.parse(raw, maxBatchBytes: 32 << 20) } }
    }

    @Test func hostileSparsePayloadsNeverTrap() async {
        // Small counts, and counts near the u32 limit that a careless decoder would allocate for.
        let counts = Gen.oneOf(Gen.int(in: 2...50), Gen.int(in: Int(Int32.max) - 2...Int(UInt32.max)))
        await propertyCheck(count: 500, input: Gen.uint8().array(of: 1...300), counts, Gen.oneOf(Gen.int(in: 1...49), Gen.int(in: 1...Int(Int32.max)))) {
            payload, count, removed in
            guard removed < count else { return }
            var header = [UInt8](repeating: 0, count: BatchHeader.size)
            func put<T: FixedWidthInteger>(_ v: T, _ at: Int) { withUnsafeBytes(of: v.littleEndian) { header.replaceSubrange(at..<(at + $0.count), with: $0) } }
            put(UInt32(BatchHeader.size + payload.count), 8)
            header[16] = 1
            header[17] = RecordKind.sparseReadings.rawValue
            put(UInt32(count), 20)
            put(UInt32(payload.count), 48)
            put(UInt32(removed), 52)
            (header + payload).withUnsafeBytes { raw in
                guard let parsed = try? BatchHeader.parse(raw, maxBatchBytes: 32 << 20) else { return }
                var batch = DecodedBatch()
                if (try? BatchDecoder().decode(raw, header: parsed, into: &batch)) != nil {
                    // What decodes is consistent: every live offset inside the batch, ascending.
                    let offsets = (0..<batch.count).map { batch.offset(at: $0) }
                    #expect(offsets == offsets.sorted() && Set(offsets).count == offsets.count)
                    #expect(offsets.allSatisfy { $0 < Int64(count) } && batch.count == count - removed && batch.count <= payload.count)
                }
                var found: [LocatedReading] = []
                _ = try? BatchDecoder().scan(raw, header: parsed, sensorID: Array("a".utf8), from: .min, to: .max, partition: 0, into: &found)
            }
        }
    }

    @Test func aHugeClaimIsRefusedWithoutAllocating() throws {
        // Found in review: one run of 2^31 removed records in a batch claiming 2^32 - 1 offsets
        // made the decoder reserve ~17 GB and then trap converting a position to Int32; and a
        // removed-records batch allocated per offset. Both now decode (or refuse) at once.
        func batch(kind: RecordKind, count: UInt32, removed: UInt32, payload: [UInt8]) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: BatchHeader.size) + payload
            bytes.withUnsafeMutableBytes { raw in
                raw.storeBytes(of: UInt32(raw.count).littleEndian, toByteOffset: 8, as: UInt32.self)
                raw[16] = BatchHeader.formatVersion
                raw[17] = kind.rawValue
                raw.storeBytes(of: count.littleEndian, toByteOffset: 20, as: UInt32.self)
                raw.storeBytes(of: UInt32(payload.count).littleEndian, toByteOffset: 48, as: UInt32.self)
                raw.storeBytes(of: removed.littleEndian, toByteOffset: 52, as: UInt32.self)
                raw.storeBytes(of: BatchHeader.checksum(UnsafeRawBufferPointer(raw)).littleEndian, toByteOffset: 12, as: UInt32.self)
            }
            return bytes
        }
        for bytes in [batch(kind: .sparseReadings, count: .max, removed: 1 << 31, payload: [1, 0, 0x80, 0x80, 0x80, 0x80, 8]),
                      batch(kind: .sparseReadings, count: UInt32(Int32.max), removed: 1, payload: [1, 0, 1])] {
            try bytes.withUnsafeBytes { raw in
                let header = try BatchHeader.parse(raw, maxBatchBytes: 32 << 20)
                var decoded = DecodedBatch()
                #expect(throws: DecodeError.self) { try BatchDecoder().decode(raw, header: header, into: &decoded) }
                var found: [LocatedReading] = []
                #expect(throws: DecodeError.self) {
                    try BatchDecoder().scan(raw, header: header, sensorID: [0x61], from: .min, to: .max, partition: 0, into: &found)
                }
            }
        }
        try batch(kind: .removed, count: .max, removed: 0, payload: [0]).withUnsafeBytes { raw in
            let header = try BatchHeader.parse(raw, maxBatchBytes: 32 << 20)
            var decoded = DecodedBatch()
            try BatchDecoder().decode(raw, header: header, into: &decoded)
            #expect(decoded.count == 0 && decoded.nextOffset == Int64(UInt32.max))
        }
    }
}
