import CDeflate
import Dispatch
public import FuzzTargets
import Ingest
import LineProtocol
import LogStore
import NIOCore
import SensorLogCore
import Synchronization

import HTTPAPI
import MQTT

/// The parsers of outside bytes that live in the networking modules: the MQTT packet decoder
/// and payloads, and the HTTP line-protocol body with gzip. A separate product
/// (`sensorlog-fuzz-net`) because its instrumented build rebuilds NIO, NIOSSL, Hummingbird and
/// swift-crypto (docs/testing.md, "Fuzzing").
public enum NetTargets {
    public static let all: [FuzzTarget] = FuzzTarget.core + [
        FuzzTarget("mqtt-packet", "MQTTDecoder: the same packets however the bytes arrive; packets it decodes write back and decode equal",
                   run: mqttPacket),
        FuzzTarget("mqtt-payload", "MQTT payloads (line protocol or JSON, topic defaults): every reading valid and in its partition, each line or item counted once",
                   run: mqttPayload),
        FuzzTarget("lp-body", "HTTP line-protocol body with gzip: inflation bounded by the limit; gzip of a body inflates to it; body parse as LineBody",
                   run: lineBody),
    ]

    /// Small, so that the oversized path is reached.
    static let maxPacketBytes = 200

    /// All the packets in `bytes` fed in pieces of the given sizes (0 = whole), until an error.
    static func decodeAll(_ bytes: [UInt8], pieces: [Int]) -> (packets: [MQTTPacket], failed: Bool) {
        var decoder = MQTTDecoder(maxPacketBytes: maxPacketBytes)
        var buffer = ByteBuffer()
        var packets: [MQTTPacket] = []
        var at = 0
        var k = 0
        while at < bytes.count {
            let size = pieces.isEmpty ? bytes.count : max(1, pieces[k % pieces.count])
            k += 1
            buffer.writeBytes(bytes[at..<min(bytes.count, at + size)])
            at += size
            do {
                while let packet = try decoder.next(&buffer) { packets.append(packet) }
            } catch {
                return (packets, true)
            }
            buffer.discardReadBytes()
        }
        return (packets, false)
    }

    /// The broker's bytes, whole, a byte at a time and in pieces the first byte chooses: the same
    /// packets and the same error. Every packet but an oversized PUBLISH writes back to bytes that
    /// decode to it.
    @Sendable static func mqttPacket(_ input: UnsafeRawBufferPointer) {
        guard let seed = input.first else { return }
        let bytes = Array(input.dropFirst())
        let whole = decodeAll(bytes, pieces: [])
        let bytewise = decodeAll(bytes, pieces: [1])
        let pieces = decodeAll(bytes, pieces: [1 + Int(seed & 7), 1 + Int(seed >> 3)])
        for other in [bytewise, pieces] {
            check(other.failed == whole.failed && other.packets == whole.packets, "MQTT packets differ with the bytes cut otherwise")
        }
        for packet in whole.packets {
            if case .oversizedPublish(_, _, let n) = packet {
                check(n > maxPacketBytes, "an oversized PUBLISH of \(n) bytes")
                continue
            }
            if case .publish(let p) = packet { check(p.qos < 3 && (p.qos == 0) == (p.packetID == nil), "PUBLISH QoS and packet id disagree") }
            var out = ByteBuffer()
            packet.write(to: &out)
            let again = decodeAll(Array(out.readableBytesView), pieces: [])
            check(!again.failed && again.packets == [packet], "\(packet) writes back to bytes that decode to \(again)")
        }
    }

    /// A four-partition log in /dev/shm and its ingest pipeline, made once, by one task that every
    /// caller awaits: `preparePipeline()` where the first user is async (a test on the cooperative
    /// pool must not block a thread waiting for a task), else here, from the libFuzzer thread.
    static let pipeline: IngestPipeline = {
        if let ready = prepared.withLock({ $0 }) { return ready }
        precondition(withUnsafeCurrentTask { $0 == nil }, "await NetTargets.preparePipeline() before an async caller runs a target")
        let done = DispatchSemaphore(value: 0)
        Task {
            await preparePipeline()
            done.signal()
        }
        done.wait()
        return prepared.withLock { $0 }!
    }()
    private static let prepared = Mutex<IngestPipeline?>(nil)
    private static let opening = Mutex<Task<IngestPipeline, Never>?>(nil)

