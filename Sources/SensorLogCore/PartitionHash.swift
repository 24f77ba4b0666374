/// The stable partitioner: FNV-1a 64 over the sensor_id's UTF-8 bytes, modulo the partition count.
///
/// Stable across processes, versions and machines (unlike Swift's seeded `Hasher`), so a sensor's
/// readings always land in the same partition and stay in order. Documented in docs/storage-format.md.
public enum PartitionHash {
    public static let offsetBasis: UInt64 = 0xcbf2_9ce4_8422_2325
    public static let prime: UInt64 = 0x0000_0100_0000_01b3

    /// FNV-1a 64 of `bytes`.
    @inlinable
    public static func fnv1a64(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var hash = offsetBasis
        for byte in bytes {
            hash ^= UInt64(byte)
            hash = hash &* prime
        }
        return hash
    }

    /// FNV-1a 64 of a string's UTF-8 bytes.
    @inlinable
    public static func fnv1a64(_ string: String) -> UInt64 {
        var copy = string
        return copy.withUTF8 { fnv1a64(UnsafeRawBufferPointer($0)) }
    }

    /// The partition of `sensorID` in a log of `partitions` partitions.
    @inlinable
    public static func partition(of sensorID: String, partitions: Int) -> Int {
        precondition(partitions > 0)
        return Int(fnv1a64(sensorID) % UInt64(partitions))
    }
}
