/// Where in an MQTT topic a reading's fields may be: `sensors/{location}/{sensor_id}` takes the
/// location and sensor id from the second and third levels, for payloads that leave them out.
/// A level is a literal, `+` (any), `{sensor_id}`, `{location}` or `{type}`; a last `#` matches
/// the rest. A topic that does not fit supplies nothing.
public struct TopicTemplate: Sendable, Equatable {
    enum Level: Equatable {
        case literal(Substring)
        case any
        case rest
        case field(Field)
    }

    public enum Field: String, Sendable, CaseIterable {
        case sensorID = "sensor_id"
        case location
        case type
    }

    let levels: [Level]

    public struct Invalid: Error, CustomStringConvertible {
        public var description: String
    }

    public init(_ template: String) throws(Invalid) {
        var levels: [Level] = []
        let parts = template.split(separator: "/", omittingEmptySubsequences: false)
        for (i, part) in parts.enumerated() {
            if part == "+" {
                levels.append(.any)
            } else if part == "#" {
                guard i == parts.count - 1 else { throw Invalid(description: "'#' must be the last level of the topic template") }
                levels.append(.rest)
            } else if part.hasPrefix("{") && part.hasSuffix("}") {
                guard let field = Field(rawValue: String(part.dropFirst().dropLast())) else {
                    throw Invalid(description: "unknown field \(part) in the topic template (known: {sensor_id}, {location}, {type})")
                }
                levels.append(.field(field))
            } else {
                guard !part.contains("{") && !part.contains("}") && !part.contains("+") && !part.contains("#") else {
                    throw Invalid(description: "level '\(part)' mixes a field or wildcard with text")
                }
                levels.append(.literal(part))
            }
        }
        self.levels = levels
    }

    /// The fields `topic` supplies, or nil when it does not fit the template.
    public func fields(of topic: String) -> [Field: String]? {
        let parts = topic.split(separator: "/", omittingEmptySubsequences: false)
        var out: [Field: String] = [:]
        for (i, level) in levels.enumerated() {
            if case .rest = level { return out }
            guard i < parts.count else { return nil }
            switch level {
            case .literal(let text): guard parts[i] == text else { return nil }
            case .any, .rest: break
            case .field(let field):
                guard !parts[i].isEmpty else { return nil }
                out[field] = String(parts[i])
            }
        }
        return parts.count == levels.count ? out : nil
    }
}
