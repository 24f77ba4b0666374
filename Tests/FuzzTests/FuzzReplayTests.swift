import Foundation
import FuzzTargets
import FuzzTargetsNet
import Testing

/// Every input kept in the repository, through its target, uninstrumented: the corpora
/// (Fuzz/corpus/TARGET/) and every input that once crashed a target (Fuzz/regressions/TARGET/),
/// so `swift test` checks the properties on them without libFuzzer. Serialized: the targets that
/// read files share one scratch directory per process.
@Suite(.serialized) struct FuzzReplayTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz").path

    @Test(arguments: NetTargets.all.map(\.name))
    func corpusAndRegressions(_ name: String) async throws {
        await NetTargets.preparePipeline()
        let target = try #require(NetTargets.all.first { $0.name == name })
        let corpus = FuzzDriver.replay([Self.root + "/corpus/" + name], through: target)
        _ = FuzzDriver.replay([Self.root + "/regressions/" + name], through: target)
        #expect(corpus > 0, "Fuzz/corpus/\(name) is empty")
    }

    /// The seeds come from this build's own encoders and logs: they go through the targets too,
    /// so a format change that the corpora no longer exercise still gets checked.
    @Test func freshSeeds() async throws {
        await NetTargets.preparePipeline()
        let dir = NSTemporaryDirectory() + "sensorlog-fuzz-seeds-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try NetTargets.writeSeeds(to: dir)
        for target in NetTargets.all {
            #expect(FuzzDriver.replay([dir + "/" + target.name], through: target) > 0, "no seeds for \(target.name)")
        }
    }
}
