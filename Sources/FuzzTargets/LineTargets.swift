import LineProtocol
import SensorLogCore

/// The line protocol's parser and framer (Sources/LineProtocol).
enum LineTargets {
    static let validator = ReadingValidator()
    static let parsers = [LineParser(validator: validator, dialect: .questDB), LineParser(validator: validator, dialect: .influxDB)]
    /// The receive time a line without a timestamp gets.
    static let receiveTime: Int64 = 1_700_000_000_123_456_789

    /// The input up to its first newline is one line, as the framer hands it to the parser. For
    /// each dialect, a reading accepted: passes the one validation; with transport defaults the
    /// same line gives the same reading (tags present win); LineFormatter's line of it parses back
    /// identical (bit for bit) under the QuestDB dialect it writes for, and under InfluxDB's when
    /// no text holds a backslash (the one point where the dialects differ).
    @Sendable static func line(_ input: UnsafeRawBufferPointer) {
        let end = input.firstIndex(of: 0x0A) ?? input.count
        let line = UnsafeRawBufferPointer(rebasing: input[0..<end])
        for parser in parsers {
            let reading: Reading?
            do {
                reading = try parser.parse(line, receiveTime: receiveTime)
            } catch {
                // Refused: the defaults cannot make a line with both tags acceptable, but they may
                // make one without them so; nothing more to check on a refused line.
                continue
            }
            guard let reading else {
                check(LineParser.isBlankOrComment(line), "a line parsed to nothing but is not blank or a comment")
                continue
            }
            do { try validator.validate(reading) } catch { check(false, "accepted reading fails validation: \(error)") }
            let defaults = LineParser.Defaults(sensorID: "default-sensor", location: "default-location")
            let withDefaults = try? parser.parse(line, receiveTime: receiveTime, defaults: defaults)
            check(withDefaults?.isIdentical(to: reading) == true, "defaults changed a line that has both tags")
            let formatted = Array(LineFormatter.line(for: reading).utf8)
            check(formatted.last == 0x0A, "LineFormatter's line lacks its newline")
            let again = formatted.dropLast().withUnsafeBytes { raw in Result { () throws(LineProtocolError) in try parsers[0].parse(raw, receiveTime: 0) } }
            switch again {
            case .success(let r?): check(r.isIdentical(to: reading), "format then parse (questdb) differs: \(reading) -> \(r)")
            case .success(nil): check(false, "LineFormatter's line parses to nothing")
            case .failure(let e): check(false, "LineFormatter's line of an accepted reading is refused: \(e)")
            }
            let hasBackslash = [reading.sensorID, reading.location, reading.type].contains { $0.utf8.contains(0x5C) }
            if !hasBackslash {
                let influx = formatted.dropLast().withUnsafeBytes { raw in try? parsers[1].parse(raw, receiveTime: 0) }
                check(influx?.isIdentical(to: reading) == true, "format then parse (influxdb) differs")
            }
        }
    }

    enum Event: Equatable {
        case line([UInt8])
        case tooLong([UInt8])
    }

    /// The first two bytes choose `maxLineBytes` (1...512) and how the rest, the stream, is cut
    /// into feeds. The events (lines, too-long reports) and `finish` must be the same fed whole,
    /// a byte at a time and in the chosen cuts, and what a plain split at newlines says.
    @Sendable static func framer(_ input: UnsafeRawBufferPointer) {
        guard input.count >= 2 else { return }
        let maxLine = 1 + (Int(input[0]) << 1 | Int(input[1] & 1))
        var seed = UInt64(input[1]) &+ 1
        let stream = UnsafeRawBufferPointer(rebasing: input[2...])

        // The model: split at every newline.
        var expected: [Event] = []
        var start = 0
        for (i, b) in stream.enumerated() where b == 0x0A {
            let line = Array(stream[start..<i])
            expected.append(line.count > maxLine ? .tooLong(Array(line.prefix(LineFramer.reportedBytes))) : .line(line))
            start = i + 1
        }
        let tail = Array(stream[start...])
        let expectedFinish: [UInt8]? = tail.isEmpty ? nil : Array(tail.prefix(LineFramer.reportedBytes))

        func run(_ cuts: [Int]) -> ([Event], [UInt8]?) {
            var framer = LineFramer(maxLineBytes: maxLine)
            var events: [Event] = []
            var at = 0
            for cut in cuts + [stream.count] where cut >= at {
                framer.feed(UnsafeRawBufferPointer(rebasing: stream[at..<cut]),
                            line: { events.append(.line(Array($0))) }, tooLong: { events.append(.tooLong(Array($0))) })
                check(framer.bufferedBytes <= maxLine, "framer buffers \(framer.bufferedBytes) bytes of a line, over \(maxLine)")
                at = cut
            }
            return (events, framer.finish())
        }
        var cuts: [Int] = []
        var at = 0
        while at < stream.count {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            at += Int(seed >> 59)  // 0 to 31 bytes: empty feeds too
            cuts.append(min(at, stream.count))
        }
        let single = run([])
        check(single.0 == expected, "framer fed whole differs from the split at newlines")
        check(single.1 == expectedFinish, "framer's finish differs from the unfinished tail")
        let chopped = run(cuts)
        check(chopped.0 == expected && chopped.1 == expectedFinish, "framer fed in pieces differs from fed whole")
        if stream.count <= 256 {
            let bytewise = run(Array(0..<stream.count))
            check(bytewise.0 == expected && bytewise.1 == expectedFinish, "framer fed a byte at a time differs from fed whole")
        }
    }
}
