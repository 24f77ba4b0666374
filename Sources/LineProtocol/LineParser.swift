#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import SensorLogCore

/// Parses one line of InfluxDB line protocol (v1 text, as QuestDB and InfluxDB accept it) into a
/// validated reading.
///
/// Two shapes are accepted:
/// - the measurement is the type: `temperature,sensor_id=s1,location=lab value=21.5 1700000000000000000`
/// - Telegraf's, the field name is the type: `sensors,sensor_id=s1,location=lab temperature=21.5`
///
/// Tags `sensor_id` and `location` are required, in any order; other tags and fields are ignored.
/// The value may be a float or an integer (`i`/`u` suffix). A missing timestamp takes the receive
/// time. Escapes follow the spec: `\,` `\=` `\ ` in names and tag values, `\"` `\\` in strings.
/// Blank lines and `#` comments parse to nil. A line InfluxDB refuses as ambiguous is refused
/// here too: a tag key given twice, an unescaped `=` in a tag value. docs/protocol.md has the
/// full rules.
public struct LineParser: Sendable {
    /// How a backslash before another backslash is read in names and tag values: the one point
    /// where the clients of the doors disagree on purpose.
    public enum Dialect: Sendable {
        /// QuestDB's clients write one backslash as `\\` and expect one back (the TCP door, MQTT
        /// and QuestDB's `http::` transport).
        case questDB
        /// InfluxDB 1.x and 2.x keep a backslash literal unless it escapes `,`, `=` or a space,
        /// so `\\` is two backslashes (`/write` with a `db`, `/api/v2/write`).
        case influxDB
    }

    public let validator: ReadingValidator
    public let dialect: Dialect
    private let typeNames: [String]
    /// The type names' bytes back to back, and where each starts (one more entry: the end).
    private let typeBytes: [UInt8]
    private let typeStarts: [Int]

    public init(validator: ReadingValidator, dialect: Dialect = .questDB) {
        self.validator = validator
        self.dialect = dialect
        self.typeNames = validator.typeNames
        self.typeBytes = typeNames.flatMap { Array($0.utf8) }
        self.typeStarts = typeNames.reduce(into: [0]) { starts, name in starts.append(starts.last! + name.utf8.count) }
    }

    /// A token's bounds in the line, and whether it holds a backslash escape.
    private struct Token {
        var start: Int
        var end: Int
        var escaped: Bool
        /// An unescaped `=` inside (tag values only: keys stop at one).
        var equals = false
        var isEmpty: Bool { start == end }
    }

    /// A `receiveTime` that marks a reading as carrying no timestamp, for a caller that stamps
    /// those itself (no line can carry it: it is refused as out of range).
    public static let noTimestamp = Int64.min

    /// Whether `line` (or the start of one) is blank or a `#` comment: no reading in it.
    public static func isBlankOrComment(_ line: some Collection<UInt8>) -> Bool {
        guard let first = line.first(where: { $0 != 32 && $0 != 9 && $0 != 13 }) else { return true }
        return first == UInt8(ascii: "#")
    }

    /// Parses `line` (without its `\n`; a trailing `\r` is dropped).
    /// - Parameter receiveTime: the timestamp of a line that carries none.
    /// - Returns: the reading, or nil for a blank or comment line.
    /// - Throws: `LineProtocolError` naming the first problem.
    public func parse(_ line: UnsafeRawBufferPointer, receiveTime: Int64) throws(LineProtocolError) -> Reading? {
        try parse(line, receiveTime: receiveTime, defaults: nil)
    }

    /// What a line may leave out when its transport supplies it (an MQTT topic template).
    public struct Defaults: Sendable, Equatable {
        public var sensorID: String?
        public var location: String?
        public init(sensorID: String? = nil, location: String? = nil) {
            self.sensorID = sensorID
            self.location = location
        }
    }

