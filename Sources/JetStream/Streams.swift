#if canImport(Glibc)
import Glibc
#endif
import CNATS

/// A stream's state as its leader reports it, with the replicas' view of it.
public struct StreamState: Sendable, Equatable {
    public var messages: UInt64
    public var bytes: UInt64
    public var firstSequence: UInt64
    public var lastSequence: UInt64
    public var leader: String?
    public var replicas: [Replica]

    public struct Replica: Sendable, Equatable {
        public var name: String
        public var current: Bool
        public var offline: Bool
        public var lag: UInt64
    }
}

/// A message as the stream stores it.
public struct StoredMessage: Sendable, Equatable {
    public var sequence: UInt64
    public var data: [UInt8]
    public var headers: [String: String]
}

/// A stream of one partition: file storage, replicated, written through `publish` only.
public struct StreamSpec: Sendable {
    public var name: String
    public var subject: String
    public var replicas: Int
    /// The window in which JetStream drops a repeated message id: a guard for a publisher's own
    /// retries only, never the dedupe of record.
    public var duplicateWindowNanoseconds: Int64
    public var maxMessageBytes: Int32

    public init(name: String, subject: String, replicas: Int, duplicateWindowNanoseconds: Int64, maxMessageBytes: Int32) {
        self.name = name
        self.subject = subject
        self.replicas = replicas
        self.duplicateWindowNanoseconds = duplicateWindowNanoseconds
        self.maxMessageBytes = maxMessageBytes
    }
}

extension NATSConnection {
    /// Creates the stream, or finds it as it is (a second node creating it gets the first's).
    public func ensureStream(_ spec: StreamSpec) throws(NATSError) -> StreamState {
        let name = strdup(spec.name), subject = strdup(spec.subject)
        defer { free(name); free(subject) }
        var subjects: [UnsafePointer<CChar>?] = [UnsafePointer(subject)]
        var config = jsStreamConfig()
        jsStreamConfig_Init(&config)
        config.Name = UnsafePointer(name)
        config.SubjectsLen = 1
        config.Storage = js_FileStorage
        config.Replicas = Int64(spec.replicas)
        config.Duplicates = spec.duplicateWindowNanoseconds
        config.MaxMsgSize = spec.maxMessageBytes
        // Only sequence purges by this code: deleting single messages would open gaps.
        config.DenyDelete = true
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var apiCode = jsErrCode(rawValue: 0)
        let status = subjects.withUnsafeMutableBufferPointer { list in
            config.Subjects = list.baseAddress
            return js_AddStream(&info, jetStream, &config, nil, &apiCode)
        }
        defer { jsStreamInfo_Destroy(info) }
        if status == NATS_OK, let info { return StreamState(info.pointee) }
        // 10058: a stream of that name exists (made by another node, or before).
        guard apiCode.rawValue == 10058 else { throw NATSError(status, apiCode: apiCode, what: "cannot create stream \(spec.name)") }
        return try streamState(spec.name)
    }

    public func streamState(_ stream: String) throws(NATSError) -> StreamState {
        var info: UnsafeMutablePointer<jsStreamInfo>?
        var apiCode = jsErrCode(rawValue: 0)
        try check(js_GetStreamInfo(&info, jetStream, stream, nil, &apiCode), "cannot read stream \(stream)", apiCode: apiCode)
        defer { jsStreamInfo_Destroy(info) }
        return StreamState(info!.pointee)
    }

    public func deleteStream(_ stream: String) throws(NATSError) {
        var apiCode = jsErrCode(rawValue: 0)
        try check(js_DeleteStream(jetStream, stream, nil, &apiCode), "cannot delete stream \(stream)", apiCode: apiCode)
    }

    /// Removes every message below `sequence`. Never a purge that keeps the last N: after one,
    /// a replica killed and restarted served the purged messages again (nats-server 2.15.1).
    public func purge(_ stream: String, below sequence: UInt64) throws(NATSError) {
        var options = jsOptions()
        jsOptions_Init(&options)
        options.Stream.Purge.Sequence = sequence
        var apiCode = jsErrCode(rawValue: 0)
        try check(js_PurgeStream(jetStream, stream, &options, &apiCode), "cannot purge stream \(stream) below \(sequence)", apiCode: apiCode)
    }

    /// The message at `sequence`, or nil when there is none (purged, or past the end).
    public func message(_ stream: String, sequence: UInt64) throws(NATSError) -> StoredMessage? {
        var message: OpaquePointer?
        var apiCode = jsErrCode(rawValue: 0)
        let status = js_GetMsg(&message, jetStream, stream, sequence, nil, &apiCode)
        return try stored(message, status, apiCode, "cannot read \(stream) at \(sequence)")
    }

    /// The stream's last message on `subject`, or nil when it has none.
    public func lastMessage(_ stream: String, subject: String) throws(NATSError) -> StoredMessage? {
        var message: OpaquePointer?
        var apiCode = jsErrCode(rawValue: 0)
        let status = js_GetLastMsg(&message, jetStream, stream, subject, nil, &apiCode)
        return try stored(message, status, apiCode, "cannot read the last message of \(stream)")
    }

    private func stored(_ message: OpaquePointer?, _ status: natsStatus, _ apiCode: jsErrCode, _ what: String) throws(NATSError) -> StoredMessage? {
        defer { natsMsg_Destroy(message) }
        guard status == NATS_OK, let message else {
            let error = NATSError(status, apiCode: apiCode, what: what)
            if error.kind == .notFound { return nil }
            throw error
        }
        return StoredMessage(message)
    }
}

extension StreamState {
    init(_ info: jsStreamInfo) {
        messages = info.State.Msgs
        bytes = info.State.Bytes
        firstSequence = info.State.FirstSeq
        lastSequence = info.State.LastSeq
        leader = info.Cluster?.pointee.Leader.map { String(cString: $0) }
        replicas = []
        if let cluster = info.Cluster?.pointee, let list = cluster.Replicas {
            for i in 0..<Int(cluster.ReplicasLen) {
                guard let peer = list[i]?.pointee else { continue }
                replicas.append(Replica(name: peer.Name.map { String(cString: $0) } ?? "?", current: peer.Current,
                                        offline: peer.Offline, lag: peer.Lag))
            }
        }
    }
}

extension StoredMessage {
    init(_ message: OpaquePointer) {
        sequence = natsMsg_GetSequence(message)
        let count = Int(natsMsg_GetDataLength(message))
        data = count == 0 ? [] : Array(UnsafeRawBufferPointer(start: natsMsg_GetData(message), count: count))
        headers = Headers.read(message)
    }
}
