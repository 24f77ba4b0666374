public import NIOCore

/// The MQTT 3.1.1 packets a subscriber exchanges with its broker (OASIS MQTT 3.1.1, section 3):
/// what sensorlog sends (CONNECT, SUBSCRIBE, PUBACK, PINGREQ, DISCONNECT) and what it reads
/// (CONNACK, SUBACK, PUBLISH, PINGRESP). No QoS 2: the subscription asks for QoS 1 at most, so
/// the broker never sends it.
public enum MQTTPacket: Equatable, Sendable {
    public struct Connect: Equatable, Sendable {
        public var clientID: String
        /// false: a persistent session, so the broker keeps the subscription and the QoS 1
        /// messages not yet acknowledged while sensorlogd is away.
        public var cleanSession: Bool
        public var keepAliveSeconds: UInt16
        public var username: String?
        public var password: String?

        public init(clientID: String, cleanSession: Bool, keepAliveSeconds: UInt16, username: String? = nil, password: String? = nil) {
            self.clientID = clientID
            self.cleanSession = cleanSession
            self.keepAliveSeconds = keepAliveSeconds
            self.username = username
            self.password = password
        }
    }

    public struct Publish: Equatable, Sendable {
        public var topic: String
        public var qos: UInt8
        public var duplicate: Bool
        public var packetID: UInt16?
        public var payload: ByteBuffer

        public init(topic: String, qos: UInt8, duplicate: Bool = false, packetID: UInt16?, payload: ByteBuffer) {
            self.topic = topic
            self.qos = qos
            self.duplicate = duplicate
            self.packetID = packetID
            self.payload = payload
        }
    }

    case connect(Connect)
    /// `sessionPresent`: the broker still had our session; `returnCode` 0 is accepted.
    case connAck(sessionPresent: Bool, returnCode: UInt8)
    case subscribe(packetID: UInt16, filters: [(String, UInt8)])
    /// One return code per filter: the QoS granted, or 0x80 for a refusal.
    case subAck(packetID: UInt16, returnCodes: [UInt8])
    case publish(Publish)
    /// A PUBLISH too large to take (`MQTTDecoder.maxPacketBytes`): skipped unread, but still
    /// acknowledged, or the broker would send it again for ever.
    case oversizedPublish(qos: UInt8, packetID: UInt16?, bytes: Int)
    case pubAck(packetID: UInt16)
    case pingReq
    case pingResp
    case disconnect

    public static func == (a: MQTTPacket, b: MQTTPacket) -> Bool {
        switch (a, b) {
        case (.connect(let x), .connect(let y)): x == y
        case (.connAck(let x1, let x2), .connAck(let y1, let y2)): x1 == y1 && x2 == y2
        case (.subscribe(let x1, let x2), .subscribe(let y1, let y2)): x1 == y1 && x2.elementsEqual(y2, by: ==)
        case (.subAck(let x1, let x2), .subAck(let y1, let y2)): x1 == y1 && x2 == y2
        case (.publish(let x), .publish(let y)): x == y
        case (.oversizedPublish(let x1, let x2, let x3), .oversizedPublish(let y1, let y2, let y3)): x1 == y1 && x2 == y2 && x3 == y3
        case (.pubAck(let x), .pubAck(let y)): x == y
        case (.pingReq, .pingReq), (.pingResp, .pingResp), (.disconnect, .disconnect): true
        default: false
        }
    }
}

/// A broker broke the protocol: the connection is closed and opened again.
public struct MQTTProtocolError: Error, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

