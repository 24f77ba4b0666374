import MQTT
import NIOCore
import PropertyBased
import Testing

import TestSupport

@Suite struct MQTTCodecTests {
    func decodeAll(_ buffer: ByteBuffer, max: Int = 1 << 20, chunk: Int) throws -> [MQTTPacket] {
        var decoder = MQTTDecoder(maxPacketBytes: max)
        var input = buffer
        var pending = ByteBufferAllocator().buffer(capacity: 0)
        var out: [MQTTPacket] = []
        while input.readableBytes > 0 {
            var piece = input.readSlice(length: min(chunk, input.readableBytes))!
            pending.writeBuffer(&piece)
            while let packet = try decoder.next(&pending) { out.append(packet) }
            pending.discardReadBytes()
        }
        return out
    }

    static let packets: [MQTTPacket] = [
        .connect(.init(clientID: "sensorlogd", cleanSession: false, keepAliveSeconds: 30, username: "u", password: "p")),
        .connAck(sessionPresent: true, returnCode: 0),
        .subscribe(packetID: 1, filters: [("sensors/#", 1), ("a/+/b", 1)]),
        .subAck(packetID: 1, returnCodes: [1, 0x80]),
        .publish(.init(topic: "sensors/lab/s1", qos: 1, duplicate: true, packetID: 7, payload: ByteBuffer(string: "temperature value=1 1"))),
        .publish(.init(topic: "t", qos: 0, packetID: nil, payload: ByteBuffer(repeating: 0x41, count: 300))),
        .pubAck(packetID: 65535),
        .pingReq, .pingResp, .disconnect,
    ]

    /// What is written reads back equal, however the bytes are split.
    @Test func everyPacketRoundTripsAcrossAnySplit() throws {
        var all = ByteBufferAllocator().buffer(capacity: 0)
        for p in Self.packets { p.write(to: &all) }
        for chunk in [1, 2, 3, 7, 64, 4096] {
            #expect(try decodeAll(all, chunk: chunk) == Self.packets, "chunk \(chunk)")
        }
    }

    /// A message over the bound is skipped as it streams past and still named, so it can be
    /// acknowledged; what follows it decodes.
    @Test func anOversizedPublishIsSkippedAndReported() throws {
        var all = ByteBufferAllocator().buffer(capacity: 0)
        MQTTPacket.publish(.init(topic: "big", qos: 1, packetID: 9, payload: ByteBuffer(repeating: 0x42, count: 5000))).write(to: &all)
        MQTTPacket.pubAck(packetID: 3).write(to: &all)
        for chunk in [1, 100, 10_000] {
            let out = try decodeAll(all, max: 1024, chunk: chunk)
            #expect(out == [.oversizedPublish(qos: 1, packetID: 9, bytes: 5000 + 2 + 3 + 2), .pubAck(packetID: 3)], "chunk \(chunk)")
        }
    }

    @Test func randomBytesNeverCrash() async {
        let seed = testSeed()
        var rng = SplitMix64(seed: seed)
        for _ in 0..<2000 {
            var buffer = ByteBufferAllocator().buffer(capacity: 64)
            for _ in 0..<Int.random(in: 0..<64, using: &rng) { buffer.writeInteger(UInt8.random(in: 0...255, using: &rng)) }
            var decoder = MQTTDecoder(maxPacketBytes: 256)
            while true {
                guard let packet = try? decoder.next(&buffer) else { break }
                _ = packet
            }
        }
    }
}

@Suite struct TopicTemplateTests {
    @Test func fieldsComeFromTheirLevels() throws {
        let t = try TopicTemplate("sensors/{location}/{sensor_id}")
        #expect(t.fields(of: "sensors/lab/s-1") == [.location: "lab", .sensorID: "s-1"])
        #expect(t.fields(of: "sensors/lab") == nil)
        #expect(t.fields(of: "sensors/lab/s-1/extra") == nil)
        #expect(t.fields(of: "other/lab/s-1") == nil)
        #expect(t.fields(of: "sensors//s-1") == nil)
        let wild = try TopicTemplate("+/{type}/{sensor_id}/#")
        #expect(wild.fields(of: "site-9/humidity/h-1/raw/v2") == [.type: "humidity", .sensorID: "h-1"])
        #expect(throws: TopicTemplate.Invalid.self) { try TopicTemplate("a/#/b") }
        #expect(throws: TopicTemplate.Invalid.self) { try TopicTemplate("a/{serial}") }
        #expect(throws: TopicTemplate.Invalid.self) { try TopicTemplate("a/x{sensor_id}") }
    }

    @Test func brokerURLs() throws {
        #expect(try MQTTConfiguration.parseURL("mqtt://broker") == ("broker", 1883, false))
        #expect(try MQTTConfiguration.parseURL("mqtt://10.0.0.2:1884") == ("10.0.0.2", 1884, false))
        #expect(try MQTTConfiguration.parseURL("mqtts://broker") == ("broker", 8883, true))
        #expect(try MQTTConfiguration.parseURL("mqtts://[::1]") == ("::1", 8883, true))
        #expect(throws: TopicTemplate.Invalid.self) { try MQTTConfiguration.parseURL("tcp://broker") }
        #expect(throws: TopicTemplate.Invalid.self) { try MQTTConfiguration.parseURL("mqtt://broker:99999") }
    }
}
