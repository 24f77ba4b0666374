/// The JSON of `POST /sensor/data` and of MQTT payloads, parsed straight from the body's bytes: one object or an
/// array of objects, whose members of interest are scalars.
///
/// Strict RFC 8259: UTF-8, no trailing commas (which Foundation's parser lets through), no
/// comments, no leading zeros, escapes checked, lone surrogates refused. Members other than the
/// five of a reading are skipped whatever they hold; nested values of the five read as `.other`,
/// so validation can name the field. When a member appears twice, the last one counts.
/// Written for speed: JSONDecoder cost more than everything else a one-reading request does
/// outside the kernel.
public enum ReadingJSON {
    public struct SyntaxError: Error, Equatable {
        public var message: String
        /// Byte position in the body.
        public var position: Int
    }

    /// The parsed body: its items, and whether it was an array.
    public static func parse(_ bytes: UnsafeRawBufferPointer) throws(SyntaxError) -> (items: [PostedReading], isArray: Bool) {
        var parser = Parser(bytes: bytes)
        parser.skipWhitespace()
        let isArray = parser.peek == UInt8(ascii: "[")
        var items: [PostedReading] = []
        if isArray {
            try parser.array { p throws(SyntaxError) in
                guard p.peek == UInt8(ascii: "{") else { throw p.error("expected a reading object") }
                items.append(try p.reading())
            }
        } else {
            guard parser.peek == UInt8(ascii: "{") else { throw parser.error("expected a reading object or an array of them") }
            items.append(try parser.reading())
        }
        parser.skipWhitespace()
        guard parser.position == bytes.count else { throw parser.error("unexpected data after the JSON value") }
        return (items, isArray)
    }

    /// Nesting deeper than this in a skipped value is refused rather than followed.
    static let maxDepth = 64

    struct Parser {
        let bytes: UnsafeRawBufferPointer
        var position = 0

        init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

        /// The byte at `position`, or 0 at the end (0 is never valid where a byte is expected).
        var peek: UInt8 { position < bytes.count ? bytes[position] : 0 }

        func error(_ message: String) -> SyntaxError {
            SyntaxError(message: position < bytes.count ? message : message + " (the body ended)", position: position)
        }

        mutating func skipWhitespace() {
            while position < bytes.count {
                switch bytes[position] {
                case 0x20, 0x09, 0x0A, 0x0D: position += 1
                default: return
                }
            }
        }

        mutating func expect(_ byte: UInt8, _ what: String) throws(SyntaxError) {
            skipWhitespace()
            guard peek == byte else { throw error("expected \(what)") }
            position += 1
        }

        /// An object at `position`, keeping the members of a reading.
        /// A member of a reading given twice is refused: parsers differ on which one wins, so a
        /// proxy that checked the first could pass a reading stored with the second.
        mutating func reading() throws(SyntaxError) -> PostedReading {
            var reading = PostedReading()
            var seen: UInt8 = 0  // a bit per member, not a set: this is the hot path of a POST
            try object { p, key throws(SyntaxError) in
                let bit: UInt8 = switch key {
                case "sensor_id": 1
                case "type": 2
                case "value": 4
                case "location": 8
                case "timestamp": 16
                default: 0
                }
                guard seen & bit == 0 else { throw p.error("member \"\(key)\" given twice") }
                seen |= bit
                switch key {
                case "sensor_id": reading.sensorID = try p.scalar()
                case "type": reading.type = try p.scalar()
                case "value": reading.value = try p.scalar()
                case "location": reading.location = try p.scalar()
                case "timestamp": reading.timestamp = try p.scalar()
                default: try p.skipValue(depth: 1)
                }
            }
            return reading
        }

        /// The object at `position` (its `{`): `member` is called with each name, positioned on
        /// the value, and must consume it.
        mutating func object(_ member: (inout Parser, String) throws(SyntaxError) -> Void) throws(SyntaxError) {
            position += 1
            skipWhitespace()
            if peek == UInt8(ascii: "}") {
                position += 1
                return
            }
            while true {
                skipWhitespace()
                guard peek == UInt8(ascii: "\"") else { throw error("expected a member name in quotes") }
                let key = try string()
                try expect(UInt8(ascii: ":"), ": after a member name")
                skipWhitespace()
                try member(&self, key)
                skipWhitespace()
                if peek == UInt8(ascii: ",") {
                    position += 1
                    continue
                }
                guard peek == UInt8(ascii: "}") else { throw error("expected , or } after a member") }
                position += 1
                return
            }
        }

        /// The array at `position` (its `[`): `element` is called positioned on each item, and
        /// must consume it.
        mutating func array(_ element: (inout Parser) throws(SyntaxError) -> Void) throws(SyntaxError) {
            position += 1
            skipWhitespace()
            if peek == UInt8(ascii: "]") {
                position += 1
                return
            }
            while true {
                skipWhitespace()
                try element(&self)
                skipWhitespace()
                if peek == UInt8(ascii: ",") {
                    position += 1
                    continue
                }
                guard peek == UInt8(ascii: "]") else { throw error("expected , or ] after an array item") }
                position += 1
                return
            }
        }