    /// `parse`, with the `sensor_id` and `location` tags of `defaults` standing in for absent ones.
    public func parse(_ line: UnsafeRawBufferPointer, receiveTime: Int64, defaults: Defaults?) throws(LineProtocolError) -> Reading? {
        var n = line.count
        if n > 0 && line[n - 1] == 13 { n -= 1 }
        var i = 0
        while i < n && (line[i] == 32 || line[i] == 9) { i += 1 }
        if i == n || line[i] == UInt8(ascii: "#") { return nil }
        if !isASCII(line, n) {
            guard String(validating: UnsafeRawBufferPointer(rebasing: line[0..<n]), as: UTF8.self) != nil else {
                // ILP v2 writes a binary field as `name==<type byte><bytes>`: raw doubles are
                // rarely valid UTF-8, and the client deserves the real reason.
                if containsDoubleEquals(line, n) { throw Self.binaryProtocolError }
                throw LineProtocolError(.invalidUTF8, "line is not valid UTF-8")
            }
        }

        // Measurement.
        let measurement = scanToken(line, &i, n, stopAtEquals: false)
        if measurement.isEmpty { throw LineProtocolError(.syntax, "missing measurement") }

        // Tags.
        var sensor: Token?
        var location: Token?
        let tagsStart = i
        var tagCount = 0
        var seenKeys: Set<[UInt8]> = []
        while i < n && line[i] == UInt8(ascii: ",") {
            i += 1
            let key = scanToken(line, &i, n, stopAtEquals: true)
            guard i < n, line[i] == UInt8(ascii: "="), !key.isEmpty else { throw LineProtocolError(.syntax, "tag without '=' or key") }
            i += 1
            let value = scanToken(line, &i, n, stopAtEquals: false)
            if value.isEmpty { throw LineProtocolError(.syntax, "tag '\(text(line, key))' has an empty value") }
            if value.equals { throw LineProtocolError(.syntax, "tag '\(text(line, key))' has an unescaped '=' in its value (write \\=)") }
            tagCount += 1
            if tagCount > 1 && isDuplicate(line, key, tagCount: tagCount, tagsStart: tagsStart, seen: &seenKeys) {
                throw LineProtocolError(.duplicateTag, "tag '\(text(line, key))' is given twice")
            }
            if equals(line, key, "sensor_id") {
                sensor = value
            } else if equals(line, key, "location") {
                location = value
            }
        }
        guard i < n, line[i] == 32 else { throw LineProtocolError(.syntax, "no fields") }
        while i < n && line[i] == 32 { i += 1 }
        if i == n { throw LineProtocolError(.syntax, "no fields") }

        // Fields: find `value` and the fields named after a known type.
        let measurementType = typeIndex(line, measurement)
        var valueField: Token?
        var typeField: (type: Int, value: Token)?
        var otherTypeFields = 0
        while true {
            let key = scanToken(line, &i, n, stopAtEquals: true)
            guard i < n, line[i] == UInt8(ascii: "="), !key.isEmpty else { throw LineProtocolError(.syntax, "field without '=' or key") }
            i += 1
            guard i < n else { throw LineProtocolError(.syntax, "field '\(text(line, key))' has no value") }
            let value: Token
            if line[i] == UInt8(ascii: "\"") {
                let start = i
                i += 1
                while i < n && line[i] != UInt8(ascii: "\"") { i += line[i] == UInt8(ascii: "\\") ? 2 : 1 }
                guard i < n else { throw LineProtocolError(.syntax, "unterminated string field") }
                i += 1
                value = Token(start: start, end: i, escaped: true)
            } else if line[i] == UInt8(ascii: "=") {
                throw Self.binaryProtocolError
            } else {
                let start = i
                while i < n && line[i] != UInt8(ascii: ",") && line[i] != 32 { i += 1 }
                value = Token(start: start, end: i, escaped: false)
                if value.isEmpty { throw LineProtocolError(.syntax, "field '\(text(line, key))' has an empty value") }
            }
            if equals(line, key, "value") {
                valueField = value
            } else if let t = typeIndex(line, key) {
                if typeField == nil { typeField = (t, value) } else { otherTypeFields += 1 }
            }
            if i < n && line[i] == UInt8(ascii: ",") {
                i += 1
                continue
            }
            break
        }

        // Timestamp.
        var timestamp = receiveTime
        if i < n {
            guard line[i] == 32 else { throw LineProtocolError(.syntax, "unexpected character after fields") }
            while i < n && line[i] == 32 { i += 1 }
            if i < n {
                let start = i
                while i < n && line[i] != 32 { i += 1 }
                let end = i
                while i < n && line[i] == 32 { i += 1 }
                guard i == n else { throw LineProtocolError(.syntax, "unexpected text after the timestamp") }
                guard let t = parseInteger(line, start, end), t != Self.noTimestamp else {
                    throw LineProtocolError(.invalidTimestamp, "timestamp '\(text(line, Token(start: start, end: end, escaped: false)))' is not an integer of nanoseconds")
                }
                timestamp = t
            }
        }

        // Which field is the reading.
        let type: Int
        let valueToken: Token
        if let m = measurementType, let v = valueField {
            if let tf = typeField, tf.type != m || otherTypeFields > 0 {
                throw LineProtocolError(.multipleTypes, "line carries several type fields")
            }
            type = m
            valueToken = v
        } else if let tf = typeField {
            if otherTypeFields > 0 || (measurementType != nil && measurementType != tf.type) {
                throw LineProtocolError(.multipleTypes, "line carries several type fields")
            }
            type = tf.type
            valueToken = tf.value
        } else if measurementType != nil {
            throw LineProtocolError(.missingValue, "no 'value' field")
        } else {
            throw LineProtocolError(.unknownType, "unknown type '\(ReadingValidator.prefix(text(line, measurement)))' (known: \(typeNames.joined(separator: ", ")))")
        }
        if sensor == nil || location == nil {
            guard sensor != nil || defaults?.sensorID != nil else { throw LineProtocolError(.missingSensorID, "no sensor_id tag") }
            guard location != nil || defaults?.location != nil else { throw LineProtocolError(.missingLocation, "no location tag") }
        }
        let value = try parseValue(line, valueToken)
        guard let sensor, let location else {
            let reading = Reading(sensorID: sensor.map { text(line, $0) } ?? defaults!.sensorID!, type: typeNames[type], value: value,
                                  location: location.map { text(line, $0) } ?? defaults!.location!, timestamp: timestamp)
            do {
                try validator.validate(reading)
            } catch {
                throw LineProtocolError(LineProtocolError.Reason(error.code), error.message)
            }
            return reading
        }

        do {
            if !sensor.escaped && !location.escaped {
                // The common line: validate the bytes in place, build strings only for a reading kept.
                try validator.validate(sensorID: bytes(line, sensor), typeIndex: type, value: value, location: bytes(line, location))
                return Reading(sensorID: text(line, sensor), type: typeNames[type], value: value,
                               location: text(line, location), timestamp: timestamp)
            }
            let reading = Reading(sensorID: text(line, sensor), type: typeNames[type], value: value,
                                  location: text(line, location), timestamp: timestamp)
            try validator.validate(reading)
            return reading
        } catch {
            throw LineProtocolError(LineProtocolError.Reason(error.code), error.message)
        }
    }