extension MQTTPacket {
    /// Writes the packet: fixed header, remaining length, variable header and payload.
    public func write(to out: inout ByteBuffer) {
        var body = ByteBufferAllocator().buffer(capacity: 64)
        let first: UInt8
        switch self {
        case .connect(let c):
            first = 0x10
            body.writeMQTTString("MQTT")
            body.writeInteger(UInt8(4))  // protocol level 3.1.1
            var flags: UInt8 = c.cleanSession ? 0x02 : 0
            if c.username != nil { flags |= 0x80 }
            if c.password != nil { flags |= 0x40 }
            body.writeInteger(flags)
            body.writeInteger(c.keepAliveSeconds)
            body.writeMQTTString(c.clientID)
            if let u = c.username { body.writeMQTTString(u) }
            if let p = c.password { body.writeMQTTString(p) }
        case .connAck(let present, let code):
            first = 0x20
            body.writeInteger(UInt8(present ? 1 : 0))
            body.writeInteger(code)
        case .subscribe(let id, let filters):
            first = 0x82
            body.writeInteger(id)
            for (filter, qos) in filters {
                body.writeMQTTString(filter)
                body.writeInteger(qos)
            }
        case .subAck(let id, let codes):
            first = 0x90
            body.writeInteger(id)
            body.writeBytes(codes)
        case .publish(let p):
            first = 0x30 | (p.duplicate ? 0x08 : 0) | (p.qos << 1)
            body.writeMQTTString(p.topic)
            if let id = p.packetID { body.writeInteger(id) }
            body.writeImmutableBuffer(p.payload)
        case .oversizedPublish:
            preconditionFailure("an oversized publish is never written")
        case .pubAck(let id):
            first = 0x40
            body.writeInteger(id)
        case .pingReq: first = 0xC0
        case .pingResp: first = 0xD0
        case .disconnect: first = 0xE0
        }
        out.writeInteger(first)
        var length = body.readableBytes
        repeat {
            var byte = UInt8(length & 0x7F)
            length >>= 7
            if length > 0 { byte |= 0x80 }
            out.writeInteger(byte)
        } while length > 0
        out.writeBuffer(&body)
    }
}

extension ByteBuffer {
    mutating func writeMQTTString(_ s: String) {
        writeInteger(UInt16(s.utf8.count))
        writeString(s)
    }

    mutating func readMQTTString() throws(MQTTProtocolError) -> String {
        guard let length = readInteger(as: UInt16.self), let bytes = readSlice(length: Int(length)) else {
            throw MQTTProtocolError("string runs past its packet")
        }
        // Refused, not repaired (MQTT 3.1.1, 1.5.3: ill-formed UTF-8 closes the connection): a
        // repaired topic would hand the topic template other text than the broker's.
        guard let s = String(validating: bytes.readableBytesView, as: UTF8.self) else {
            throw MQTTProtocolError("a string is not valid UTF-8")
        }
        return s
    }
}

/// Splits the broker's bytes into packets. A PUBLISH larger than `maxPacketBytes` is skipped as
/// it streams past (never buffered) and reported as `.oversizedPublish`.
public struct MQTTDecoder: ByteToMessageDecoder {
    public typealias InboundOut = MQTTPacket
    public let maxPacketBytes: Int
    /// Bytes of an oversized packet still to skip.
    private var skipping = 0

