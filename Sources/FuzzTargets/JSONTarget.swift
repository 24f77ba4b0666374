import SensorLogCore

/// The JSON reading parser of `POST /sensor/data` and MQTT payloads (ReadingJSON.swift,
/// PostedReading.swift).
enum JSONTarget {
    static let validator = ReadingValidator()

    /// A body accepted: written back as JSON (`encode`), parses to the same items and shape.
    /// Each item that `reading(index:validator:)` accepts passes the one validation and carries
    /// the posted fields unchanged; its timestamp formats back to ISO-8601 text that parses to it.
    @Sendable static func run(_ input: UnsafeRawBufferPointer) {
        guard let parsed = try? ReadingJSON.parse(input) else { return }
        let text = encode(parsed.items, isArray: parsed.isArray)
        let again = text.withUnsafeBytes { raw in Result { () throws(ReadingJSON.SyntaxError) in try ReadingJSON.parse(raw) } }
        switch again {
        case .success(let back):
            check(back.isArray == parsed.isArray && back.items == parsed.items,
                  "re-encoded body parses differently: \(String(decoding: text, as: UTF8.self))")
        case .failure(let error):
            check(false, "re-encoded body is refused (\(error.message) at \(error.position)): \(String(decoding: text, as: UTF8.self))")
        }
        for (i, item) in parsed.items.enumerated() {
            guard let reading = try? item.reading(index: i, validator: validator) else { continue }
            do { try validator.validate(reading) } catch { check(false, "accepted reading fails validation: \(error)") }
            check(item.sensorID == .string(reading.sensorID) && item.type == .string(reading.type)
                  && item.location == .string(reading.location) && item.value == .number(reading.value), "reading differs from the posted fields")
            guard case .string(let stamp) = item.timestamp else { return check(false, "accepted a timestamp that is not a string") }
            check(Timestamp.parseISO8601(stamp) == reading.timestamp, "timestamp differs from its text")
            let formatted = Timestamp.formatISO8601(reading.timestamp)
            check(Timestamp.parseISO8601(formatted) == reading.timestamp, "timestamp \(reading.timestamp) formats to \(formatted), which parses differently")
        }
    }

    /// The items as a JSON text: members in a fixed order, missing ones left out, nested values
    /// (`.other`) as `[]`, numbers as Swift's shortest round-trip form (infinity, which only an
    /// out-of-range literal gives, as 1e999).
    static func encode(_ items: [PostedReading], isArray: Bool) -> [UInt8] {
        var out: [UInt8] = []
        func scalar(_ v: JSONScalar) {
            switch v {
            case .string(let s): string(s)
            case .number(let d):
                if d.isInfinite { out += Array((d < 0 ? "-1e999" : "1e999").utf8) } else { out += Array(d.description.utf8) }
            case .bool(let b): out += Array((b ? "true" : "false").utf8)
            case .null: out += Array("null".utf8)
            case .other: out += Array("[]".utf8)
            }
        }
        func string(_ s: String) {
            out.append(0x22)
            for b in s.utf8 {
                switch b {
                case 0x22: out += [0x5C, 0x22]
                case 0x5C: out += [0x5C, 0x5C]
                case 0..<0x20: out += Array("\\u00".utf8) + Array(String(b >> 4, radix: 16).utf8) + Array(String(b & 0xF, radix: 16).utf8)
                default: out.append(b)
                }
            }
            out.append(0x22)
        }
        func object(_ item: PostedReading) {
            out.append(UInt8(ascii: "{"))
            var first = true
            for (key, value) in [("sensor_id", item.sensorID), ("type", item.type), ("value", item.value), ("location", item.location),
                                 ("timestamp", item.timestamp)] {
                guard let value else { continue }
                if !first { out.append(UInt8(ascii: ",")) }
                first = false
                string(key)
                out.append(UInt8(ascii: ":"))
                scalar(value)
            }
            out.append(UInt8(ascii: "}"))
        }
        if isArray {
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                object(item)
            }
            out.append(UInt8(ascii: "]"))
        } else {
            object(items[0])
        }
        return out
    }
}
