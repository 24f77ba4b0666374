/// A hash map from strings (sensor ids) to values, for the per-reading lookups of ingest.
///
/// Why not `Dictionary`: hashing a `String` through `Hasher` (SipHash-1-3, seeded per lookup,
/// plus the string's normalization check) cost more than the rest of the dedupe check. This table
/// hashes the UTF-8 bytes eight at a time with a multiply-fold mix keyed by a random seed per
/// table, so a producer cannot choose ids that collide without knowing the seed. Open addressing
/// with linear probing; a 32-bit tag per slot settles most probes without comparing strings.
///
/// Slot numbers (`slot(of:)`) stay valid until the next insertion or removal.
public struct StringTable<Value> {
    /// Per slot: 0 when empty, else the key hash's upper half with the low bit set.
    @usableFromInline var tags: [UInt32]
    @usableFromInline var keys: [String]
    @usableFromInline var values: [Value]
    @usableFromInline let placeholder: Value
    @usableFromInline let seed: UInt64
    @usableFromInline var occupied = 0
    public var count: Int { occupied }

    /// - Parameter placeholder: what empty slots hold (never returned).
    public init(placeholder: Value, minimumCapacity: Int = 0) {
        self.placeholder = placeholder
        var generator = SystemRandomNumberGenerator()
        seed = generator.next()
        let capacity = Self.capacity(for: minimumCapacity)
        tags = [UInt32](repeating: 0, count: capacity)
        keys = [String](repeating: "", count: capacity)
        values = [Value](repeating: placeholder, count: capacity)
    }

    /// Slots for `count` keys at a load factor of at most 3/4: a power of two, at least 16.
    private static func capacity(for count: Int) -> Int {
        var capacity = 16
        while capacity * 3 < count * 4 { capacity *= 2 }
        return capacity
    }

    public var isEmpty: Bool { count == 0 }

    /// The slot holding `key`, if present.
    @inlinable
    public func slot(of key: String) -> Int? {
        let h = hash(key)
        let tag = Self.tag(h)
        let mask = tags.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        while true {
            let t = tags[i]
            if t == 0 { return nil }
            if t == tag && keys[i] == key { return i }
            i = (i + 1) & mask
        }
    }

    /// The value in an occupied slot.
    @inlinable
    public subscript(slot slot: Int) -> Value {
        get { values[slot] }
        _modify { yield &values[slot] }
    }

    /// The key in an occupied slot.
    public func key(at slot: Int) -> String { keys[slot] }

    public subscript(key: String) -> Value? {
        @inlinable get { slot(of: key).map { values[$0] } }
        set {
            if let newValue {
                if let s = slot(of: key) { values[s] = newValue } else { insert(key, newValue) }
            } else if let s = slot(of: key) {
                remove(at: s)
            }
        }
    }

    /// Adds `key`, which must not be present.
    /// - Returns: its slot.
    @discardableResult @inlinable
    public mutating func insert(_ key: String, _ value: Value) -> Int {
        if (occupied + 1) * 4 > tags.count * 3 { grow() }
        let h = hash(key)
        let mask = tags.count - 1
        var i = Int(truncatingIfNeeded: h) & mask
        while tags[i] != 0 { i = (i + 1) & mask }
        tags[i] = Self.tag(h)
        keys[i] = key
        values[i] = value
        occupied += 1
        return i
    }

    /// Empties the slot, moving later entries of its probe run back (no tombstones).
    public mutating func remove(at slot: Int) {
        let mask = tags.count - 1
        var hole = slot
        var j = slot
        while true {
            j = (j + 1) & mask
            if tags[j] == 0 { break }
            let home = Int(truncatingIfNeeded: hash(keys[j])) & mask
            // The entry at j may fill the hole only if its home is not in (hole, j] (cyclically).
            let stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j)
            if stays { continue }
            tags[hole] = tags[j]
            keys[hole] = keys[j]
            values[hole] = values[j]
            hole = j
        }
        tags[hole] = 0
        keys[hole] = ""
        values[hole] = placeholder
        occupied -= 1
    }

    /// Removes every entry. The slots are kept unless they are far more than the entries were,
    /// so that one huge batch does not make every later clear expensive.
    public mutating func removeAll() {
        let capacity = Self.capacity(for: count)
        if tags.count > capacity * 8 {
            self = StringTable(placeholder: placeholder, minimumCapacity: count)
            return
        }
        guard count > 0 else { return }
        for i in tags.indices where tags[i] != 0 {
            tags[i] = 0
            keys[i] = ""
            values[i] = placeholder
        }
        occupied = 0
    }

    /// Every (key, value), in slot order.
    public var entries: [(key: String, value: Value)] {
        tags.indices.filter { tags[$0] != 0 }.map { (keys[$0], values[$0]) }
    }

    @usableFromInline
    mutating func grow() {
        let oldTags = tags
        let oldKeys = keys
        let oldValues = values
        let capacity = tags.count * 2
        tags = [UInt32](repeating: 0, count: capacity)
        keys = [String](repeating: "", count: capacity)
        values = [Value](repeating: placeholder, count: capacity)
        occupied = 0
        for i in oldTags.indices where oldTags[i] != 0 { insert(oldKeys[i], oldValues[i]) }
    }

    @inlinable @inline(__always)
    static func tag(_ h: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: h >> 32) | 1 }

    @inlinable @inline(__always)
    func hash(_ key: String) -> UInt64 {
        var key = key
        return key.withUTF8 { Self.hash(UnsafeRawBufferPointer($0), seed: seed) }
    }

    /// Eight bytes at a time, each word folded in with a 64×64→128-bit multiply (as wyhash does).
    @inlinable @inline(__always)
    static func hash(_ bytes: UnsafeRawBufferPointer, seed: UInt64) -> UInt64 {
        var h = seed ^ (UInt64(bytes.count) &* 0x9E37_79B9_7F4A_7C15)
        let n = bytes.count
        var i = 0
        while i + 8 <= n {
            h = mix(h ^ bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self), 0xA076_1D64_78BD_642F)
            i += 8
        }
        if i < n {
            var tail: UInt64 = 0
            var shift: UInt64 = 0
            while i < n {
                tail |= UInt64(bytes[i]) << shift
                shift += 8
                i += 1
            }
            h = mix(h ^ tail, 0xE703_7ED1_A0B4_28DB)
        }
        return mix(h, 0x8EBC_6AF0_9C88_C6E3)
    }

    @inlinable @inline(__always)
    static func mix(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (high, low) = a.multipliedFullWidth(by: b)
        return high ^ low
    }
}

extension StringTable: Sendable where Value: Sendable {}