    /// Opens the pipeline's log, once however many callers ask at once.
    public static func preparePipeline() async {
        let task = opening.withLock { (task: inout Task<IngestPipeline, Never>?) -> Task<IngestPipeline, Never> in
            if let task { return task }
            let made = Task { await openPipeline() }
            task = made
            return made
        }
        let pipeline = await task.value
        prepared.withLock { $0 = pipeline }
    }

    private static func openPipeline() async -> IngestPipeline {
        var limits = Limits()
        limits.partitions = 4
        let directory = Scratch.fresh("pipeline")
        do {
            let log = try Log.open(dataDirectory: directory, configuration: LogConfiguration(limits: limits, fsync: .never, time: FixedTime()))
            return try await IngestPipeline(log: log, validator: ReadingValidator(), metrics: IngestMetrics())
        } catch {
            fatalError("cannot open the fuzz pipeline: \(error)")
        }
    }

    struct FixedTime: TimeSource {
        var wallNanoseconds: Int64 { 1_700_000_000_000_000_000 }
        var monotonicNanoseconds: Int64 { 0 }
    }

    static let template = try! TopicTemplate("sensors/{location}/{sensor_id}/{type}")
    static let parser = LineParser(validator: ReadingValidator())

    /// A topic (up to the first NUL) and a payload (the rest). Every reading kept is valid and in
    /// the partition its id hashes to; each line or JSON item is either kept or refused, once.
    @Sendable static func mqttPayload(_ input: UnsafeRawBufferPointer) {
        let split = input.firstIndex(of: 0) ?? 0
        let topic = String(decoding: UnsafeRawBufferPointer(rebasing: input[0..<split]), as: UTF8.self)
        let payloadBytes = UnsafeRawBufferPointer(rebasing: input[min(input.count, split + 1)...])
        var payload = ByteBuffer()
        payload.writeBytes(payloadBytes)
        let fields = template.fields(of: topic) ?? [:]
        let body = MQTTPayload.decode(payload, fields: fields, parser: parser, limits: Limits(), pipeline: pipeline)
        checkBody(body, partitions: pipeline.log.partitions.count)
    }

    static func checkBody(_ body: LineBody, partitions: Int) {
        var kept = 0
        for (p, group) in body.groups.enumerated() {
            check(group.count == body.lines[p].count, "readings and their line numbers disagree")
            for r in group {
                do { try parser.validator.validate(r) } catch { check(false, "a kept reading fails validation: \(error)") }
                check(PartitionHash.partition(of: r.sensorID, partitions: partitions) == p, "a reading in another partition than its id's")
            }
            kept += group.count
        }
        check(kept == body.readingCount, "readingCount \(body.readingCount), kept \(kept)")
        if body.refusedCount > 0 { check(body.firstRefusal != nil, "refusals without a first one") }
    }

    static let limit = 4096

    /// libdeflate's gzip of `bytes`.
    static func gzip(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let compressor = libdeflate_alloc_compressor(1)!
        defer { libdeflate_free_compressor(compressor) }
        var out = [UInt8](repeating: 0, count: libdeflate_gzip_compress_bound(compressor, bytes.count))
        let n = out.withUnsafeMutableBytes { libdeflate_gzip_compress(compressor, bytes.baseAddress, bytes.count, $0.baseAddress, $0.count) }
        return Array(out.prefix(n))
    }

