/// What an API key may do.
public enum APIRole: String, Sendable, CaseIterable, Comparable {
    /// Write readings.
    case ingest
    /// Read the log, the aggregates and the groups.
    case read
    /// `/admin/`: jobs that change the log (compaction, retention, deletion, rebuilds, resets).
    case admin

    public static func < (a: APIRole, b: APIRole) -> Bool { a.rawValue < b.rawValue }
}

/// An API key and its roles. A key given alone may ingest and read, as keys could before roles.
public struct APIKey: Sendable, Hashable, ExpressibleByStringLiteral {
    public var key: String
    public var roles: Set<APIRole>

    public static let defaultRoles: Set<APIRole> = [.ingest, .read]

    public init(_ key: String, roles: Set<APIRole> = APIKey.defaultRoles) {
        self.key = key
        self.roles = roles
    }

    public init(stringLiteral key: String) { self.init(key) }

    /// The prefix of a key stored by its hash: `sha256:` and the SHA-256 of the key in 64 hex
    /// digits (what `sensorlog keys add` writes), so the keys file does not hold the key itself.
    public static let hashPrefix = "sha256:"

    /// The SHA-256 a hashed entry holds; nil for a key kept as itself.
    public var sha256: [UInt8]? {
        guard key.hasPrefix(Self.hashPrefix) else { return nil }
        return Self.bytes(hex: key.dropFirst(Self.hashPrefix.count))
    }

    static func bytes(hex: Substring) -> [UInt8]? {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        func value(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            default: nil
            }
        }
        var out: [UInt8] = []
        for i in stride(from: 0, to: 64, by: 2) {
            guard let hi = value(digits[i]), let lo = value(digits[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    /// One line of a keys file: `KEY` or `KEY role[,role]` (roles `ingest`, `read`, `admin`).
    /// - Throws: a message naming what is wrong with the line.
    public static func parse(line: String) throws(APIKeyError) -> APIKey {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let key = fields.first else { throw APIKeyError("empty line") }
        if key.hasPrefix(hashPrefix), bytes(hex: key.dropFirst(hashPrefix.count)) == nil {
            throw APIKeyError("a hashed key is sha256: and 64 lowercase hex digits")
        }
        guard fields.count <= 2 else { throw APIKeyError("a line is KEY or KEY role[,role]; found \(fields.count) fields") }
        guard fields.count == 2 else { return APIKey(key) }
        var roles: Set<APIRole> = []
        for name in fields[1].split(separator: ",", omittingEmptySubsequences: false) {
            guard let role = APIRole(rawValue: String(name)) else {
                throw APIKeyError("unknown role '\(name)' (roles: \(APIRole.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            roles.insert(role)
        }
        return APIKey(key, roles: roles)
    }
}

/// Why a keys-file line was refused.
public struct APIKeyError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
