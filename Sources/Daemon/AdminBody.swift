import Foundation
import HTTPAPI
import SensorLogCore

/// The JSON object of an admin request, read field by field: a wrong type, an unknown field or
/// a bad duration or size is a 400 naming the field, so a typo never runs a job with defaults.
struct AdminBody {
    /// A JSON value with its exact type (JSONSerialization on Linux does not tell true from 1).
    enum Value: Decodable {
        case null, bool(Bool), integer(Int64), number(Double), string(String), array([Value]), object([String: Value])

        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null }
            else if let b = try? c.decode(Bool.self) { self = .bool(b) }
            else if let i = try? c.decode(Int64.self) { self = .integer(i) }
            else if let d = try? c.decode(Double.self) { self = .number(d) }
            else if let s = try? c.decode(String.self) { self = .string(s) }
            else if let a = try? c.decode([Value].self) { self = .array(a) }
            else { self = .object(try c.decode([String: Value].self)) }
        }

        var plain: Any {
            switch self {
            case .null: NSNull()
            case .bool(let b): b
            case .integer(let i): i
            case .number(let d): d
            case .string(let s): s
            case .array(let a): a.map(\.plain)
            case .object(let o): o.mapValues(\.plain)
            }
        }
    }

    private let fields: [String: Value]
    private var read: Set<String> = []

    init(_ bytes: [UInt8]) throws(AdminRefusal) {
        // No body at all is no parameters; whitespace alone is not JSON (as the API document says).
        guard !bytes.isEmpty else {
            fields = [:]
            return
        }
        guard let fields = try? JSONDecoder().decode([String: Value].self, from: Data(bytes)) else {
            throw AdminRefusal(status: 400, code: "invalid_json", "the body must be a JSON object")
        }
        self.fields = fields
    }

    /// The parameters as JSON text (for the job's record).
    var json: String { jsonText(fields.mapValues(\.plain)) }

    private mutating func value(_ name: String) -> Value? {
        read.insert(name)
        guard let value = fields[name], case .null = value else { return fields[name] }
        return nil
    }

    static func invalid(_ field: String, _ message: String) -> AdminRefusal {
        AdminRefusal(status: 400, code: "invalid_parameter", "\(field): \(message)", field: field)
    }

    mutating func string(_ name: String) throws(AdminRefusal) -> String? {
        guard let value = value(name) else { return nil }
        guard case .string(let text) = value else { throw Self.invalid(name, "must be a string") }
        return text
    }

    mutating func int(_ name: String) throws(AdminRefusal) -> Int64? {
        guard let value = value(name) else { return nil }
        guard case .integer(let n) = value else { throw Self.invalid(name, "must be a whole number") }
        return n
    }

    mutating func bool(_ name: String) throws(AdminRefusal) -> Bool {
        guard let value = value(name) else { return false }
        guard case .bool(let b) = value else { throw Self.invalid(name, "must be true or false") }
        return b
    }

    mutating func strings(_ name: String) throws(AdminRefusal) -> [String] {
        guard let value = value(name) else { return [] }
        guard case .array(let list) = value else { throw Self.invalid(name, "must be an array of strings") }
        var texts: [String] = []
        for item in list {
            guard case .string(let text) = item else { throw Self.invalid(name, "must be an array of strings") }
            texts.append(text)
        }
        return texts
    }

    /// A duration: `30d`, `12h`, `90m`, `3600s`.
    mutating func duration(_ name: String) throws(AdminRefusal) -> Duration? {
        guard let text = try string(name) else { return nil }
        guard let d = DurationText.parse(text) else { throw Self.invalid(name, "a duration is a whole number with d, h, m or s (30d, 12h)") }
        return d
    }

    /// A size: a number of bytes, or text with K, M, G or T (`10G`, `512MiB`).
    mutating func size(_ name: String) throws(AdminRefusal) -> Int64? {
        guard let value = value(name) else { return nil }
        switch value {
        case .string(let text):
            guard let n = ByteSizeText.parse(text) else { throw Self.invalid(name, "a size is bytes or a number with K, M, G or T") }
            return n
        case .integer(let n) where n >= 0:
            return n
        default:
            throw Self.invalid(name, "a size is bytes (>= 0) or a number with K, M, G or T")
        }
    }

    /// A time: ISO-8601 with a zone, or epoch nanoseconds.
    mutating func time(_ name: String) throws(AdminRefusal) -> Int64? {
        guard let text = try string(name) else { return nil }
        guard let t = Timestamp.parse(text) else { throw Self.invalid(name, "must be ISO-8601 with a zone or epoch nanoseconds") }
        return t
    }

    /// Refuses fields no operation reads.
    func finish() throws(AdminRefusal) {
        if let unknown = fields.keys.sorted().first(where: { !read.contains($0) }) {
            throw AdminRefusal(status: 400, code: "unknown_parameter", "unknown field \(unknown)", field: unknown)
        }
    }
}
