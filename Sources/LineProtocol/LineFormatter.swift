public import SensorLogCore

/// Writes a reading as one line of line protocol, escaped so that `LineParser` reads it back
/// equal: `type,sensor_id=…,location=… value=… timestamp\n`. Used by exports (`dump --format ilp`).
public enum LineFormatter {
    /// The line, with its trailing newline.
    public static func line(for reading: Reading) -> String {
        var out = ""
        out.reserveCapacity(96)
        escape(reading.type, into: &out, equals: false)
        out += ",sensor_id="
        escape(reading.sensorID, into: &out, equals: true)
        out += ",location="
        escape(reading.location, into: &out, equals: true)
        out += " value="
        out += number(reading.value)
        out += " "
        out += String(reading.timestamp)
        out += "\n"
        return out
    }

    /// The shortest decimal that reads back as the same double (Swift's `description`), in a
    /// form line protocol takes (no `inf`/`nan`: those are not valid readings anyway).
    static func number(_ v: Double) -> String {
        v.description
    }

    /// Backslash before the characters that end a name or tag value (and before a backslash, so
    /// one that ends a value cannot escape the delimiter after it).
    static func escape(_ s: String, into out: inout String, equals: Bool) {
        for scalar in s.unicodeScalars {
            switch scalar {
            case ",", " ", "\\": out += "\\"
            case "=" where equals: out += "\\"
            default: break
            }
            out.unicodeScalars.append(scalar)
        }
    }
}