    static let binaryProtocolError = LineProtocolError(.binaryProtocol, "binary ILP v2 value; send line protocol text (protocol_version=1)")

    private func containsDoubleEquals(_ line: UnsafeRawBufferPointer, _ n: Int) -> Bool {
        var i = 1
        while i < n {
            if line[i] == UInt8(ascii: "=") && line[i - 1] == UInt8(ascii: "=") { return true }
            i += 1
        }
        return false
    }

    // MARK: Tokens

    @inline(__always)
    private func isASCII(_ line: UnsafeRawBufferPointer, _ n: Int) -> Bool {
        var i = 0
        let base = line.baseAddress!
        while i + 8 <= n {
            if base.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 != 0 { return false }
            i += 8
        }
        while i < n {
            if line[i] >= 0x80 { return false }
            i += 1
        }
        return true
    }

    /// Scans a name or tag value up to an unescaped `,` or space (or `=` for keys).
    @inline(__always)
    private func scanToken(_ line: UnsafeRawBufferPointer, _ i: inout Int, _ n: Int, stopAtEquals: Bool) -> Token {
        let start = i
        var escaped = false
        var equals = false
        while i < n {
            let c = line[i]
            if c == UInt8(ascii: "\\") && i + 1 < n {
                escaped = true
                i += 2
                continue
            }
            if c == UInt8(ascii: ",") || c == 32 { break }
            if c == UInt8(ascii: "=") {
                if stopAtEquals { break }
                equals = true
            }
            i += 1
        }
        return Token(start: start, end: i, escaped: escaped, equals: equals)
    }

    /// Past this many tags in a line, earlier keys are remembered in a set rather than rescanned
    /// (rescanning is quadratic: a 64 KiB line of tags would cost a hundred million compares).
    static let rescannedTags = 16

    /// Whether `key`, the `tagCount`-th tag's, was the key of an earlier tag of the line.
    private func isDuplicate(_ line: UnsafeRawBufferPointer, _ key: Token, tagCount: Int, tagsStart: Int, seen: inout Set<[UInt8]>) -> Bool {
        if tagCount <= Self.rescannedTags { return tagKey(line, key, occursIn: tagsStart, key.start) }
        if seen.isEmpty {
            var i = tagsStart
            while i < key.start - 1 && line[i] == UInt8(ascii: ",") {
                i += 1
                let earlier = scanToken(line, &i, key.start, stopAtEquals: true)
                seen.insert(Array(bytes(line, earlier)))
                i += 1
                _ = scanToken(line, &i, key.start, stopAtEquals: false)
            }
        }
        return !seen.insert(Array(bytes(line, key))).inserted
    }

