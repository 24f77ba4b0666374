import Foundation
import PropertyBased
import TestSupport
import Testing

@testable import HTTPAPI
@testable import Ingest
@testable import SensorLogCore

/// The hand-written parser of `POST /sensor/data` bodies against the JSON spec and against
/// Foundation's JSONSerialization, which it replaced.
@Suite struct ReadingJSONTests {
    func parse(_ text: String) throws(ReadingJSON.SyntaxError) -> (items: [PostedReading], isArray: Bool) {
        try parse(Array(text.utf8))
    }

    func parse(_ bytes: [UInt8]) throws(ReadingJSON.SyntaxError) -> (items: [PostedReading], isArray: Bool) {
        let result = bytes.withUnsafeBytes { raw in Result { () throws(ReadingJSON.SyntaxError) in try ReadingJSON.parse(raw) } }
        return try result.get()
    }

    func rejects(_ text: String, _ comment: Comment? = nil) {
        #expect(throws: ReadingJSON.SyntaxError.self, comment) { try parse(text) }
    }

    @Test func oneReadingAndAnArray() throws {
        let one = try parse(#" {"sensor_id":"s-1","type":"temperature","value":21.5,"location":"lab","timestamp":"2026-11-24T10:00:00Z"} "#)
        #expect(!one.isArray)
        #expect(one.items == [PostedReading(sensorID: .string("s-1"), type: .string("temperature"), value: .number(21.5),
                                            location: .string("lab"), timestamp: .string("2026-11-24T10:00:00Z"))])
        let many = try parse("[\n{\"value\": -1e3}, {\"value\": 0}\t,{}\r\n]")
        #expect(many.isArray)
        #expect(many.items.map(\.value) == [.number(-1000), .number(0), nil])
        #expect(try parse("[]").items.isEmpty)
    }

    @Test func scalarsOfEveryKindAreKeptForValidationToName() throws {
        let r = try parse(#"{"sensor_id":7,"type":null,"value":"21.5","location":true,"timestamp":{"a":[1,{"b":null}]}}"#).items[0]
        #expect(r.sensorID == .number(7))
        #expect(r.type == .null)
        #expect(r.value == .string("21.5"))
        #expect(r.location == .bool(true))
        #expect(r.timestamp == .other)
    }

    @Test func otherMembersAreSkippedWhateverTheyHold() throws {
        let r = try parse(#"{"note":{"deep":[[[],{}],"x\"}",-0.5e-7,false]},"value":1,"tags":[1,2,3]}"#).items[0]
        #expect(r.value == .number(1))
        #expect(r.sensorID == nil)
    }

    /// Parsers disagree on which of two equal members wins, so a reading naming one twice is
    /// refused; an unknown member, skipped anyway, may repeat.
    @Test func aReadingMemberGivenTwiceIsRefused() throws {
        for key in ["sensor_id", "type", "value", "location", "timestamp"] {
            #expect(throws: ReadingJSON.SyntaxError.self) { try parse("{\"\(key)\":1,\"\(key)\":2}") }
        }
        #expect(try parse(#"{"value":1,"note":1,"note":2}"#).items[0].value == .number(1))
    }

    @Test func stringEscapes() throws {
        let r = try parse(#"{"sensor_id":"a\"b\\c\/d\b\f\n\r\t\u00e9\u20AC\ud83d\ude00","location":"plain é €"}"#).items[0]
        #expect(r.sensorID == .string("a\"b\\c/d\u{8}\u{c}\n\r\t\u{e9}\u{20ac}\u{1f600}"))
        #expect(r.location == .string("plain é €"))
    }

    @Test func numbers() throws {
        for (text, value) in [("0", 0.0), ("-0", -0.0), ("12", 12), ("-3.25", -3.25), ("1E2", 100), ("2e-2", 0.02),
                              ("1.5e+3", 1500), ("18446744073709551616", 18446744073709551616.0)] {
            #expect(try parse(#"{"value":\#(text)}"#).items[0].value == .number(value), "\(text)")
        }
        // Out of Double's range: infinity, which validation refuses as not finite.
        #expect(try parse(#"{"value":1e400}"#).items[0].value == .number(.infinity))
    }

    @Test func whatIsNotJSONIsRefused() {
        for text in [
            "", " ", "{", "}", "[", "[{}", "[{},]", "{,}", #"{"value":1,}"#, #"{"value" 1}"#, #"{value:1}"#, "{'value':1}",
            #"{"value":01}"#, #"{"value":1.}"#, #"{"value":.5}"#, #"{"value":-}"#, #"{"value":1e}"#, #"{"value":+1}"#,
            #"{"value":NaN}"#, #"{"value":Infinity}"#, #"{"value":0x10}"#, #"{"value":tru}"#, #"{"value":nul}"#,
            #"{"s":"\x"}"#, #"{"s":"\u12"}"#, #"{"s":"\ud800"}"#, #"{"s":"\udc00"}"#, #"{"s":"\ud800\u0041"}"#,
            "{\"s\":\"tab\there\"}", "{\"s\":\"unterminated}", #"{"value":1} {"value":2}"#, #"{"value":1}x"#,
            "1", #""a""#, "null", "[1]", "[[{}]]", #"{"value":1}/* c */"#,
        ] {
            rejects(text, "\(text.debugDescription)")
        }
        #expect(throws: ReadingJSON.SyntaxError.self) { try parse([UInt8](#"{"s":""#.utf8) + [0xC3, 0x28] + [UInt8](#""}"#.utf8)) }
        #expect(throws: ReadingJSON.SyntaxError.self) { try parse([UInt8](#"{"s":""#.utf8) + [0xED, 0xA0, 0x80] + [UInt8](#""}"#.utf8)) }
    }

    @Test func deepNestingIsRefusedNotFollowed() throws {
        let deep = #"{"x":"# + String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000) + "}"
        let error = #expect(throws: ReadingJSON.SyntaxError.self) { try parse(deep) }
        #expect(error?.message.contains("nested") == true)
        #expect(try parse(#"{"x":"# + String(repeating: "[", count: 60) + String(repeating: "]", count: 60) + "}").items.count == 1)
    }

    @Test func errorsSayWhere() {
        let error = #expect(throws: ReadingJSON.SyntaxError.self) { try parse(#"{"value":01}"#) }
        #expect(error?.position == 10)
    }

    static let text = Gen.oneOf(
        Gen.letterOrNumber.string(of: 0...12),
        Gen.int(in: 0...4).map { ["a\"b", "back\\slash", "é€😀", "tab\tnew\nline", "\u{0}\u{1f}"][$0] })

    /// Any reading JSONSerialization writes, this parser reads back equal.
    @Test func readsWhatFoundationWrites() async {
        await propertyCheck(count: 500, input: Self.text, Self.text, Gen.double(in: -1e6...1e6), Gen.bool) { id, location, value, asArray in
            let object: [String: Any] = ["sensor_id": id, "type": "temperature", "value": value, "location": location,
                                         "timestamp": "2026-11-24T10:00:00.123456789Z", "extra": ["nested": [1, 2]]]
            let data = try! JSONSerialization.data(withJSONObject: asArray ? [object, object] : object)
            let parsed = try! parse([UInt8](data))
            #expect(parsed.isArray == asArray)
            #expect(parsed.items.count == (asArray ? 2 : 1))
            let r = parsed.items[0]
            #expect(r.sensorID == .string(id))
            #expect(r.location == .string(location))
            #expect(r.value == .number(value))
        }
    }

    /// Mutations of a valid body: accepted exactly when JSONSerialization accepts them (and
    /// they are still an object or array of objects), trailing commas aside, and never a crash.
    @Test func agreesWithFoundationOnMutatedBodies() async {
        let base = Array(#"[{"sensor_id":"s\u00e9-1","value":-12.5e1,"x":[true,false,null,{"y":"z"}]},{"type":"t"}]"#.utf8)
        let alphabet = Array(#"{}[]:,"\ue0.-+1 aftnrl"#.utf8) + [0x00, 0x0A, 0xC3, 0xFF]
        await propertyCheck(count: 3000, input: Gen.int(in: 0...(base.count - 1)).array(of: 1...3),
                            Gen.int(in: 0...(alphabet.count - 1)).array(of: 1...3), Gen.int(in: 0...2)) { positions, picks, kind in
            var bytes = base
            for (p, k) in zip(positions, picks) {
                let at = min(p, bytes.count - 1)
                switch kind {
                case 0: bytes[at] = alphabet[k]
                case 1: bytes.insert(alphabet[k], at: at)
                default: bytes.remove(at: at)
                }
            }
            let ours = (try? parse(bytes)) != nil
            // Foundation takes a trailing comma before } or ]; RFC 8259 does not, nor do we.
            // Outside strings only: `",}"` inside a string is text (string contents are dropped).
            var compact: [UInt8] = []
            var inString = false, escaped = false
            for b in bytes {
                if inString {
                    if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                } else if b == UInt8(ascii: "\"") {
                    inString = true
                } else if b != 0x20 && b != 0x0A {
                    compact.append(b)
                }
            }
            if zip(compact, compact.dropFirst()).contains(where: { $0 == UInt8(ascii: ",") && ($1 == UInt8(ascii: "}") || $1 == UInt8(ascii: "]")) }) {
                #expect(!ours)
                return
            }
            let foundation: Bool
            if let value = try? JSONSerialization.jsonObject(with: Data(bytes), options: []) {
                foundation = value is [String: Any] || ((value as? [Any])?.allSatisfy { $0 is [String: Any] } ?? false)
            } else {
                foundation = false
            }
            #expect(ours == foundation, "\(String(decoding: bytes, as: UTF8.self).debugDescription)")
        }
    }

    @Test func randomBytesNeverCrash() async {
        await propertyCheck(count: 3000, input: Gen.uint8().array(of: 0...200)) { bytes in
            _ = try? parse(bytes)
        }
    }
}
