import Ingest
import LogStore
import SensorLogCore
import Testing

import TestSupport

/// The bytes a cluster node forwards to a partition's owner, and the owner's answer: every
/// submission and result survives the round trip, and bytes that are cut or flipped (another
/// node's, but still) are refused, never trapped on.
@Suite struct ForwardCodecTests {
    @Test func submissionsAndResultsSurviveTheRoundTrip() throws {
        let readings = standardWorkload(seconds: 3, sensors: 40, seed: testSeed())
            + [Reading(sensorID: "ünï-😀", type: "temperature", value: -.infinity, location: "", timestamp: .min)]
        for detailed in [true, false] {
            let decoded = try #require(ForwardCodec.decodeSubmission(ForwardCodec.encode(readings, detailed: detailed)))
            #expect(decoded.readings == readings && decoded.detailed == detailed)
        }
        var result = SubmissionResult(detailed: true)
        result.appended = 1
        result.duplicates = 1
        result.mismatches = 1
        result.outcomes = [.appended(partition: 3, offset: 1 << 40), .duplicate, .typeMismatch(expected: "humidity"), .tooOld,
                           .deleted, .tooManySensors]
        result.firstRefused = (1, .duplicate)
        result.firstProblem = (2, .typeMismatch(expected: "humidity"))
        guard case .success(let back)? = ForwardCodec.decodeResult(ForwardCodec.encode(.success(result))) else {
            Issue.record("the result did not decode")
            return
        }
        #expect(back.outcomes == result.outcomes && back.appended == 1 && back.duplicates == 1 && back.mismatches == 1)
        #expect(back.firstRefused?.index == 1 && back.firstProblem?.outcome == .typeMismatch(expected: "humidity"))
        let failure = ForwardCodec.decodeResult(ForwardCodec.encode(.failure(LogError(.unavailable, "no owner"))))
        guard case .failure(let error)? = failure else {
            Issue.record("the failure did not decode")
            return
        }
        #expect(error.code == .unavailable && error.message == "no owner")
    }

    @Test func cutOrFlippedBytesAreRefusedNotTrappedOn() {
        var rng = SplitMix64(seed: testSeed())
        let readings = standardWorkload(seconds: 1, sensors: 20, seed: testSeed())
        let submission = ForwardCodec.encode(readings, detailed: true)
        var result = SubmissionResult(detailed: true)
        result.outcomes = Array(repeating: .duplicate, count: 5) + [.typeMismatch(expected: "pressure")]
        let answer = ForwardCodec.encode(.success(result))
        for cut in 0..<submission.count where cut % 7 == 0 { #expect(ForwardCodec.decodeSubmission(Array(submission[..<cut])) == nil) }
        for cut in 0..<answer.count { #expect(ForwardCodec.decodeResult(Array(answer[..<cut])) == nil) }
        for _ in 0..<5_000 {
            var bytes = Bool.random(using: &rng) ? submission : answer
            for _ in 0...Int.random(in: 0...3, using: &rng) {
                bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            _ = ForwardCodec.decodeSubmission(bytes)  // may decode (a flipped value is still a value): must not trap
            _ = ForwardCodec.decodeResult(bytes)
        }
    }
}
