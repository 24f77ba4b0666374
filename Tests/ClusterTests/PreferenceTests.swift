@testable import Cluster
import Testing

/// Who a partition belongs to among the members (rendezvous hashing): the same answer in every
/// process, a share for each member, and a member leaving moves only the partitions it had.
@Suite struct PreferenceTests {
    @Test func everyMemberGetsAShareAndALeavingOneMovesOnlyItsOwn() {
        let three = ["a", "b", "c"]
        let before = (0..<64).map { ClusterNode.preferred($0, among: three)! }
        #expect(before == (0..<64).map { ClusterNode.preferred($0, among: three.reversed())! }, "order of the member list matters not")
        for node in three { #expect(before.count { $0 == node } >= 10, "\(node) gets a share of 64") }
        let after = (0..<64).map { ClusterNode.preferred($0, among: ["a", "c"])! }
        for p in 0..<64 where before[p] != "b" { #expect(after[p] == before[p], "partition \(p) moved though its node stayed") }
        #expect(ClusterNode.preferred(0, among: []) == nil)
        // Fixed across processes and releases: FNV-1a, not Swift's per-process seeded Hasher.
        #expect(ClusterNode.score("a", 0) == ClusterNode.score("a", 0) && ClusterNode.score("a", 0) != ClusterNode.score("a", 1))
    }
}
