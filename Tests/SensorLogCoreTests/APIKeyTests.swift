import SensorLogCore
import Testing

@Suite struct APIKeyTests {
    @Test func aKeysFileLineIsAKeyAndItsRoles() throws {
        #expect(try APIKey.parse(line: "k1") == APIKey("k1", roles: [.ingest, .read]))
        #expect(try APIKey.parse(line: "k2 admin") == APIKey("k2", roles: [.admin]))
        #expect(try APIKey.parse(line: "k3\tread,admin") == APIKey("k3", roles: [.read, .admin]))
        #expect(try APIKey.parse(line: "k4  ingest,read,admin") == APIKey("k4", roles: Set(APIRole.allCases)))
        for bad in ["k5 root", "k6 read,", "k7 read admin", "k8 READ"] {
            #expect(throws: APIKeyError.self, "\(bad)") { try APIKey.parse(line: bad) }
        }
    }

    /// `sha256:` and 64 lowercase hex digits is a key stored by its hash; anything else after
    /// the prefix is refused rather than taken as a key literally spelled "sha256:…".
    @Test func aHashedKeyIsSixtyFourHexDigits() throws {
        let hex = String(repeating: "0f", count: 32)
        let key = try APIKey.parse(line: "sha256:\(hex) read")
        #expect(key.sha256 == Array(repeating: 0x0F, count: 32))
        #expect(key.roles == [.read])
        #expect(try APIKey.parse(line: "plain").sha256 == nil)
        for bad in ["sha256:\(hex.dropLast())", "sha256:\(hex)0", "sha256:\(hex.uppercased())", "sha256:" + String(repeating: "zz", count: 32)] {
            #expect(throws: APIKeyError.self, "\(bad)") { try APIKey.parse(line: bad) }
        }
    }
}
