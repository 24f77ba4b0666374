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
}
