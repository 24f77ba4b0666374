
/// Why a posted reading is refused: a stable code, and where in the body.
public struct ReadingRefusal: Error, Sendable, Equatable {
    public var code: String
    public var message: String
    public var field: String?
    public var index: Int?

    public init(code: String, _ message: String, field: String? = nil, index: Int? = nil) {
        self.code = code
        self.message = message
        self.field = field
        self.index = index
    }
}

/// A JSON scalar as the client sent it: parsing never fails on a wrong type, so validation can
/// name the field and the array index itself.
public enum JSONScalar: Equatable, Sendable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case null
    /// An array or object.
    case other
}

/// One reading as posted, before validation: a member missing from the JSON is nil.
public struct PostedReading: Equatable, Sendable {
    public var sensorID: JSONScalar?
    public var type: JSONScalar?
    public var value: JSONScalar?
    public var location: JSONScalar?
    public var timestamp: JSONScalar?

    /// The validated reading, or the error naming the field.
    public func reading(index: Int?, validator: ReadingValidator) throws(ReadingRefusal) -> Reading {
        func text(_ v: JSONScalar?, _ field: String, _ code: String) throws(ReadingRefusal) -> String {
            switch v {
            case .string(let s): return s
            case nil, .null?: throw ReadingRefusal(code: "missing_field", "\(field) is required", field: field, index: index)
            default: throw ReadingRefusal(code: code, "\(field) must be a string", field: field, index: index)
            }
        }
        let sensor = try text(sensorID, "sensor_id", "invalid_sensor_id")
        let type = try text(type, "type", "unknown_type")
        let location = try text(location, "location", "invalid_location")
        let number: Double
        switch value {
        case .number(let d): number = d
        case nil, .null?: throw ReadingRefusal(code: "missing_field", "value is required", field: "value", index: index)
        default: throw ReadingRefusal(code: "invalid_value", "value must be a number", field: "value", index: index)
        }
        let ns: Int64
        switch timestamp {
        case .string(let s):
            // ISO-8601 only: a bare epoch number leaves its unit (s, ms, ns) to a guess, and a
            // wrong guess files readings in 1970 or the year 55000 without a word.
            guard let t = Timestamp.parseISO8601(s) else {
                throw ReadingRefusal(code: "invalid_timestamp",
                               "timestamp must be ISO-8601 with a zone, e.g. 2026-11-24T10:00:00.123Z",
                               field: "timestamp", index: index)
            }
            ns = t
        case nil, .null?:
            throw ReadingRefusal(code: "missing_field", "timestamp is required", field: "timestamp", index: index)
        default:
            throw ReadingRefusal(code: "invalid_timestamp",
                           "timestamp must be an ISO-8601 string with a zone, e.g. 2026-11-24T10:00:00.123Z",
                           field: "timestamp", index: index)
        }
        let reading = Reading(sensorID: sensor, type: type, value: number, location: location, timestamp: ns)
        do {
            try validator.validate(reading)
        } catch {
            throw ReadingRefusal(code: error.code.rawValue, error.message, field: error.field, index: index)
        }
        return reading
    }
}

