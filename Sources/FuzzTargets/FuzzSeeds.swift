import Foundation
import SensorLogCore

import LogStore

/// The seed corpora, `sensorlog-fuzz --seed DIR`: the inputs the tests use (lines, bodies,
/// timestamps) and real files of logs written by this build (batches, segments, indexes,
/// journals, state files), as the targets read them. `Fuzz/corpus/` in the repository started
/// from these and grew by fuzzing (docs/testing.md, "Fuzzing").
public enum FuzzSeeds {
    public static func write(to root: String) throws {
        func put(_ target: String, _ name: String, _ bytes: [UInt8]) {
            Scratch.write(bytes, to: root + "/" + target + "/seed-" + name)
        }
        func text(_ target: String, _ items: [String]) {
            for (i, s) in items.enumerated() { put(target, String(i), Array(s.utf8)) }
        }
        let lines = [
            "temperature,sensor_id=s1,location=lab value=21.5 1700000000000000000",
            "humidity,sensor_id=s2,location=roof value=55i 1700000000000000001",
            "sensors,sensor_id=s1,location=lab temperature=21.5",
            "sensors,host=a,sensor_id=s\\ 1,location=lab\\,b temperature=-0.0,other=\"x \\\" y\" 1700000000000000002",
            "pressure,location=hall,sensor_id=p\\=1 value=1013.25,note=\"ok\" -1",
            "temperature,sensor_id=s1,location=lab value=1e308 9223372036854775807",
            "temperature,sensor_id=s1,location=lab value=3u",
            "temperature,sensor_id=s\\\\1,location=l\\\\ab value=1",
            "  # a comment",
            "",
            "temperature,sensor_id=s1,sensor_id=s2,location=lab value=1",
            "temperature,sensor_id=s1,location=lab value==\u{1}",
            "humidity,sensor_id=h,location=x value=101",
            "temperature,sensor_id=é,location=ü value=1.5e-7 17\r",
        ]
        text("line", lines)
        text("framer", ["\u{3}\u{1}" + lines.joined(separator: "\n") + "\n", "\u{0}\u{0}ab\ncd\n\nlong line\npartial",
                        "\u{10}\u{7}" + String(repeating: "x", count: 300) + "\nshort\n" + String(repeating: "y", count: 40)])
        text("json", [
            #"{"sensor_id":"s-1","type":"temperature","value":21.5,"location":"lab","timestamp":"2026-11-24T10:00:00.123Z"}"#,
            #"[{"sensor_id":"a","type":"humidity","value":50,"location":"x","timestamp":"2026-11-24T10:00:00+02:00"},{"sensor_id":"b","type":"pressure","value":-1e3,"location":"y","timestamp":"2026-11-24 10:00:00z","extra":{"n":[1,2,{"d":null}]}}]"#,
            #"{"sensor_id":"\u00e9\ud83d\ude00\n","type":"temperature","value":1E400,"location":"l","timestamp":1700000000}"#,
            #"[]"#, #"{}"#, #"[{"value":true,"type":null,"sensor_id":["x"]}]"#,
            #" { "sensor_id" : "s" , "value" : -0.0 , "type":"temperature","location":"\/x","timestamp":"1970-01-01T00:00:00Z" } "#,
        ])
        text("query", ["2026-11-24T10:00:00Z", "2026-11-24T10:00:00.123456789+05:30", "1700000000000000000", "-1",
                       "2026-11-24T10:00:00Z|sensor-1", "1677-09-21T00:12:43.145224192Z", "2262-04-11T23:47:16.854775807Z",
                       "my-group.1", "..", "dock%204", "%E9%00", "9223372036854775807", "-9223372036854775808", "100"])

        // Batches as a segment holds them: readings (plain and LZ4), a sparse batch, deletions,
        // removed records. Mode byte 0: as stored; 1: CRC set by the target.
        let encoder = BatchEncoder()
        var batches: [[UInt8]] = []
        for n in [1, 3, 40, 400] {
            let readings = sample(n, seed: UInt64(n))
            batches.append(try readings.withUnsafeBufferPointer { Array(try encoder.encode($0, appendTime: 42, maxBatchBytes: 1 << 30)) })
        }
        let sparse = sample(10, seed: 9)
        batches.append(try sparse.withUnsafeBufferPointer {
            Array(try encoder.encode($0, removed: [RemovedRun(liveBefore: 0, count: 2), RemovedRun(liveBefore: 4, count: 1)], appendTime: 7,
                                     maxBatchBytes: 1 << 30))
        })
        batches.append(Array(try encoder.encodeDeletions(["s1", "s2"], timestamp: 5, appendTime: 6, maxBatchBytes: 1 << 30)))
        batches.append(Array(try encoder.encodeRemoved(count: 1000, appendTime: 6, maxBatchBytes: 1 << 30)))
        for (i, b) in batches.enumerated() {
            put("batch", "\(i)", [0] + b)
            put("batch", "\(i)-fix", [1] + b)
        }

        // Logs written by this build, as file sets.
        for (i, set) in try logs().enumerated() {
            put("recovery", "\(i)", [0] + set.encode())
            put("recovery", "\(i)-fix", [1] + set.encode())
        }
        for (i, set) in try journalLogs().enumerated() {
            put("journal", "\(i)", [0] + set.encode())
            put("journal", "\(i)-fix", [1] + set.encode())
        }
        // Index files of a closed segment with its size and record count.
        for (i, set) in try logs().enumerated() {
            guard let log = set.files[1], let offsets = set.files[2], let times = set.files[3] else { continue }
            let records = UInt32(set.activeBase ?? 1)
            let head = withUnsafeBytes(of: UInt32(log.count).littleEndian, Array.init) + withUnsafeBytes(of: records.littleEndian, Array.init)
            put("index", "\(i)-pair", [0] + head + [UInt8(offsets.count & 0xFF), UInt8(offsets.count >> 8)] + offsets + times)
            if let sensors = set.files[4] { put("index", "\(i)-sensors", [1] + head + sensors) }
        }
        text("groups", [#"{"offsets":[0,5,1000,9223372036854775807]}"#, #"{"offsets":[0,0,0]}"#, #"{"offsets":[1,2,3,-4]}"#,
                        #"{"offsets":[0,0,0,0],"other":1}"#])
        text("retention", [#"{"floors":[null,1700000000000000000,-5,null]}"#, "{\"floors\":[null,null,null,null]}\n", #"{"floors":[1,2]}"#])
        text("meta", [#"{"created_at_ns":1,"format":"sensorlog","format_version":1,"partition_hash":"fnv1a64","partitions":8}"#,
                      #"{"created_at_ns":1,"format":"sensorlog","format_version":1,"partition_hash":"fnv1a64","partitions":0}"#])
    }

    /// `n` readings of a few sensors, types and locations; reproducible from `seed`.
    static func sample(_ n: Int, seed: UInt64) -> [Reading] {
        var state = seed &+ 0x9E37_79B9_7F4A_7C15
        func next() -> UInt64 {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return state >> 11
        }
        let types = ["temperature", "humidity", "pressure"]
        return (0..<n).map { i in
            let s = Int(next() % 16)
            return Reading(sensorID: IndexTarget.sensorIDs[s], type: types[s % 3], value: Double(Int(next() % 10_000)) / 100,
                           location: "loc\(s % 4)", timestamp: 1_700_000_000_000_000_000 + Int64(i) * 1_000_000_000 + Int64(next() % 1000))
        }
    }

    /// Reads a one-partition log's files back as a `FileSet` (the active segment the last one).
    static func fileSet(_ directory: String) -> FileSet {
        let partition = DataLayout(directory).partition(0)
        let bases = ((try? SegmentFiles.list(partition.directory, displayPath: "")) ?? []).sorted()
        var set = FileSet()
        func read(_ path: String) -> [UInt8]? { SegmentFiles.readWholeFile(path) }
        if bases.count >= 2 {
            let closed = partition.segment(bases[0])
            set.files[1] = read(closed.log)
            set.files[2] = read(closed.offsetIndex)
            set.files[3] = read(closed.timeIndex)
            set.files[4] = read(closed.sensorIndex)
        }
        if let last = bases.last {
            set.activeBase = last
            set.files[0] = read(partition.segment(last).log)
        }
        for (kind, journal) in zip([5, 6], DataLayout(directory).journals) {
            // Without the zeros after the last record (the file is preallocated under `always`).
            if let b = read(journal.path), let last = b.lastIndex(where: { $0 != 0 }) { set.files[kind] = Array(b[...last]) }
        }
        return set
    }

    /// Closed logs: one batch; a closed segment (with its `.sensors`) and an active one holding a
    /// deletion; the same with the active tail torn.
    static func logs() throws -> [FileSet] {
        var sets: [FileSet] = []
        let config = RecoveryTarget.configuration(.interval)
        do {
            let dir = Scratch.fresh("seed-a")
            let log = try Log.open(dataDirectory: dir, configuration: config)
            _ = try log.appendBlocking(sample(5, seed: 1), toPartition: 0)
            try log.close()
            sets.append(fileSet(dir))
        }
        do {
            let dir = Scratch.fresh("seed-b")
            let log = try Log.open(dataDirectory: dir, configuration: config)
            for k in 0..<4 { _ = try log.appendBlocking(sample(3 + k * 7, seed: UInt64(10 + k)), toPartition: 0) }
            try log.rollActiveSegments()
            _ = try log.writeSensorIndexes()
            _ = try log.appendBlocking(sample(6, seed: 20), toPartition: 0)
            _ = try log.appendDeletionBlocking("s3", lastReading: 1_700_000_000_000_000_000, toPartition: 0)
            _ = try log.appendBlocking(sample(2, seed: 21), toPartition: 0)
            try log.close()
            let set = fileSet(dir)
            sets.append(set)
            var torn = set
            if let active = torn.files[0], active.count > 20 { torn.files[0] = Array(active.dropLast(17)) }
            sets.append(torn)
        }
        return sets
    }

    /// Logs under `always`, their files copied while open (the journal holds the appends): as
    /// they are, with the active segment missing its last batches, and with it cut mid-batch.
    static func journalLogs() throws -> [FileSet] {
        let dir = Scratch.fresh("seed-j")
        let log = try Log.open(dataDirectory: dir, configuration: RecoveryTarget.configuration(.always))
        var sizes: [Int] = []
        for k in 0..<4 {
            _ = try log.appendBlocking(sample(2 + k * 5, seed: UInt64(30 + k)), toPartition: 0)
            sizes.append(fileSet(dir).files[0]?.count ?? 0)
        }
        let set = fileSet(dir)
        try log.close()
        var sets = [set]
        if sizes.count >= 3 {
            var missing = set
            missing.files[0] = Array((set.files[0] ?? []).prefix(sizes[1]))
            sets.append(missing)
            var cut = set
            cut.files[0] = Array((set.files[0] ?? []).prefix(sizes[2] - 9))
            sets.append(cut)
        }
        return sets
    }
}
