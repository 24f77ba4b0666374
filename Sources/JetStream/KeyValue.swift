import CNATS

/// A replicated key-value bucket (a JetStream stream underneath): leases are taken and renewed
/// only by compare-and-set on the revision, never by a read then a write.
public final class KeyValueBucket: @unchecked Sendable {
    let store: OpaquePointer
    public let name: String

    /// Opens the bucket, creating it (file storage, `replicas` copies, one revision per key kept;
    /// with `ttl`, an entry not written again within it expires, on the servers' clocks).
    public init(_ connection: NATSConnection, name: String, replicas: Int, ttl: Duration? = nil) throws(NATSError) {
        self.name = name
        var config = kvConfig()
        kvConfig_Init(&config)
        var kv: OpaquePointer?
        let status: natsStatus = name.withCString { bucket in
            config.Bucket = bucket
            config.Replicas = Int32(replicas)
            config.History = 1
            config.StorageType = js_FileStorage
            if let ttl { config.TTL = Int64(ttl / .nanoseconds(1)) }  // nanoseconds, whatever nats.h does not say
            return js_CreateKeyValue(&kv, connection.jetStream, &config)
        }
        if status != NATS_OK {
            // Created before (by another node): open it as it is.
            try check(js_KeyValue(&kv, connection.jetStream, name), "cannot open key-value bucket \(name)")
        }
        store = kv!
    }

    deinit { kvStore_Destroy(store) }

    /// The key's value and revision, or nil when it has none (never set, or deleted).
    public func get(_ key: String) throws(NATSError) -> (value: [UInt8], revision: UInt64)? {
        var entry: OpaquePointer?
        let status = kvStore_Get(&entry, store, key)
        defer { kvEntry_Destroy(entry) }
        guard status == NATS_OK, let entry else {
            let error = NATSError(status, what: "cannot read \(name)/\(key)")
            if error.kind == .notFound { return nil }
            throw error
        }
        let count = Int(kvEntry_ValueLen(entry))
        let value = count == 0 ? [] : Array(UnsafeRawBufferPointer(start: kvEntry_Value(entry), count: count))
        return (value, kvEntry_Revision(entry))
    }

    /// Sets the key only if it has no value. - Returns: its revision.
    /// - Throws: `.wrongLastSequence` when it has one.
    public func create(_ key: String, _ value: [UInt8]) throws(NATSError) -> UInt64 {
        var revision: UInt64 = 0
        let status = kvStore_Create(&revision, store, key, value, Int32(value.count))
        guard status == NATS_OK else { throw NATSError.compareAndSet(status, what: "cannot create \(name)/\(key)") }
        return revision
    }

    /// Sets the key only if its revision is still `revision`. - Returns: the new revision.
    /// - Throws: `.wrongLastSequence` when another write came first.
    public func update(_ key: String, _ value: [UInt8], revision: UInt64) throws(NATSError) -> UInt64 {
        var next: UInt64 = 0
        let status = kvStore_Update(&next, store, key, value, Int32(value.count), revision)
        guard status == NATS_OK else { throw NATSError.compareAndSet(status, what: "cannot update \(name)/\(key) at revision \(revision)") }
        return next
    }

    /// Deletes the key (a delete marker: it is no longer among `keys()`).
    public func delete(_ key: String) throws(NATSError) {
        try check(kvStore_Delete(store, key), "cannot delete \(name)/\(key)")
    }

    /// Sets the key whatever it holds (for values only their writer changes). - Returns: its revision.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8]) throws(NATSError) -> UInt64 {
        var revision: UInt64 = 0
        try check(kvStore_Put(&revision, store, key, value, Int32(value.count)), "cannot write \(name)/\(key)")
        return revision
    }
}
