import Crypto
import Foundation
import Logging
import NIOCore

/// The public keys line-protocol producers authenticate with, in the form of QuestDB's
/// `auth.db`: one `KEY_ID ec-p-256-sha256 X Y` a line, X and Y the P-256 point's coordinates in
/// unpadded base64url (a JWK's `x` and `y`); `#` starts a comment. The producer keeps the private
/// key; the server holds nothing secret.
public struct LineProtocolKeys: Sendable {
    let keys: [String: P256.Signing.PublicKey]

    public var count: Int { keys.count }

    /// - Throws: `LineProtocolKeysError` naming the first bad line.
    public init(text: String) throws(LineProtocolKeysError) {
        var keys: [String: P256.Signing.PublicKey] = [:]
        for (n, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            let fields = line.split(whereSeparator: \.isWhitespace).map(String.init)
            if fields.isEmpty { continue }
            guard fields.count == 4, fields[1] == "ec-p-256-sha256" else {
                throw LineProtocolKeysError("line \(n + 1): expected KEY_ID ec-p-256-sha256 X Y")
            }
            guard let x = Self.base64URL(fields[2]), let y = Self.base64URL(fields[3]), x.count <= 32, y.count <= 32,
                  let key = try? P256.Signing.PublicKey(x963Representation: [4] + Self.padded(x) + Self.padded(y))
            else {
                throw LineProtocolKeysError("line \(n + 1): X and Y are not a P-256 point in base64url")
            }
            guard keys.updateValue(key, forKey: fields[0]) == nil else { throw LineProtocolKeysError("line \(n + 1): key id \(fields[0]) twice") }
        }
        guard !keys.isEmpty else { throw LineProtocolKeysError("no key") }
        self.keys = keys
    }

    /// Whether `signature` (base64 of a P-256 ECDSA signature over SHA-256, raw r‖s as QuestDB's
    /// clients send it, or DER) signs `challenge` with `keyID`'s key.
    func verify(keyID: String, challenge: [UInt8], signature: String) -> Bool {
        guard let key = keys[keyID], let bytes = Data(base64Encoded: signature) else { return false }
        let parsed = bytes.count == 64
            ? try? P256.Signing.ECDSASignature(rawRepresentation: bytes)
            : try? P256.Signing.ECDSASignature(derRepresentation: bytes)
        guard let parsed else { return false }
        return key.isValidSignature(parsed, for: challenge)
    }

    func knows(_ keyID: String) -> Bool { keys[keyID] != nil }

    static func base64URL(_ text: String) -> [UInt8]? {
        var s = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while s.count % 4 != 0 { s += "=" }
        return Data(base64Encoded: s).map(Array.init)
    }

    static func padded(_ coordinate: [UInt8]) -> [UInt8] {
        [UInt8](repeating: 0, count: 32 - coordinate.count) + coordinate
    }
}

/// A keys file that does not parse.
public struct LineProtocolKeysError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// QuestDB's challenge-response over TCP, ahead of the line protocol: the producer sends its key
/// id and a newline; the server answers a random challenge and a newline; the producer sends the
/// base64 signature of the challenge and a newline, then lines. Anything else closes the
/// connection before a single line is parsed. Removes itself once the producer is in.
final class LineProtocolAuthHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// Longest key id or signature line: a DER signature in base64 is under 100 bytes.
    static let maxLineBytes = 512

    private enum State {
        case keyID
        case signature(keyID: String, challenge: [UInt8])
        case done
    }

    let keys: LineProtocolKeys
    let timeout: TimeAmount
    /// Logs a refusal, rate-limited with the other rejections (a connect-and-garbage loop must
    /// not flood the log).
    let logRefusal: (String, Logger.Metadata) -> Void
    private var deadline: Scheduled<Void>?
    private var state = State.keyID
    private var buffered: ByteBuffer?
    private var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    init(keys: LineProtocolKeys, timeout: TimeAmount, logRefusal: @escaping (String, Logger.Metadata) -> Void) {
        self.keys = keys
        self.timeout = timeout
        self.logRefusal = logRefusal
    }

    /// The handshake has a deadline of its own: the idle timeout restarts on every byte, so a
    /// peer dribbling a byte at a time would otherwise hold a connection slot for hours.
    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            if !handler.isDone { handler.refuse("no authentication within \(handler.timeout.nanoseconds / 1_000_000) ms", context: context) }
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var buffered = self.buffered {
            buffered.writeBuffer(&incoming)
            incoming = buffered
        }
        self.buffered = nil
        while !isDone, let newline = incoming.readableBytesView.firstIndex(of: UInt8(ascii: "\n")) {
            let line = incoming.readString(length: newline - incoming.readerIndex) ?? ""
            incoming.moveReaderIndex(forwardBy: 1)
            guard step(line, context: context) else { return }
        }
        if isDone {
            // What followed the signature in the same read is the first line-protocol data.
            if incoming.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(incoming)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } else if incoming.readableBytes > Self.maxLineBytes {
            refuse("authentication line longer than \(Self.maxLineBytes) bytes", context: context)
        } else {
            buffered = incoming
        }
    }

    /// Handles one handshake line; false when the connection was refused.
    private func step(_ line: String, context: ChannelHandlerContext) -> Bool {
        switch state {
        case .keyID:
            let keyID = line.trimmingCharacters(in: .whitespacesAndNewlines)
            guard keys.knows(keyID) else {
                refuse("unknown key id", keyID: keyID, context: context)
                return false
            }
            var random = SystemRandomNumberGenerator()
            let challenge = Array(Data((0..<48).map { _ in UInt8.random(in: .min ... .max, using: &random) }).base64EncodedString().utf8)
            var out = context.channel.allocator.buffer(capacity: challenge.count + 1)
            out.writeBytes(challenge)
            out.writeInteger(UInt8(ascii: "\n"))
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            state = .signature(keyID: keyID, challenge: challenge)
        case .signature(let keyID, let challenge):
            guard keys.verify(keyID: keyID, challenge: challenge, signature: line.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                refuse("signature does not verify", keyID: keyID, context: context)
                return false
            }
            state = .done
        case .done:
            break
        }
        return true
    }

    private func refuse(_ why: String, keyID: String? = nil, context: ChannelHandlerContext) {
        var metadata: Logger.Metadata = ["reason": "\(why)"]
        if let keyID { metadata["key_id"] = "\(keyID.prefix(64))" }
        logRefusal("line protocol connection refused: authentication failed", metadata)
        buffered = nil
        context.close(promise: nil)
    }
}