    /// The first byte chooses. Even: the rest is a gzip body as a client sends it: inflation
    /// never gives more than the limit, and what it gives parses as a body. Odd: the rest is the
    /// plain body: its gzip inflates back to it (or is refused too large exactly when it is
    /// over the limit), and the body parses the same either way.
    @Sendable static func lineBody(_ input: UnsafeRawBufferPointer) {
        guard let mode = input.first else { return }
        let rest = UnsafeRawBufferPointer(rebasing: input.dropFirst())
        var plain: [UInt8]?
        if mode & 1 == 0 {
            var raw = ByteBuffer()
            raw.writeBytes(rest)
            if let out = try? Gzip.inflate(raw, limit: limit) {
                check(out.readableBytes <= limit, "inflated \(out.readableBytes) bytes, over the \(limit)-byte limit")
                plain = Array(out.readableBytesView)
            }
        } else {
            var raw = ByteBuffer()
            raw.writeBytes(gzip(rest))
            switch Result(catching: { () throws(Gzip.Failure) in try Gzip.inflate(raw, limit: limit) }) {
            case .success(let out):
                check(rest.count <= limit && Array(out.readableBytesView) == Array(rest), "gzip of a body inflates to other bytes")
            case .failure(.tooLarge):
                check(rest.count > limit, "a body of \(rest.count) bytes refused as over the \(limit)-byte limit")
            case .failure(.corrupt(let why)):
                check(false, "libdeflate's gzip refused as corrupt: \(why)")
            }
            plain = Array(rest)
        }
        guard let plain else { return }
        let body = plain.withUnsafeBytes {
            LineBody.parse($0, parser: parser, precision: .milliseconds, maxLineBytes: 1024, pipeline: pipeline)
        }
        checkBody(body, partitions: pipeline.log.partitions.count)
        let lines = plain.split(separator: 0x0A, omittingEmptySubsequences: false).count
        check(body.readingCount + body.refusedCount <= lines, "more verdicts than lines")
    }

    /// The core seeds, and those of these targets: packets as a broker sends them, payloads as
    /// the MQTT tests publish them, write bodies as the HTTP tests post them.
    public static func writeSeeds(to root: String) throws {
        try FuzzSeeds.write(to: root)
        func put(_ target: String, _ name: String, _ bytes: [UInt8]) { Scratch.write(bytes, to: root + "/" + target + "/seed-" + name) }
        let lines = ["temperature,sensor_id=s1,location=lab value=21.5 1700000000000",
                     "sensors,sensor_id=s2,location=roof humidity=55i", "", "# comment", "bad line"]
        var payload = ByteBuffer()
        payload.writeString(lines[0])
        let packets: [MQTTPacket] = [
            .connAck(sessionPresent: true, returnCode: 0), .subAck(packetID: 1, returnCodes: [1, 0x80]),
            .publish(.init(topic: "sensors/lab/s1/temperature", qos: 1, packetID: 7, payload: payload)),
            .publish(.init(topic: "t", qos: 0, packetID: nil, payload: ByteBuffer(repeating: 0x41, count: 300))),
            .pubAck(packetID: 9), .pingResp, .pingReq, .disconnect,
            .connect(.init(clientID: "c", cleanSession: false, keepAliveSeconds: 30, username: "u", password: "p")),
            .subscribe(packetID: 3, filters: [("sensors/#", 1)]),
        ]
        var stream = ByteBuffer()
        for (i, packet) in packets.enumerated() {
            var out = ByteBuffer()
            packet.write(to: &out)
            put("mqtt-packet", "\(i)", [UInt8(i * 37 & 0xFF)] + Array(out.readableBytesView))
            packet.write(to: &stream)
        }
        put("mqtt-packet", "stream", [0x2A] + Array(stream.readableBytesView))
        put("mqtt-payload", "lp", Array("sensors/lab/s1/temperature\0".utf8) + Array(lines.joined(separator: "\n").utf8))
        put("mqtt-payload", "lp-defaults", Array("sensors/lab/s1/temperature\0temperature value=1.5 17".utf8))
        put("mqtt-payload", "json", Array("sensors/hall/h2/humidity\0[{\"value\":50,\"timestamp\":\"2026-11-24T10:00:00Z\"},{\"value\":\"x\"}]".utf8))
        put("mqtt-payload", "empty", Array("t\0  \n".utf8))
        let body = Array((lines + [String(repeating: "x", count: 1100)]).joined(separator: "\n").utf8)
        put("lp-body", "plain", [1] + body)
        put("lp-body", "gzip", [0] + body.withUnsafeBytes(gzip))
        put("lp-body", "gzip-twice", [0] + body.withUnsafeBytes(gzip) + body.withUnsafeBytes(gzip))
        put("lp-body", "bomb", [0] + [UInt8](repeating: 0x41, count: 20_000).withUnsafeBytes(gzip))
    }
}
