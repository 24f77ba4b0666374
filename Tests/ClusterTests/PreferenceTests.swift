@testable import Cluster
import Testing

/// Who a partition belongs to among the members (rendezvous hashing with bounded loads): the
/// same answer in every process, an even share for each member whatever their names, and a
/// member leaving or joining moves few partitions besides its own.
@Suite struct PreferenceTests {
    static let names = [["a", "b", "c"], ["m0", "m1", "m2"], ["node-1", "node-2", "node-3"], ["h1", "h2", "h3", "h4", "h5"], ["solo"]]

    @Test(arguments: [1, 2, 3, 8, 16, 64, 256])
    func everyMemberGetsAnEvenShareWhateverItsName(partitions: Int) {
        for members in Self.names {
            let plan = ClusterNode.assignment(partitions, among: members)
            #expect(plan == ClusterNode.assignment(partitions, among: members.reversed()), "order of the member list matters not")
            #expect(plan.allSatisfy { $0.map(members.contains) == true }, "every partition has a member")
            let counts = members.map { m in plan.count { $0 == m } }
            #expect(counts.max()! - counts.min()! <= 1, "\(members) over \(partitions): \(counts)")
        }
        #expect(ClusterNode.assignment(partitions, among: []).allSatisfy { $0 == nil })
        #expect(ClusterNode.assignment(partitions, among: ["a", "a", "b"]) == ClusterNode.assignment(partitions, among: ["a", "b"]))
    }

    @Test func aMemberLeavingOrJoiningMovesFewOthers() {
        for members in Self.names where members.count > 1 {
            let before = ClusterNode.assignment(64, among: members)
            for gone in members {
                let after = ClusterNode.assignment(64, among: members.filter { $0 != gone })
                let moved = (0..<64).count { before[$0] != gone && after[$0] != before[$0] }
                #expect(moved <= 8, "\(gone) leaving \(members) moved \(moved) of the others' partitions")
            }
            let joined = ClusterNode.assignment(64, among: members + ["new"])
            let moved = (0..<64).count { joined[$0] != "new" && joined[$0] != before[$0] }
            #expect(moved <= 8, "a member joining \(members) moved \(moved) partitions between the others")
        }
        // Fixed across processes and releases: FNV-1a, not Swift's per-process seeded Hasher
        // (the values come from an independent Python rendition of the same algorithm).
        #expect(ClusterNode.score("a", 0) == 3_496_392_490_599_738_786)
        #expect(ClusterNode.assignment(8, among: ["node-1", "node-2", "node-3"])
                == ["node-3", "node-2", "node-2", "node-3", "node-1", "node-2", "node-3", "node-1"])
    }
}