    public init(maxPacketBytes: Int) { self.maxPacketBytes = maxPacketBytes }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let packet = try next(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(packet))
        return .continue
    }

    /// The next packet in `buffer`, or nil when it holds too little yet.
    public mutating func next(_ buffer: inout ByteBuffer) throws(MQTTProtocolError) -> MQTTPacket? {
        while skipping > 0 {
            let n = min(skipping, buffer.readableBytes)
            guard n > 0 else { return nil }
            buffer.moveReaderIndex(forwardBy: n)
            skipping -= n
        }
        let start = buffer.readerIndex
        guard let first = buffer.readInteger(as: UInt8.self) else { return nil }
        var length = 0
        var shift = 0
        while true {
            guard let byte = buffer.readInteger(as: UInt8.self) else {
                buffer.moveReaderIndex(to: start)
                return nil
            }
            length |= Int(byte & 0x7F) << shift
            if byte & 0x80 == 0 { break }
            shift += 7
            guard shift < 28 else { throw MQTTProtocolError("remaining length longer than four bytes") }
        }
        if first >> 4 == 3 && length > maxPacketBytes {
            // Read the header to acknowledge it, then skip the rest as it arrives.
            guard let header = oversizedHeader(first, &buffer) else {
                buffer.moveReaderIndex(to: start)
                return nil
            }
            let consumed = buffer.readerIndex - header.bodyStart
            guard consumed <= length else { throw MQTTProtocolError("PUBLISH header longer than its packet") }
            skipping = length - consumed
            let n = min(skipping, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skipping -= n
            return .oversizedPublish(qos: header.qos, packetID: header.packetID, bytes: length)
        }
        guard length <= maxPacketBytes + 64, var body = buffer.readSlice(length: length) else {
            if length > maxPacketBytes + 64 { throw MQTTProtocolError("a \(first >> 4) packet of \(length) bytes") }
            buffer.moveReaderIndex(to: start)
            return nil
        }
        return try Self.parse(first, &body)
    }

    /// A PUBLISH's topic and packet id, read from the start of its body.
    private func oversizedHeader(_ first: UInt8, _ buffer: inout ByteBuffer) -> (qos: UInt8, packetID: UInt16?, bodyStart: Int)? {
        let bodyStart = buffer.readerIndex
        let qos = (first >> 1) & 3
        guard let topicLength = buffer.readInteger(as: UInt16.self), buffer.readableBytes >= Int(topicLength) + (qos > 0 ? 2 : 0) else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: Int(topicLength))
        let id = qos > 0 ? buffer.readInteger(as: UInt16.self) : nil
        return (qos, id, bodyStart)
    }

    static func parse(_ first: UInt8, _ body: inout ByteBuffer) throws(MQTTProtocolError) -> MQTTPacket {
        switch first >> 4 {
        case 2:
            guard let flags = body.readInteger(as: UInt8.self), let code = body.readInteger(as: UInt8.self) else { throw MQTTProtocolError("short CONNACK") }
            return .connAck(sessionPresent: flags & 1 == 1, returnCode: code)
        case 3:
            let qos = (first >> 1) & 3
            guard qos < 3 else { throw MQTTProtocolError("PUBLISH with QoS 3") }
            let topic = try body.readMQTTString()
            var id: UInt16?
            if qos > 0 {
                guard let packetID = body.readInteger(as: UInt16.self) else { throw MQTTProtocolError("PUBLISH without its packet id") }
                id = packetID
            }
            return .publish(.init(topic: topic, qos: qos, duplicate: first & 0x08 != 0, packetID: id, payload: body))
        case 4:
            guard let id = body.readInteger(as: UInt16.self) else { throw MQTTProtocolError("short PUBACK") }
            return .pubAck(packetID: id)
        case 9:
            guard let id = body.readInteger(as: UInt16.self) else { throw MQTTProtocolError("short SUBACK") }
            return .subAck(packetID: id, returnCodes: body.readBytes(length: body.readableBytes) ?? [])
        case 13:
            return .pingResp
        case 1:
            let name = try body.readMQTTString()
            guard name == "MQTT", body.readInteger(as: UInt8.self) == 4, let flags = body.readInteger(as: UInt8.self),
                  let keepAlive = body.readInteger(as: UInt16.self) else { throw MQTTProtocolError("not an MQTT 3.1.1 CONNECT") }
            let id = try body.readMQTTString()
            let user = flags & 0x80 != 0 ? try body.readMQTTString() : nil
            let password = flags & 0x40 != 0 ? try body.readMQTTString() : nil
            return .connect(.init(clientID: id, cleanSession: flags & 2 != 0, keepAliveSeconds: keepAlive, username: user, password: password))
        case 8:
            guard let id = body.readInteger(as: UInt16.self) else { throw MQTTProtocolError("short SUBSCRIBE") }
            var filters: [(String, UInt8)] = []
            while body.readableBytes > 0 {
                let filter = try body.readMQTTString()
                guard let qos = body.readInteger(as: UInt8.self) else { throw MQTTProtocolError("SUBSCRIBE filter without QoS") }
                filters.append((filter, qos))
            }
            return .subscribe(packetID: id, filters: filters)
        case 12: return .pingReq
        case 14: return .disconnect
        default:
            throw MQTTProtocolError("unexpected packet type \(first >> 4)")
        }
    }
}

/// Writes packets to the channel.
public struct MQTTEncoder: MessageToByteEncoder {
    public typealias OutboundIn = MQTTPacket
    public init() {}
    public func encode(data: MQTTPacket, out: inout ByteBuffer) throws {
        data.write(to: &out)
    }
}
