#if canImport(Glibc)
import Glibc
#endif
import CNATS

/// A stream's acknowledgement of a publish.
public struct PublishAck: Sendable, Equatable {
    public var sequence: UInt64
    /// JetStream had seen the message id within its window: the message was not stored again,
    /// and `sequence` is where the first one is. JetStream checks the id before the expected
    /// sequence, so a duplicate is acknowledged even when that expectation no longer holds: the
    /// caller must check what is stored at `sequence` before it trusts the acknowledgement.
    public var duplicate: Bool

    public init(sequence: UInt64, duplicate: Bool) {
        self.sequence = sequence
        self.duplicate = duplicate
    }
}

/// Message headers: what nats.c keeps as the message's header map.
enum Headers {
    static func read(_ message: OpaquePointer) -> [String: String] {
        var keys: UnsafeMutablePointer<UnsafePointer<CChar>?>?
        var count: Int32 = 0
        guard natsMsgHeader_Keys(message, &keys, &count) == NATS_OK, let keys else { return [:] }
        defer { free(keys) }
        var headers: [String: String] = [:]
        for i in 0..<Int(count) {
            guard let key = keys[i] else { continue }
            var value: UnsafePointer<CChar>?
            if natsMsgHeader_Get(message, key, &value) == NATS_OK, let value { headers[String(cString: key)] = String(cString: value) }
        }
        return headers
    }
}

extension NATSConnection {
    /// The header that makes JetStream refuse a publish unless the stream's last sequence is the
    /// given one. Set by hand, not through jsPubOptions, where 0 means "no expectation": a new
    /// owner's first fence on an empty stream must be able to expect 0.
    public static let expectedLastSequenceHeader = "Nats-Expected-Last-Sequence"
    public static let messageIDHeader = "Nats-Msg-Id"

    /// Publishes `data` to `subject` and waits for the stream's acknowledgement (replicated to a
    /// quorum, and synced when the servers run `sync_interval: always`).
    /// - Parameters:
    ///   - messageID: JetStream drops a second message with this id within its duplicate window.
    ///   - expectedLastSequence: refused (`.wrongLastSequence`) unless the stream ends there.
    /// - Throws: `.timeout` and `.connection` leave the outcome unknown: the message may be stored.
    public func publish(_ data: UnsafeRawBufferPointer, subject: String, messageID: String? = nil,
                        expectedLastSequence: UInt64? = nil, headers: [String: String] = [:]) throws(NATSError) -> PublishAck {
        var message: OpaquePointer?
        try check(natsMsg_Create(&message, subject, nil, data.baseAddress?.assumingMemoryBound(to: CChar.self), Int32(data.count)),
                  "cannot make a message for \(subject)")
        defer { natsMsg_Destroy(message) }
        var all = headers
        if let messageID { all[Self.messageIDHeader] = messageID }
        if let expectedLastSequence { all[Self.expectedLastSequenceHeader] = String(expectedLastSequence) }
        for (key, value) in all { try check(natsMsgHeader_Set(message, key, value), "bad header \(key)") }
        var options = jsPubOptions()
        jsPubOptions_Init(&options)
        options.MaxWait = configuration.requestTimeoutMilliseconds
        var ack: UnsafeMutablePointer<jsPubAck>?
        var apiCode = jsErrCode(rawValue: 0)
        try check(js_PublishMsg(&ack, jetStream, message, &options, &apiCode), "publish to \(subject) failed", apiCode: apiCode)
        defer { jsPubAck_Destroy(ack) }
        return PublishAck(sequence: ack!.pointee.Sequence, duplicate: ack!.pointee.Duplicate)
    }
}
