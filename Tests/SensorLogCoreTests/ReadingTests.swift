import PropertyBased
import SensorLogCore
import Testing

@Suite struct PartitionHashTests {
    // Published FNV-1a 64 test vectors (Fowler/Noll/Vo reference code, test_fnv.c).
    @Test(arguments: [
        ("", 0xcbf2_9ce4_8422_2325 as UInt64),
        ("a", 0xaf63_dc4c_8601_ec8c),
        ("foobar", 0x85944171f73967e8),
    ])
    func fnv1a64Vectors(input: String, expected: UInt64) {
        #expect(PartitionHash.fnv1a64(input) == expected)
    }

    @Test func partitionIsStableAndInRange() async {
        await propertyCheck(input: Gen.letterOrNumber.string(of: 1...40), Gen.int(in: 1...1024)) { id, n in
            let p = PartitionHash.partition(of: id, partitions: n)
            #expect((0..<n).contains(p))
            #expect(p == Int(PartitionHash.fnv1a64(id) % UInt64(n)))
        }
    }
}

@Suite struct ValidationTests {
    let validator = ReadingValidator()
    func reading(_ id: String = "s-1", type: String = "temperature", value: Double = 21.5, location: String = "lab") -> Reading {
        Reading(sensorID: id, type: type, value: value, location: location, timestamp: 1)
    }

    @Test func acceptsAStandardReading() throws {
        try validator.validate(reading())
        try validator.validate(reading("capteur-é", location: "salle ü"))
        try validator.validate(reading(type: "humidity", value: 100))
    }

    @Test(arguments: [
        (Reading(sensorID: "", type: "temperature", value: 1, location: "l", timestamp: 0), ReadingError.Code.invalidSensorID, "sensor_id"),
        (Reading(sensorID: String(repeating: "x", count: 129), type: "temperature", value: 1, location: "l", timestamp: 0), .invalidSensorID, "sensor_id"),
        (Reading(sensorID: "a\u{7}b", type: "temperature", value: 1, location: "l", timestamp: 0), .invalidSensorID, "sensor_id"),
        (Reading(sensorID: "a\u{85}b", type: "temperature", value: 1, location: "l", timestamp: 0), .invalidSensorID, "sensor_id"),
        (Reading(sensorID: "a", type: "voltage", value: 1, location: "l", timestamp: 0), .unknownType, "type"),
        (Reading(sensorID: "a", type: "temperature", value: .nan, location: "l", timestamp: 0), .nonFiniteValue, "value"),
        (Reading(sensorID: "a", type: "temperature", value: -.infinity, location: "l", timestamp: 0), .nonFiniteValue, "value"),
        (Reading(sensorID: "a", type: "humidity", value: 100.5, location: "l", timestamp: 0), .outOfRange, "value"),
        (Reading(sensorID: "a", type: "humidity", value: -0.1, location: "l", timestamp: 0), .outOfRange, "value"),
        (Reading(sensorID: "a", type: "temperature", value: 1, location: "", timestamp: 0), .invalidLocation, "location"),
        (Reading(sensorID: "a", type: "temperature", value: 1, location: String(repeating: "y", count: 129), timestamp: 0), .invalidLocation, "location"),
    ])
    func rejects(reading: Reading, code: ReadingError.Code, field: String) {
        #expect(throws: ReadingError.self) { try validator.validate(reading) }
        do {
            try validator.validate(reading)
        } catch {
            #expect(error.code == code)
            #expect(error.field == field)
        }
    }

    @Test func limitsValidate() throws {
        try Limits().validate()
        var small = Limits()
        small.segmentBytes = 1000
        #expect(throws: LimitsError.self) { try small.validate() }
        var partitions = Limits()
        partitions.partitions = 0
        #expect(throws: LimitsError.self) { try partitions.validate() }
    }
}

@Suite struct ByteValidationTests {
    /// The parser's byte-level entry and the reading-level one accept and refuse the same things.
    @Test func bytesAndReadingAgree() async {
        let validator = ReadingValidator()
        let text = Gen.oneOf(
            Gen.letterOrNumber.string(of: 0...140),
            Gen.always("a\u{7}b"), Gen.always("a\u{85}b"), Gen.always("capteur-é"), Gen.always("\u{7F}"))
        let value = Gen.oneOf(Gen.double(in: -200...200), Gen.always(Double.nan), Gen.always(Double.infinity))
        await propertyCheck(count: 500, input: text, Gen.int(in: 0...(validator.typeNames.count - 1)), value, text) { id, t, v, location in
            let reading = Reading(sensorID: id, type: validator.typeNames[t], value: v, location: location, timestamp: 0)
            var byReading: ReadingError?
            do throws(ReadingError) { try validator.validate(reading) } catch { byReading = error }
            var byBytes: ReadingError?
            var idCopy = id
            var locationCopy = location
            idCopy.withUTF8 { idBytes in
                locationCopy.withUTF8 { locationBytes in
                    do throws(ReadingError) {
                        try validator.validate(sensorID: UnsafeRawBufferPointer(idBytes), typeIndex: t, value: v,
                                               location: UnsafeRawBufferPointer(locationBytes))
                    } catch {
                        byBytes = error
                    }
                }
            }
            #expect(byReading == byBytes)
        }
    }
}
