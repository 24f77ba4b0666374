import LineProtocol
import PropertyBased
import SensorLogCore
import Testing

let parser = LineParser(validator: ReadingValidator())

func parse(_ text: String, receiveTime: Int64 = 42) throws(LineProtocolError) -> Reading? {
    var copy = text
    var result: Result<Reading?, LineProtocolError>!
    copy.withUTF8 { bytes in
        do throws(LineProtocolError) { result = .success(try parser.parse(UnsafeRawBufferPointer(bytes), receiveTime: receiveTime)) } catch { result = .failure(error) }
    }
    return try result.get()
}

func reason(_ text: String) -> LineProtocolError.Reason? {
    do {
        _ = try parse(text)
        return nil
    } catch {
        return error.reason
    }
}

@Suite struct LineParserTests {
    @Test func theStandardLine() throws {
        let r = try #require(try parse("temperature,sensor_id=sensor-001,location=warehouse_A value=23.5 1700000000123456789"))
        #expect(r == Reading(sensorID: "sensor-001", type: "temperature", value: 23.5, location: "warehouse_A", timestamp: 1_700_000_000_123_456_789))
    }

    @Test(arguments: [
        "temperature,location=warehouse_A,sensor_id=sensor-001 value=23.5 1700000000123456789",  // tags in any order
        "temperature,sensor_id=sensor-001,rack=7,location=warehouse_A value=23.5 1700000000123456789",  // extra tags ignored
        "temperature,sensor_id=sensor-001,location=warehouse_A value=23.5 1700000000123456789\r",  // CRLF
        "temperature,sensor_id=sensor-001,location=warehouse_A value=23.5,battery=3.1,note=\"a, b=c \\\" d\" 1700000000123456789",
        "temperature,sensor_id=sensor-001,location=warehouse_A note=\"x\",value=23.5 1700000000123456789",
        "sensors,sensor_id=sensor-001,location=warehouse_A temperature=23.5 1700000000123456789",  // Telegraf shape
        "temperature,sensor_id=sensor-001,location=warehouse_A temperature=23.5 1700000000123456789",
        "temperature,sensor_id=sensor-001,location=warehouse_A value=23.5  1700000000123456789",  // extra spaces
        "temperature,sensor_id=sensor-001,location=warehouse_A value=2.35e1 1700000000123456789",
        "temperature,sensor_id=sensor-001,location=warehouse_A value=+23.50 1700000000123456789",
    ])
    func acceptedShapes(line: String) throws {
        let r = try #require(try parse(line))
        #expect(r == Reading(sensorID: "sensor-001", type: "temperature", value: 23.5, location: "warehouse_A", timestamp: 1_700_000_000_123_456_789))
    }

    @Test func integersAndUnsigned() throws {
        #expect(try parse("pressure,sensor_id=a,location=l value=1013i 1")?.value == 1013)
        #expect(try parse("pressure,sensor_id=a,location=l value=-5i 1")?.value == -5)
        #expect(try parse("pressure,sensor_id=a,location=l value=18446744073709551615u 1")?.value == 18446744073709551615.0)
        #expect(try parse("pressure,sensor_id=a,location=l value=7 1")?.value == 7)
    }

    @Test func missingTimestampTakesReceiveTime() throws {
        #expect(try parse("temperature,sensor_id=a,location=l value=1", receiveTime: 99)?.timestamp == 99)
        #expect(try parse("temperature,sensor_id=a,location=l value=1 ", receiveTime: 99)?.timestamp == 99)
        #expect(try parse("temperature,sensor_id=a,location=l value=1 -5")?.timestamp == -5)
    }

    @Test func escapes() throws {
        let r = try #require(try parse(#"temperature,sensor_id=my\ sensor\,1\=x,location=hall\ A value=1 1"#))
        #expect(r.sensorID == "my sensor,1=x")
        #expect(r.location == "hall A")
        let m = try #require(try parse(#"sensors,sensor_id=a\\b,location=l temperature=1 1"#))
        #expect(m.sensorID == #"a\b"#)
        // A backslash before an ordinary character stays.
        #expect(try parse(#"temperature,sensor_id=a\b,location=l value=1 1"#)?.sensorID == #"a\b"#)
        #expect(try parse(#"temperature,sensor_id=capteur-é,location=salle\ ü value=1 1"#)?.location == "salle ü")
        // An unescaped space ends the tags: the rest is not a field.
        #expect(reason("temperature,sensor_id=a,location=salle ü value=1 1") == .syntax)
    }