    /// Whether the tag key `key` is also the key of a tag in `line[start..<end]` (the tags
    /// before it, each after its `,`). Rescans rather than remembers: lines have two or three
    /// tags, and a list of keys would cost an allocation per line.
    private func tagKey(_ line: UnsafeRawBufferPointer, _ key: Token, occursIn start: Int, _ end: Int) -> Bool {
        var i = start
        while i < end && line[i] == UInt8(ascii: ",") {
            i += 1
            let earlier = scanToken(line, &i, end, stopAtEquals: true)
            if earlier.end - earlier.start == key.end - key.start
                && memcmp(line.baseAddress! + earlier.start, line.baseAddress! + key.start, key.end - key.start) == 0 {
                return true
            }
            i += 1
            _ = scanToken(line, &i, end, stopAtEquals: false)
        }
        return false
    }

    @inline(__always)
    private func equals(_ line: UnsafeRawBufferPointer, _ t: Token, _ literal: StaticString) -> Bool {
        guard !t.escaped, t.end - t.start == literal.utf8CodeUnitCount else { return false }
        return memcmp(line.baseAddress! + t.start, literal.utf8Start, literal.utf8CodeUnitCount) == 0
    }

    private func typeIndex(_ line: UnsafeRawBufferPointer, _ t: Token) -> Int? {
        if t.escaped {
            let name = text(line, t)
            return typeNames.firstIndex(of: name)
        }
        let length = t.end - t.start
        return typeBytes.withUnsafeBytes { names -> Int? in
            for k in 0..<(typeStarts.count - 1) where typeStarts[k + 1] - typeStarts[k] == length {
                if memcmp(line.baseAddress! + t.start, names.baseAddress! + typeStarts[k], length) == 0 { return k }
            }
            return nil
        }
    }

