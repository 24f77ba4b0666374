import CNATS

/// A NATS or JetStream call that failed: nats.c's status, the JetStream API's error code when the
/// server gave one, and the text nats.c kept for the call.
public struct NATSError: Error, CustomStringConvertible, Sendable {
    public enum Kind: Sendable, Equatable {
        /// A publish's or a key-value update's expected last sequence did not hold: someone else
        /// wrote first. For a partition's owner, this is losing the fence (JetStream 10071).
        case wrongLastSequence
        /// No such message, stream or key (10037, 10059, NATS_NOT_FOUND).
        case notFound
        /// No answer in time: the outcome of a publish is then unknown (indeterminate).
        case timeout
        /// No server answered for the stream: a leader election, or a cluster without quorum.
        case noResponders
        /// Not connected, or the connection closed.
        case connection
        case other
    }

    public private(set) var kind: Kind
    public let status: Int32
    public let apiCode: Int
    public let message: String

    /// No answer, so the call's effect is unknown (a publish may be stored): ask again.
    public var isIndeterminate: Bool { kind == .timeout || kind == .connection || kind == .noResponders }

    public var description: String {
        "\(message) (nats.c \(String(cString: natsStatus_GetText(natsStatus(rawValue: UInt32(bitPattern: status)))))"
            + (apiCode != 0 ? ", JetStream error \(apiCode))" : ")")
    }

    /// The failure of the call that returned `status`. nats.c's last-error text is per thread and
    /// is not cleared by a call that succeeds, so it is taken only here, right after the failure.
    init(_ status: natsStatus, apiCode: jsErrCode = jsErrCode(rawValue: 0), what: String) {
        let code = Int(apiCode.rawValue)
        let text = nats_GetLastError(nil).map { String(cString: $0) } ?? ""
        self.status = Int32(bitPattern: status.rawValue)
        self.apiCode = code
        message = text.isEmpty ? what : what + ": " + text
        kind = Self.kind(status, apiCode: code, text: text)
    }

    /// The failure of a key-value compare-and-set (`kvStore_Create`, `kvStore_Update`). nats.c
    /// reports a lost one only as NATS_ERR, with no API code, and its text is not always kept
    /// (`kvStore_Create` reads the entry again after the refusal): NATS_ERR is a lost race here.
    static func compareAndSet(_ status: natsStatus, what: String) -> NATSError {
        var error = NATSError(status, what: what)
        if status == NATS_ERR { error.kind = .wrongLastSequence }
        return error
    }

    private static func kind(_ status: natsStatus, apiCode: Int, text: String) -> Kind {
        // The status first: nats.c's last-error text can be an older call's. NATS_NO_RESPONDERS
        // arrives with API code 10076 ("JetStream not enabled"), which the status overrides.
        switch status {
        case NATS_NO_RESPONDERS: return .noResponders
        case NATS_TIMEOUT: return .timeout
        case NATS_NOT_FOUND: return .notFound
        case NATS_CONNECTION_CLOSED, NATS_CONNECTION_DISCONNECTED, NATS_NO_SERVER, NATS_STALE_CONNECTION: return .connection
        default: break
        }
        // The key-value calls report a lost compare-and-set only in the text (no API code).
        if apiCode == 10071 || (apiCode == 0 && text.contains("wrong last sequence")) { return .wrongLastSequence }
        return apiCode == 10037 || apiCode == 10059 ? .notFound : .other
    }
}

/// Throws the `NATSError` of a status that is not NATS_OK.
@inline(__always)
func check(_ status: natsStatus, _ what: @autoclosure () -> String, apiCode: jsErrCode = jsErrCode(rawValue: 0)) throws(NATSError) {
    guard status == NATS_OK else { throw NATSError(status, apiCode: apiCode, what: what()) }
}