    /// What InfluxDB refuses as ambiguous is refused here too.
    @Test func ambiguousTagsAreRefused() throws {
        #expect(reason("temperature,sensor_id=a,location=l,sensor_id=b value=1 1") == .duplicateTag)
        #expect(reason("temperature,site=x,sensor_id=a,site=y,location=l value=1 1") == .duplicateTag)
        #expect(reason("temperature,sensor_id=a=b,location=l value=1 1") == .syntax)
        #expect(try parse(#"temperature,sensor_id=a\=b,location=l value=1 1"#)?.sensorID == "a=b")
        // Keys that only share a prefix are two tags.
        #expect(try parse("temperature,sensor_id=a,sensor=z,location=l value=1 1")?.sensorID == "a")
        // Past 16 tags the keys are remembered in a set: the same verdicts.
        let many = (0..<20).map { ",k\($0)=v" }.joined()
        #expect(try parse("temperature,sensor_id=a,location=l\(many) value=1 1")?.sensorID == "a")
        #expect(reason("temperature,sensor_id=a,location=l\(many),k3=w value=1 1") == .duplicateTag)
        #expect(reason("temperature,sensor_id=a\(many),location=l,sensor_id=b value=1 1") == .duplicateTag)
        // An equals sign in the measurement is InfluxDB's too: not a tag.
        #expect(reason("temp=x,sensor_id=a,location=l value=1 1") == .unknownType)
    }

    /// InfluxDB keeps a backslash literal unless it escapes `,`, `=` or a space; QuestDB's
    /// clients escape one as two.
    @Test func theBackslashDialects() throws {
        let influx = LineParser(validator: ReadingValidator(), dialect: .influxDB)
        var line = #"temperature,sensor_id=a\\b,location=x\ y value=1 1"#
        let (quest, influxReading) = line.withUTF8 { bytes in
            (try? parser.parse(UnsafeRawBufferPointer(bytes), receiveTime: 0), try? influx.parse(UnsafeRawBufferPointer(bytes), receiveTime: 0))
        }
        #expect(quest?.sensorID == #"a\b"#)
        #expect(influxReading?.sensorID == #"a\\b"#)
        #expect(influxReading?.location == "x y")
    }

    @Test func blankAndComments() throws {
        #expect(try parse("") == nil)
        #expect(try parse("   ") == nil)
        #expect(try parse("\r") == nil)
        #expect(try parse("# a comment, value=1") == nil)
        #expect(try parse("  # indented comment") == nil)
    }

    @Test(arguments: [
        ("no_fields_here", LineProtocolError.Reason.syntax),
        ("temperature,sensor_id=x,location=l value=abc 1", .invalidValue),
        ("temperature,sensor_id=x value=abc 1", .missingLocation),
        ("temperature,location=l value=1 1", .missingSensorID),
        ("temperature,sensor_id=a value=1 1", .missingLocation),
        ("bogus_type,sensor_id=a,location=l value=1 1", .unknownType),
        ("temperature,sensor_id=a,location=l value=NaN 1", .nonFiniteValue),
        ("temperature,sensor_id=a,location=l value=-Inf 1", .nonFiniteValue),
        ("temperature,sensor_id=a,location=l value=1e999 1", .nonFiniteValue),
        ("temperature,sensor_id=a,location=l value=1 notatime", .invalidTimestamp),
        ("temperature,sensor_id=a,location=l value=1 99999999999999999999", .invalidTimestamp),
        ("temperature,sensor_id=a,location=l value=1 1.5", .invalidTimestamp),
        ("humidity,sensor_id=a,location=l value=100.01 1", .outOfRange),
        ("humidity,sensor_id=a,location=l value=-1 1", .outOfRange),
        ("sensors,sensor_id=a,location=l temperature=1,humidity=2 1", .multipleTypes),
        ("temperature,sensor_id=a,location=l value=1,humidity=2 1", .multipleTypes),
        ("temperature,sensor_id=a,location=l humidity=2 1", .multipleTypes),
        ("temperature,sensor_id=a,location=l other=1 1", .missingValue),
        ("temperature,sensor_id=a,location=l value=\"hot\" 1", .invalidValue),
        ("temperature,sensor_id=a,location=l value=true 1", .invalidValue),
        ("temperature,sensor_id=a,location=l value=0x10 1", .invalidValue),
        ("temperature,sensor_id=a,location=l value= 1", .syntax),
        ("temperature,sensor_id=a,location=l value=1 1 2", .syntax),
        ("temperature,sensor_id=a,location=l value=\"unterminated 1", .syntax),
        ("temperature,sensor_id=,location=l value=1 1", .syntax),
        ("temperature,sensor_id=a,location=l", .syntax),
        ("temperature,sensor_id=a,location=l ", .syntax),
        (",sensor_id=a,location=l value=1 1", .syntax),
        ("temperature,sensor_id=a,location=l value==\u{10}abcdefgh 1", .binaryProtocol),
        ("temperature,sensor_id=a\u{7},location=l value=1 1", .invalidSensorID),
        ("temperature,sensor_id=\(String(repeating: "s", count: 129)),location=l value=1 1", .invalidSensorID),
        ("temperature,sensor_id=a,location=\(String(repeating: "l", count: 129)) value=1 1", .invalidLocation),
    ])
    func rejections(line: String, expected: LineProtocolError.Reason) {
        #expect(reason(line) == expected, "\(line.prefix(80))")
    }

