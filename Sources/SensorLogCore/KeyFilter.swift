/// A Bloom filter over (sensor id, timestamp) keys: whether a run of the log may hold a key,
/// so that an out-of-order reading is checked against the runs that may hold it, not against
/// every run whose time bounds do (a log mixing a backfill with live readings has runs whose
/// bounds span everything between the two).
///
/// 10 bits a key and 7 probes: about 1 % false positives at capacity. Hashes are seeded per
/// process; filters live in memory only.
public struct KeyFilter: Sendable {
    private var bits: [UInt64]
    /// Keys it was sized for; more still work, with more false positives.
    public let capacity: Int
    public private(set) var count = 0

    public static let bitsPerKey = 10
    static let probes = 7
    private static let seed = UInt64.random(in: .min ... .max)

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
        bits = [UInt64](repeating: 0, count: (self.capacity * Self.bitsPerKey + 63) / 64)
    }

    /// The hash of a key, computed once and used for `insert` and `mayContain` of any filter.
    @inline(__always)
    public static func hash(_ sensorID: String, _ timestamp: Int64) -> UInt64 {
        var id = sensorID
        let h = id.withUTF8 { StringTable<UInt8>.hash(UnsafeRawBufferPointer($0), seed: seed) }
        return StringTable<UInt8>.mix(h ^ UInt64(bitPattern: timestamp), 0x9E37_79B9_7F4A_7C15)
    }

    public mutating func insert(_ hash: UInt64) {
        let n = UInt64(bits.count * 64)
        let step = (hash &* 0xC2B2_AE3D_27D4_EB4F) | 1
        var x = hash
        for _ in 0..<Self.probes {
            let bit = Int(truncatingIfNeeded: x.multipliedFullWidth(by: n).high)
            bits[bit >> 6] |= 1 << UInt64(bit & 63)
            x &+= step
        }
        count += 1
    }

    public func mayContain(_ hash: UInt64) -> Bool {
        let n = UInt64(bits.count * 64)
        let step = (hash &* 0xC2B2_AE3D_27D4_EB4F) | 1
        var x = hash
        for _ in 0..<Self.probes {
            let bit = Int(truncatingIfNeeded: x.multipliedFullWidth(by: n).high)
            if bits[bit >> 6] & (1 << UInt64(bit & 63)) == 0 { return false }
            x &+= step
        }
        return true
    }

    /// Bytes held.
    public var byteCount: Int { bits.count * 8 }
}
