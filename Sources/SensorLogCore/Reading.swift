/// One sensor reading: the unit producers send, the log stores and the aggregator folds.
///
/// A reading is identified by (sensorID, timestamp). `timestamp` is nanoseconds since the Unix
/// epoch, UTC.
public struct Reading: Sendable, Hashable {
    public var sensorID: String
    public var type: String
    public var value: Double
    public var location: String
    public var timestamp: Int64

    public init(sensorID: String, type: String, value: Double, location: String, timestamp: Int64) {
        self.sensorID = sensorID
        self.type = type
        self.value = value
        self.location = location
        self.timestamp = timestamp
    }

    /// Bitwise equality, so that -0.0 and 0.0 differ and a NaN equals itself: what "stored
    /// unchanged" means for the log.
    public func isIdentical(to other: Reading) -> Bool {
        sensorID == other.sensorID && type == other.type && location == other.location
            && timestamp == other.timestamp && value.bitPattern == other.value.bitPattern
    }
}

/// The types a log accepts, each with its optional valid range.
public struct SensorTypes: Sendable, Equatable {
    /// Valid range per type name; `nil` accepts any finite value.
    public var ranges: [String: ClosedRange<Double>?]

    /// `temperature`, `humidity` (0–100) and `pressure`: the embedded default.
    public static let standard = SensorTypes(ranges: [
        "temperature": nil,
        "humidity": 0...100,
        "pressure": nil,
    ])

    public init(ranges: [String: ClosedRange<Double>?]) {
        self.ranges = ranges
    }

    public func contains(_ type: String) -> Bool { ranges[type] != nil }

    /// The types of `--sensor-type` values: `NAME` or `NAME=MIN:MAX` each; none gives `standard`.
    /// - Throws: `SensorTypesError` naming the first value that does not parse.
    public init(specs: [String], limits: Limits = Limits()) throws(SensorTypesError) {
        guard !specs.isEmpty else {
            self = .standard
            return
        }
        var ranges: [String: ClosedRange<Double>?] = [:]
        for spec in specs {
            let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
            let name = String((parts.first ?? "").drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
            let printable = name.utf8.allSatisfy { (byte: UInt8) -> Bool in byte > 32 && byte < 127 && byte != 44 && byte != 61 }
            guard !name.isEmpty, name.utf8.count <= limits.maxTypeBytes, printable else {
                throw SensorTypesError("bad --sensor-type '\(spec)': a name of printable ASCII without spaces, commas or '='")
            }
            if parts.count == 2 {
                let bounds = parts[1].split(separator: ":").map { Double($0) }
                guard bounds.count == 2, let lo = bounds[0], let hi = bounds[1], lo.isFinite, hi.isFinite, lo <= hi else {
                    throw SensorTypesError("bad --sensor-type '\(spec)': the range is MIN:MAX with MIN <= MAX")
                }
                ranges[name] = .some(lo...hi)
            } else {
                ranges[name] = .some(nil)
            }
        }
        guard ranges.count <= limits.maxSensorTypes else {
            throw SensorTypesError("at most \(limits.maxSensorTypes) --sensor-type values, got \(ranges.count)")
        }
        self.init(ranges: ranges)
    }
}

/// A `--sensor-type` value that does not parse.
public struct SensorTypesError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Why a reading was refused, with the field at fault. `code` is stable: metrics and HTTP errors
/// carry it.
public struct ReadingError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        public static let missingField = Code("missing_field")
        public static let invalidSensorID = Code("invalid_sensor_id")
        public static let unknownType = Code("unknown_type")
        public static let nonFiniteValue = Code("non_finite_value")
        public static let outOfRange = Code("out_of_range")
        public static let invalidLocation = Code("invalid_location")
        public static let invalidTimestamp = Code("invalid_timestamp")
    }

    public var code: Code
    public var field: String
    public var message: String

    public init(_ code: Code, field: String, _ message: String) {
        self.code = code
        self.field = field
        self.message = message
    }

    public var description: String { "\(field): \(message)" }
}