    @Test func binaryV2WithRawDoubleBytesIsNamedAsSuch() {
        // 23.5 as a little-endian double holds 0x80: not UTF-8, yet the reason must be the protocol.
        var bytes: [UInt8] = Array("temperature,sensor_id=a,location=l value==".utf8) + [16]
        withUnsafeBytes(of: (23.5).bitPattern.littleEndian) { bytes += $0 }
        var result: Result<Reading?, LineProtocolError>?
        bytes.withUnsafeBytes { raw in
            do throws(LineProtocolError) { result = .success(try parser.parse(raw, receiveTime: 0)) } catch { result = .failure(error) }
        }
        guard case .failure(let error)? = result else { Issue.record("accepted"); return }
        #expect(error.reason == .binaryProtocol)
    }

    @Test func tagValuesKeepTheirQuotes() throws {
        #expect(try parse(#"temperature,sensor_id="a",location=l value=1 1"#)?.sensorID == #""a""#)
        #expect(try parse(#"temperature,sensor_id=a"b,location=l value=1 1"#)?.sensorID == #"a"b"#)
    }

    @Test func theMissingTimestampMarkerCannotBeSent() {
        #expect(reason("temperature,sensor_id=a,location=l value=1 -9223372036854775808") == .invalidTimestamp)
    }

    @Test func invalidUTF8IsRejected() {
        let bytes: [UInt8] = Array("temperature,sensor_id=".utf8) + [0xFF, 0xFE] + Array(",location=l value=1 1".utf8)
        var result: Result<Reading?, LineProtocolError>?
        bytes.withUnsafeBytes { raw in
            do throws(LineProtocolError) { result = .success(try parser.parse(raw, receiveTime: 0)) } catch { result = .failure(error) }
        }
        #expect(result == .failure(LineProtocolError(.invalidUTF8, "line is not valid UTF-8")))
    }

    @Test func configuredTypesAndRanges() throws {
        let custom = LineParser(validator: ReadingValidator(types: SensorTypes(ranges: ["co2": 0...10_000, "temperature": ClosedRange<Double>?.none])))
        func parse(_ s: String) throws(LineProtocolError) -> Reading? {
            var copy = s
            var out: Result<Reading?, LineProtocolError>!
            copy.withUTF8 { b in
                do throws(LineProtocolError) { out = .success(try custom.parse(UnsafeRawBufferPointer(b), receiveTime: 0)) } catch { out = .failure(error) }
            }
            return try out.get()
        }
        #expect(try parse("co2,sensor_id=a,location=l value=400 1")?.type == "co2")
        #expect(throws: LineProtocolError.self) { _ = try parse("co2,sensor_id=a,location=l value=20000 1") }
        #expect(throws: LineProtocolError.self) { _ = try parse("humidity,sensor_id=a,location=l value=20 1") }
    }

    // MARK: Properties

