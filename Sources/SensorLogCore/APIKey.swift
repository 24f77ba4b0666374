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

    /// One line of a keys file: `KEY` or `KEY role[,role]` (roles `ingest`, `read`, `admin`).
    /// - Throws: a message naming what is wrong with the line.
    public static func parse(line: String) throws(APIKeyError) -> APIKey {
        let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let key = fields.first else { throw APIKeyError("empty line") }
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
