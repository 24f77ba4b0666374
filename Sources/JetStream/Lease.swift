/// A lease on one key of a bucket whose entries expire (`KeyValueBucket(ttl:)`): held while its
/// holder writes it again within the TTL, always by compare-and-set on the revision, and free
/// once it expired or was released (an empty value). The servers' clocks decide expiry, so no
/// two nodes compare their clocks. The revision at which it was taken is the holder's epoch.
///
/// A lease is a hint, not the safety of the data (etcd's locks "did not, and can not, guarantee
/// mutual exclusion", Jepsen): a holder that stalls past the TTL may still believe it holds it.
/// What keeps a former holder's writes out is the stream's expected-last-sequence check.
public final class Lease: @unchecked Sendable {
    public let bucket: KeyValueBucket
    public let key: String
    public let holder: String
    /// The epoch and the revision to renew from, while held.
    public private(set) var epoch: UInt64?
    private var revision: UInt64 = 0

    public init(bucket: KeyValueBucket, key: String, holder: String) {
        precondition(!holder.isEmpty, "an empty value is a released lease")
        self.bucket = bucket
        self.key = key
        self.holder = holder
    }

    /// Takes the lease if it is free, or held under this holder's name (a restarted node taking
    /// its own lease back gets a new epoch). - Returns: the new epoch, or nil when another holds it.
    public func take() throws(NATSError) -> UInt64? {
        let mine = Array(holder.utf8)
        do {
            if let (value, current) = try bucket.get(key) {
                guard value.isEmpty || value == mine else { return nil }
                revision = try bucket.update(key, mine, revision: current)
            } else {
                revision = try bucket.create(key, mine)
            }
        } catch where error.kind == .wrongLastSequence {
            return nil  // another took it between the read and the write
        }
        epoch = revision
        return revision
    }

    /// Writes the lease again, restarting its TTL. - Returns: false when it was lost (expired, and
    /// perhaps taken): the holder steps down at once. A failure to reach the cluster throws; the
    /// holder must then step down before the TTL runs out on its own clock.
    public func renew() throws(NATSError) -> Bool {
        guard epoch != nil else { return false }
        do {
            revision = try bucket.update(key, Array(holder.utf8), revision: revision)
            return true
        } catch where error.kind == .wrongLastSequence || error.kind == .notFound {
            epoch = nil
            return false
        }
    }

    /// Gives the lease up (an empty value), so another may take it before the TTL: when still held.
    public func release() throws(NATSError) {
        guard epoch != nil else { return }
        epoch = nil
        do { _ = try bucket.update(key, [], revision: revision) } catch where error.kind == .wrongLastSequence {}
    }

    /// Who holds the lease now, as a (possibly stale) read says.
    public func currentHolder() throws(NATSError) -> String? {
        guard let (value, _) = try bucket.get(key), !value.isEmpty else { return nil }
        return String(decoding: value, as: UTF8.self)
    }
}