    static let specialNames = ["a b", "a,b", "a=b", #"a\b"#, "é ü", "x\\", "\\", "tail\\ ", "日本", "\"quoted\"", "a\"b"]
    static let nameGen = Gen.oneOf(
        Gen.letterOrNumber.string(of: 1...20),
        Gen.int(in: 0...(specialNames.count - 1)).map { specialNames[$0] })
    static let types = ["temperature", "humidity", "pressure"]
    static let readingGen = zip(nameGen, Gen.int(in: 0...2).map { types[$0] },
                                Gen.oneOf(Gen.double(in: 0...100), Gen.int(in: 0...100_000).map { Double($0) / 1000 }),
                                nameGen, Gen.int64().map { $0 == LineParser.noTimestamp ? 0 : $0 })  // Int64.min means "none"
        .map { Reading(sensorID: $0.0, type: $0.1, value: $0.2, location: $0.3, timestamp: $0.4) }

    @Test func formattedReadingsParseBackEqual() async {
        await propertyCheck(count: 500, input: Self.readingGen) { reading in
            let line = LineFormatter.line(for: reading)
            do {
                let back = try parse(String(line.dropLast()))
                #expect(back.map { $0.isIdentical(to: reading) } == true, "\(line)")
            } catch {
                Issue.record("\(line) → \(error)")
            }
        }
    }

    @Test func randomBytesNeverCrashOrHang() async {
        await propertyCheck(count: 2000, input: Gen.uint8().array(of: 0...300)) { bytes in
            _ = bytes.withUnsafeBytes { raw in try? parser.parse(raw, receiveTime: 0) }
        }
    }

    @Test func mutatedValidLinesNeverCrash() async {
        let base = Array("temperature,sensor_id=sensor-001,location=warehouse_A value=23.5,note=\"x\" 1700000000123456789".utf8)
        let bytes: [UInt8] = Array(" ,=\\\"10i.-eE".utf8) + [0, 0xFF]
        await propertyCheck(count: 2000, input: Gen.int(in: 0...(base.count - 1)), Gen.int(in: 0...(bytes.count - 1))) { at, pick in
            var line = base
            line[at] = bytes[pick]
            _ = line.withUnsafeBytes { raw in try? parser.parse(raw, receiveTime: 0) }
        }
    }
}

@Suite struct LineFramerTests {
    func frame(_ chunks: [[UInt8]], max: Int = 64) -> (lines: [String], tooLong: [String], dropped: String?) {
        var framer = LineFramer(maxLineBytes: max)
        var lines: [String] = []
        var tooLong: [String] = []
        for c in chunks {
            c.withUnsafeBytes { raw in
                framer.feed(raw, line: { lines.append(String(decoding: $0, as: UTF8.self)) },
                            tooLong: { tooLong.append(String(decoding: $0, as: UTF8.self)) })
            }
        }
        return (lines, tooLong, framer.finish().map { String(decoding: $0, as: UTF8.self) })
    }

    @Test func splitsAnywhereTheSame() async {
        let long = String(repeating: "x", count: 100) + String(repeating: "y", count: 100)
        let text = Array(("a\nbb\n\nccc\r\n" + long + "\nd\n" + long + "\nlast").utf8)
        let whole = frame([text])
        #expect(whole.lines == ["a", "bb", "", "ccc\r", "d"])
        // A skipped or dropped line is reported by its start, however the stream was cut.
        #expect(whole.tooLong == [String(long.prefix(LineFramer.reportedBytes)), String(long.prefix(LineFramer.reportedBytes))])
        #expect(whole.dropped == "last")
        await propertyCheck(count: 500, input: Gen.int(in: 0...text.count).array(of: 0...6)) { cuts in
            var chunks: [[UInt8]] = []
            var start = 0
            for cut in cuts.sorted() where cut >= start {
                chunks.append(Array(text[start..<cut]))
                start = cut
            }
            chunks.append(Array(text[start...]))
            let r = frame(chunks)
            #expect(r.lines == whole.lines && r.tooLong == whole.tooLong && r.dropped == whole.dropped)
        }
    }

    @Test func anUnfinishedTooLongLineIsReportedByItsStart() {
        let r = frame([Array(("ok\n" + String(repeating: "z", count: 300)).utf8)])
        #expect(r.lines == ["ok"] && r.tooLong.isEmpty && r.dropped == String(repeating: "z", count: LineFramer.reportedBytes))
        #expect(LineParser.isBlankOrComment(Array("  \t\r".utf8)) && LineParser.isBlankOrComment(Array(" # note".utf8)))
        #expect(!LineParser.isBlankOrComment(Array(" t,sensor_id=a".utf8)))
    }

    @Test func aTooLongLineIsNeverBufferedWhole() {
        var framer = LineFramer(maxLineBytes: 100)
        var count = 0
        let chunk = [UInt8](repeating: 0x41, count: 1000)
        for _ in 0..<1000 {
            chunk.withUnsafeBytes { framer.feed($0, line: { _ in }, tooLong: { _ in count += 1 }) }
            #expect(framer.bufferedBytes <= 100)
        }
        Array("\nok\n".utf8).withUnsafeBytes { framer.feed($0, line: { _ in }, tooLong: { _ in count += 1 }) }
        #expect(count == 1)
        #expect(framer.finish() == nil)
    }
}