    @inline(__always)
    private func bytes(_ line: UnsafeRawBufferPointer, _ t: Token) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: line[t.start..<t.end])
    }

    /// A name or tag value, unescaped. Quotes are literal there (only string fields are quoted).
    private func text(_ line: UnsafeRawBufferPointer, _ t: Token) -> String {
        if !t.escaped { return String(decoding: bytes(line, t), as: UTF8.self) }
        let end = t.end
        var out: [UInt8] = []
        out.reserveCapacity(end - t.start)
        var i = t.start
        while i < end {
            let c = line[i]
            if c == UInt8(ascii: "\\") && i + 1 < end {
                let next = line[i + 1]
                if next == UInt8(ascii: ",") || next == UInt8(ascii: "=") || next == 32
                    || (next == UInt8(ascii: "\\") && dialect == .questDB) {
                    out.append(next)
                    i += 2
                    continue
                }
            }
            out.append(c)
            i += 1
        }
        return String(decoding: out, as: UTF8.self)
    }

    // MARK: Numbers

    private func parseInteger(_ line: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> Int64? {
        var i = start
        var negative = false
        if i < end && (line[i] == UInt8(ascii: "-") || line[i] == UInt8(ascii: "+")) {
            negative = line[i] == UInt8(ascii: "-")
            i += 1
        }
        guard i < end else { return nil }
        var v: Int64 = 0
        // Up to 18 digits cannot overflow: no checks for them (a timestamp in ns has 19).
        let unchecked = min(end, i + 18)
        while i < unchecked {
            let d = line[i] &- 48
            guard d < 10 else { return nil }
            v = v &* 10 &- Int64(d)
            i += 1
        }
        while i < end {
            let d = line[i] &- 48
            guard d < 10 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.subtractingReportingOverflow(Int64(d))  // accumulate negatively: Int64.min fits
            guard !o1 && !o2 else { return nil }
            v = a
            i += 1
        }
        if negative { return v }
        return v == .min ? nil : -v
    }

    private static let exactPowers: [Double] = (0...22).map { p in (0..<p).reduce(1.0) { x, _ in x * 10 } }

    private func parseValue(_ line: UnsafeRawBufferPointer, _ t: Token) throws(LineProtocolError) -> Double {
        let start = t.start
        var end = t.end
        let first = line[start]
        if first == UInt8(ascii: "\"") { throw LineProtocolError(.invalidValue, "value is a string, not a number") }
        let last = line[end - 1]
        if last == UInt8(ascii: "i") || last == UInt8(ascii: "u") {
            end -= 1
            if last == UInt8(ascii: "u") {
                var v: UInt64 = 0
                guard end > start else { throw LineProtocolError(.invalidValue, "empty integer") }
                for k in start..<end {
                    let d = line[k] &- 48
                    guard d < 10 else { throw LineProtocolError(.invalidValue, "'\(text(line, t))' is not an unsigned integer") }
                    let (m, o1) = v.multipliedReportingOverflow(by: 10)
                    let (a, o2) = m.addingReportingOverflow(UInt64(d))
                    guard !o1 && !o2 else { throw LineProtocolError(.invalidValue, "unsigned integer out of range") }
                    v = a
                }
                return Double(v)
            }
            guard let v = parseInteger(line, start, end) else {
                throw LineProtocolError(.invalidValue, "'\(text(line, t))' is not a 64-bit integer")
            }
            return Double(v)
        }
        // Fast path (Clinger): at most 15 significant digits and a small power of ten are exact
        // doubles, so one multiplication or division rounds correctly.
        var i = start
        var negative = false
        if line[i] == UInt8(ascii: "-") || line[i] == UInt8(ascii: "+") {
            negative = line[i] == UInt8(ascii: "-")
            i += 1
        }
        var mantissa: UInt64 = 0
        var digits = 0
        var fractionDigits = 0
        var sawDot = false
        var sawDigit = false
        while i < end {
            let c = line[i]
            let d = c &- 48
            if d < 10 {
                sawDigit = true
                if mantissa != 0 || d != 0 { digits += 1 }
                if digits <= 19 { mantissa = mantissa &* 10 &+ UInt64(d) }
                if sawDot { fractionDigits += 1 }
            } else if c == UInt8(ascii: ".") && !sawDot {
                sawDot = true
            } else {
                break
            }
            i += 1
        }
        var exponent = 0
        if sawDigit && i < end && (line[i] == UInt8(ascii: "e") || line[i] == UInt8(ascii: "E")) {
            i += 1
            var expNegative = false
            if i < end && (line[i] == UInt8(ascii: "-") || line[i] == UInt8(ascii: "+")) {
                expNegative = line[i] == UInt8(ascii: "-")
                i += 1
            }
            var sawExpDigit = false
            while i < end, line[i] &- 48 < 10 {
                if exponent < 100_000 { exponent = exponent * 10 + Int(line[i] - 48) }
                sawExpDigit = true
                i += 1
            }
            guard sawExpDigit else { return try slowValue(line, t) }
            if expNegative { exponent = -exponent }
        }
        guard sawDigit, i == end else { return try slowValue(line, t) }
        let power = exponent - fractionDigits
        if digits <= 15 && abs(power) <= 22 {
            var v = Double(mantissa)
            v = power < 0 ? v / Self.exactPowers[-power] : v * Self.exactPowers[power]
            return negative ? -v : v
        }
        return try slowValue(line, t)
    }

    /// strtod for what the fast path does not take (and the words for NaN and infinity).
    private func slowValue(_ line: UnsafeRawBufferPointer, _ t: Token) throws(LineProtocolError) -> Double {
        let raw = text(line, t)
        let lowered = raw.lowercased()
        if ["nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"].contains(lowered) {
            throw LineProtocolError(.nonFiniteValue, "value must be a finite number, got '\(raw)'")
        }
        if ["t", "true", "f", "false"].contains(lowered) {
            throw LineProtocolError(.invalidValue, "value is a boolean, not a number")
        }
        // Only plain decimal syntax goes to strtod (it would also take hex floats and "nan(...)").
        guard !raw.isEmpty, raw.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || $0 == 46 || $0 == 43 || $0 == 45 || $0 == 101 || $0 == 69 }) else {
            throw LineProtocolError(.invalidValue, "value '\(ReadingValidator.prefix(raw))' is not a number")
        }
        var end: UnsafeMutablePointer<CChar>?
        let v = raw.withCString { p -> Double? in
            let d = strtod(p, &end)
            return end.map { $0.pointee == 0 && $0 != UnsafeMutablePointer(mutating: p) } == true ? d : nil
        }
        guard let v else { throw LineProtocolError(.invalidValue, "value '\(ReadingValidator.prefix(raw))' is not a number") }
        guard v.isFinite else { throw LineProtocolError(.nonFiniteValue, "value '\(ReadingValidator.prefix(raw))' overflows a double") }
        return v
    }
}
