public import SensorLogCore

/// Why a line was refused. `reason` is a stable code: the rejected-readings metric is labelled
/// with it and the log names it.
public struct LineProtocolError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Reason: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// Not line protocol: missing fields, a bad escape, an unterminated string.
        public static let syntax = Reason("syntax")
        public static let invalidUTF8 = Reason("invalid_utf8")
        /// A tag key given twice in one line (InfluxDB refuses it too: which one would count?).
        public static let duplicateTag = Reason("duplicate_tag")
        public static let unknownType = Reason("unknown_type")
        public static let multipleTypes = Reason("multiple_types")
        public static let missingSensorID = Reason("missing_sensor_id")
        public static let missingLocation = Reason("missing_location")
        public static let missingValue = Reason("missing_value")
        /// The value field is not a number (a string, a boolean, garbage).
        public static let invalidValue = Reason("invalid_value")
        public static let nonFiniteValue = Reason("non_finite_value")
        public static let outOfRange = Reason("out_of_range")
        public static let invalidSensorID = Reason("invalid_sensor_id")
        public static let invalidLocation = Reason("invalid_location")
        public static let invalidTimestamp = Reason("invalid_timestamp")
        /// QuestDB's binary ILP v2 (`field==` + a type byte); only the text protocol is spoken.
        public static let binaryProtocol = Reason("binary_protocol")
        /// Longer than `Limits.maxLineBytes`: skipped to the next newline without being buffered.
        public static let lineTooLong = Reason("line_too_long")
        /// The connection closed in the middle of a line.
        public static let partialLine = Reason("partial_line")
        /// Already in the log (same sensor_id and timestamp).
        public static let duplicate = Reason("duplicate")
        /// The sensor's first reading had another type.
        public static let typeMismatch = Reason("type_mismatch")
        /// Of a new sensor when the server holds `--max-sensors` already.
        public static let tooManySensors = Reason("too_many_sensors")
        /// Older than the start of the retained log.
        public static let tooOld = Reason("too_old")
        /// Of a deleted sensor, at or before the newest reading its deletion removed.
        public static let deleted = Reason("deleted")

        /// The line-protocol reason for a failed reading validation.
        public init(_ code: ReadingError.Code) {
            switch code {
            case .invalidSensorID: self = .invalidSensorID
            case .unknownType: self = .unknownType
            case .nonFiniteValue: self = .nonFiniteValue
            case .outOfRange: self = .outOfRange
            case .invalidLocation: self = .invalidLocation
            case .invalidTimestamp: self = .invalidTimestamp
            default: self = Reason(code.rawValue)
            }
        }
    }

    public var reason: Reason
    public var message: String

    public init(_ reason: Reason, _ message: String) {
        self.reason = reason
        self.message = message
    }

    public var description: String { "\(reason): \(message)" }
}
