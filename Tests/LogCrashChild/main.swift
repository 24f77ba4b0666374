// Child process of the kill -9 tests (LogStoreTests/CrashTests.swift).
//
// usage: LogCrashChild <data-dir> <first-seq> <partitions> <segment-bytes>
//
// Appends readings with sequence numbers from <first-seq> on, fsync=always, from two threads
// (partitions split between them), and prints "ack <partition> <base-offset> <count> <first-seq>"
// after each append returns. It runs until killed.
import Foundation
import LogStore
import SensorLogCore

let arguments = CommandLine.arguments
guard arguments.count == 5, let firstSeq = Int64(arguments[2]), let partitions = Int(arguments[3]),
      let segmentBytes = Int(arguments[4])
else {
    FileHandle.standardError.write(Data("usage: LogCrashChild <data-dir> <first-seq> <partitions> <segment-bytes>\n".utf8))
    exit(64)
}

/// The reading with sequence number `seq`; the tests regenerate it to check what survived.
@Sendable func reading(_ seq: Int64) -> Reading {
    Reading(sensorID: "sensor-\(seq % 97)", type: ["temperature", "humidity", "pressure"][Int(seq % 3)],
            value: Double(seq % 100_000) / 1000, location: "site-\(seq % 7)", timestamp: 1_700_000_000_000_000_000 + seq)
}

var limits = Limits()
limits.partitions = partitions
limits.segmentBytes = segmentBytes
let log: Log
do {
    log = try Log.open(dataDirectory: arguments[1], configuration: LogConfiguration(limits: limits, fsync: .always))
} catch {
    FileHandle.standardError.write(Data("open failed: \(error)\n".utf8))
    exit(1)
}

let output = NSLock()
@Sendable func ack(_ line: String) {
    output.lock()
    defer { output.unlock() }
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
}

let nextSeq = NSLock()
nonisolated(unsafe) var seq = firstSeq
@Sendable func take(_ n: Int64) -> Int64 {
    nextSeq.lock()
    defer { nextSeq.unlock() }
    let first = seq
    seq += n
    return first
}

let threads = 2
for t in 0..<threads {
    Thread {
        var random = SystemRandomNumberGenerator()
        while true {
            // A run of sequence numbers, grouped by partition; this thread appends the groups of
            // its own partitions and re-queues nothing: other partitions' readings are simply skipped.
            let n = Int64.random(in: 1...300, using: &random)
            let first = take(n)
            var groups: [Int: [(Int64, Reading)]] = [:]
            for s in first..<(first + n) {
                let r = reading(s)
                let p = log.partition(for: r.sensorID)
                if p % threads == t { groups[p, default: []].append((s, r)) }
            }
            for (p, group) in groups.sorted(by: { $0.key < $1.key }) {
                do {
                    let result = try log.appendBlocking(group.map(\.1), toPartition: p)
                    ack("ack \(p) \(result.baseOffset) \(result.count) \(group.map { String($0.0) }.joined(separator: ","))")
                } catch {
                    FileHandle.standardError.write(Data("append failed: \(error)\n".utf8))
                    exit(2)
                }
            }
        }
    }.start()
}
while true { sleep(60) }