        /// A value where a scalar is wanted: nested arrays and objects are skipped as `.other`.
        mutating func scalar() throws(SyntaxError) -> JSONScalar {
            switch peek {
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number(try number())
            case UInt8(ascii: "t"): try literal("true"); return .bool(true)
            case UInt8(ascii: "f"): try literal("false"); return .bool(false)
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                try skipValue(depth: 1)
                return .other
            default: throw error("expected a JSON value")
            }
        }

        mutating func literal(_ word: StaticString) throws(SyntaxError) {
            let n = word.utf8CodeUnitCount
            guard bytes.count - position >= n,
                  (0..<n).allSatisfy({ bytes[position + $0] == word.utf8Start[$0] })
            else { throw error("expected a JSON value") }
            position += n
        }

        /// Any value, checked and dropped.
        mutating func skipValue(depth: Int) throws(SyntaxError) {
            guard depth <= ReadingJSON.maxDepth else { throw error("nested deeper than \(ReadingJSON.maxDepth) levels") }
            switch peek {
            case UInt8(ascii: "{"): try object { p, _ throws(SyntaxError) in try p.skipValue(depth: depth + 1) }
            case UInt8(ascii: "["): try array { p throws(SyntaxError) in try p.skipValue(depth: depth + 1) }
            default: _ = try scalar()
            }
        }

        /// A number per the JSON grammar, as the nearest Double (±infinity when out of range,
        /// which validation then refuses as not finite).
        mutating func number() throws(SyntaxError) -> Double {
            let start = position
            if peek == UInt8(ascii: "-") { position += 1 }
            guard isDigit(peek) else { throw error("expected a digit") }
            if peek == UInt8(ascii: "0") {
                position += 1
                if isDigit(peek) { throw error("leading zeros are not JSON") }
            } else {
                while isDigit(peek) { position += 1 }
            }
            if peek == UInt8(ascii: ".") {
                position += 1
                guard isDigit(peek) else { throw error("expected a digit after the decimal point") }
                while isDigit(peek) { position += 1 }
            }
            if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
                position += 1
                if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { position += 1 }
                guard isDigit(peek) else { throw error("expected a digit in the exponent") }
                while isDigit(peek) { position += 1 }
            }
            let text = Substring(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
            guard let value = Double(text) else { throw error("not a number") }
            return value
        }

        private func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

        /// A string at `position` (its opening quote), unescaped, UTF-8 checked.
        mutating func string() throws(SyntaxError) -> String {
            position += 1
            let start = position
            // The common case: no escapes, ASCII or valid UTF-8 up to the closing quote.
            var ascii = true
            while position < bytes.count {
                let b = bytes[position]
                if b == UInt8(ascii: "\"") {
                    let raw = UnsafeRawBufferPointer(rebasing: bytes[start..<position])
                    position += 1
                    if ascii { return String(decoding: raw, as: UTF8.self) }  // nothing to validate
                    guard let s = String(validating: raw, as: UTF8.self) else {
                        throw SyntaxError(message: "a string is not valid UTF-8", position: start)
                    }
                    return s
                }
                if b == UInt8(ascii: "\\") { break }
                guard b >= 0x20 else { throw error("control character in a string (escape it)") }
                ascii = ascii && b < 0x80
                position += 1
            }
            guard position < bytes.count else { throw error("unterminated string") }
            // Escapes: decode into bytes from the start.
            var out = [UInt8](UnsafeRawBufferPointer(rebasing: bytes[start..<position]))
            while position < bytes.count {
                let b = bytes[position]
                switch b {
                case UInt8(ascii: "\""):
                    position += 1
                    guard let s = String(validating: out, as: UTF8.self) else {
                        throw SyntaxError(message: "a string is not valid UTF-8", position: start)
                    }
                    return s
                case UInt8(ascii: "\\"):
                    position += 1
                    let e = peek
                    position += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800...0xDBFF).contains(scalar) {
                            guard peek == UInt8(ascii: "\\"), position + 1 < bytes.count, bytes[position + 1] == UInt8(ascii: "u") else {
                                throw error("lone surrogate in a \\u escape")
                            }
                            position += 2
                            let low = try hex4()
                            guard (0xDC00...0xDFFF).contains(low) else { throw error("lone surrogate in a \\u escape") }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00...0xDFFF).contains(scalar) {
                            throw error("lone surrogate in a \\u escape")
                        }
                        out.append(contentsOf: String(Character(Unicode.Scalar(scalar)!)).utf8)
                    default:
                        position -= 1
                        throw error("invalid escape in a string")
                    }
                default:
                    guard b >= 0x20 else { throw error("control character in a string (escape it)") }
                    out.append(b)
                    position += 1
                }
            }
            throw error("unterminated string")
        }

        private mutating func hex4() throws(SyntaxError) -> UInt32 {
            guard bytes.count - position >= 4 else { throw error("expected 4 hex digits after \\u") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let b = bytes[position]
                let d: UInt8
                switch b {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): d = b - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): d = b - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): d = b - UInt8(ascii: "A") + 10
                default: throw error("expected 4 hex digits after \\u")
                }
                v = v << 4 | UInt32(d)
                position += 1
            }
            return v
        }
    }
}
