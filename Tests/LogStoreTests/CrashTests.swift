import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

/// kill -9 while a child process appends with fsync=always (Tests/LogCrashChild).
@Suite struct CrashTests {
    /// The child binary sits beside this test binary in the build directory.
    static var childURL: URL {
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("LogCrashChild")
    }

    /// Mirrors `reading(_:)` in LogCrashChild/main.swift.
    static func reading(_ seq: Int64) -> Reading {
        Reading(sensorID: "sensor-\(seq % 97)", type: ["temperature", "humidity", "pressure"][Int(seq % 3)],
                value: Double(seq % 100_000) / 1000, location: "site-\(seq % 7)", timestamp: 1_700_000_000_000_000_000 + seq)
    }

    struct Ack {
        var partition: Int
        var base: Int64
        var count: Int
        var seqs: [Int64]
    }

    @Test(.timeLimit(.minutes(3)))
    func killNineNeverLosesOrDuplicatesAcknowledgedReadings() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.childURL.path), "build LogCrashChild first (swift build)")
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        var acks: [Ack] = []
        var rng = SplitMix64(seed: testSeed())
        let rounds = 20
        for round in 0..<rounds {
            let out = dir.path + "-acks-\(round)"
            FileManager.default.createFile(atPath: out, contents: nil)
            defer { try? FileManager.default.removeItem(atPath: out) }
            let child = Process()
            child.executableURL = Self.childURL
            child.arguments = [dir.path, String(Int64(round) * 10_000_000), "4", "65536"]
            child.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
            try child.run()
            usleep(UInt32(80_000 + rng.next() % 300_000))
            kill(child.processIdentifier, SIGKILL)
            child.waitUntilExit()
            #expect(child.terminationReason == .uncaughtSignal, "child exited by itself in round \(round): status \(child.terminationStatus)")
            let text = String(decoding: SegmentFiles.readWholeFile(out) ?? [], as: UTF8.self)
            for line in text.split(separator: "\n") {
                let f = line.split(separator: " ")
                // A line cut by the kill is not an acknowledgement anyone saw whole.
                guard f.count == 5, f[0] == "ack", let p = Int(f[1]), let base = Int64(f[2]), let count = Int(f[3]) else { continue }
                let seqs = f[4].split(separator: ",").compactMap { Int64($0) }
                guard seqs.count == count else { continue }
                acks.append(Ack(partition: p, base: base, count: count, seqs: seqs))
            }
        }
        #expect(acks.count > rounds, "the child acknowledged too little to test anything")

        let log = try Log.open(dataDirectory: dir.path, configuration: LogConfiguration(limits: { var l = Limits(); l.partitions = 4; l.segmentBytes = 65536; return l }()))
        defer { try? log.close() }
        var seen = Set<Int64>()
        var byOffset: [Int: [Int64: Int64]] = [:]  // partition -> offset -> seq
        for p in 0..<4 {
            var last = Int64.min
            var expectedOffset: Int64 = 0
            for (offset, r) in try readAll(log.reader(partition: p, from: 0)) {
                #expect(offset == expectedOffset)
                expectedOffset += 1
                let seq = r.timestamp - 1_700_000_000_000_000_000
                #expect(r.isIdentical(to: Self.reading(seq)), "record at \(p)/\(offset) is not one the child wrote")
                #expect(seq > last, "out of order at \(p)/\(offset)")
                #expect(seen.insert(seq).inserted, "seq \(seq) stored twice")
                last = seq
                byOffset[p, default: [:]][offset] = seq
            }
        }
        for ack in acks {
            for (i, seq) in ack.seqs.enumerated() {
                #expect(byOffset[ack.partition]?[ack.base + Int64(i)] == seq, "acknowledged seq \(seq) missing at \(ack.partition)/\(ack.base + Int64(i))")
            }
        }
    }
}