/// The one validation of a reading, shared by every way in (line protocol, HTTP, the tool).
///
/// Two entries, one set of rules: `validate(_:)` for a decoded reading, and `validate(sensorID:
/// typeIndex:value:location:)` for a parser that still holds the raw bytes and knows the type's
/// index in `typeNames` (no string is built or hashed for a line that is refused).
public struct ReadingValidator: Sendable {
    public let types: SensorTypes
    public let limits: Limits
    /// The known type names, sorted: what a type index refers to.
    public let typeNames: [String]
    private let ranges: [ClosedRange<Double>?]

    public init(types: SensorTypes = .standard, limits: Limits = Limits()) {
        self.types = types
        self.limits = limits
        typeNames = types.ranges.keys.sorted()
        ranges = typeNames.map { types.ranges[$0]! }
    }

    /// Checks every field of `reading`.
    /// - Throws: the first `ReadingError` found, in field order sensor_id, type, value, location.
    public func validate(_ reading: Reading) throws(ReadingError) {
        try checkText(reading.sensorID, field: "sensor_id", maxBytes: limits.maxSensorIDBytes, code: .invalidSensorID)
        guard let typeIndex = typeNames.firstIndex(of: reading.type) else {
            throw ReadingError(.unknownType, field: "type", "unknown type '\(Self.prefix(reading.type))'")
        }
        try checkValue(reading.value, typeIndex: typeIndex)
        try checkText(reading.location, field: "location", maxBytes: limits.maxLocationBytes, code: .invalidLocation)
    }

    /// The same checks as `validate(_:)`, on the UTF-8 bytes of the text fields (escapes already
    /// resolved) and the index of a known type.
    public func validate(sensorID: UnsafeRawBufferPointer, typeIndex: Int, value: Double, location: UnsafeRawBufferPointer) throws(ReadingError) {
        try checkText(sensorID, field: "sensor_id", maxBytes: limits.maxSensorIDBytes, code: .invalidSensorID)
        try checkValue(value, typeIndex: typeIndex)
        try checkText(location, field: "location", maxBytes: limits.maxLocationBytes, code: .invalidLocation)
    }

    private func checkValue(_ value: Double, typeIndex: Int) throws(ReadingError) {
        guard value.isFinite else {
            throw ReadingError(.nonFiniteValue, field: "value", "value must be a finite number")
        }
        if let range = ranges[typeIndex], !range.contains(value) {
            throw ReadingError(
                .outOfRange, field: "value",
                "\(typeNames[typeIndex]) value \(value) is outside \(range.lowerBound)...\(range.upperBound)")
        }
    }

    private func checkText(_ text: String, field: String, maxBytes: Int, code: ReadingError.Code) throws(ReadingError) {
        var text = text
        let error = text.withUTF8 { bytes -> ReadingError? in
            do throws(ReadingError) {
                try checkText(UnsafeRawBufferPointer(bytes), field: field, maxBytes: maxBytes, code: code)
                return nil
            } catch {
                return error
            }
        }
        if let error { throw error }
    }

    /// A name field: 1...maxBytes bytes of valid UTF-8, no control characters.
    private func checkText(_ bytes: UnsafeRawBufferPointer, field: String, maxBytes: Int, code: ReadingError.Code) throws(ReadingError) {
        guard bytes.count > 0 else { throw ReadingError(code, field: field, "\(field) is empty") }
        guard bytes.count <= maxBytes else {
            throw ReadingError(code, field: field, "\(field) is \(bytes.count) bytes, more than \(maxBytes)")
        }
        var ascii = true
        for byte in bytes {
            if byte < 0x20 || byte == 0x7F { throw ReadingError(code, field: field, "\(field) contains a control character") }
            if byte >= 0x80 { ascii = false }
        }
        if !ascii {
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw ReadingError(code, field: field, "\(field) is not valid UTF-8")
            }
            for scalar in text.unicodeScalars where scalar.properties.generalCategory == .control {
                throw ReadingError(code, field: field, "\(field) contains a control character")
            }
        }
    }

    /// The start of an untrusted string, for error messages.
    public static func prefix(_ text: String, maxCharacters: Int = 40) -> String {
        text.count <= maxCharacters ? text : String(text.prefix(maxCharacters)) + "…"
    }
}
