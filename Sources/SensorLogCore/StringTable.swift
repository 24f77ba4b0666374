/// A hash map from strings (sensor ids) to values, for the per-reading lookups of ingest.
///
/// Why not `Dictionary`: hashing a `String` through `Hasher` (SipHash-1-3, seeded per lookup,
/// plus the string's normalization check) cost more than the rest of the dedupe check. This table
/// hashes the UTF-8 bytes eight at a time with a multiply-fold mix keyed by a random seed per
/// table, so a producer cannot choose ids that collide without knowing the seed. Open addressing
/// with linear probing; a 32-bit tag per slot settles most probes without comparing strings.
///
/// Memory: 20 bytes of key and tag per slot plus the value, with the load kept between 7/12 and
/// 7/8 (it grows by half, not double): for the dedupe's 16-byte values, 41 to 62 bytes per entry.
///
/// Slot numbers (`slot(of:)`) stay valid until the next insertion or removal.
public struct StringTable<Value> {
    /// Per slot: 0 when empty, else the key hash's lower half with the low bit set.
    @usableFromInline var tags: [UInt32]
    @usableFromInline var keys: [String]
    @usableFromInline var values: [Value]
    @usableFromInline let placeholder: Value
    @usableFromInline let seed: UInt64
    @usableFromInline var occupied = 0
    public var count: Int { occupied }

    /// - Parameter placeholder: what empty slots hold (never returned).
    public init(placeholder: Value, minimumCapacity: Int = 0) {
        self.init(placeholder: placeholder, slots: Self.slots(for: minimumCapacity))
    }

    @usableFromInline
    init(placeholder: Value, slots: Int) {
        self.placeholder = placeholder
        var generator = SystemRandomNumberGenerator()
        seed = generator.next()
        tags = [UInt32](repeating: 0, count: slots)
        keys = [String](repeating: "", count: slots)
        values = [Value](repeating: placeholder, count: slots)
    }

    /// Slots for `count` entries at a load of at most 7/8 (at least 16).
    @usableFromInline
    static func slots(for count: Int) -> Int { max(16, (count * 8 + 6) / 7) }

    @inlinable
    static func isOverloaded(entries: Int, slots: Int) -> Bool { entries * 8 > slots * 7 }

    public var isEmpty: Bool { count == 0 }

    /// The slot holding `key`, if present.
    @inlinable
    public func slot(of key: String) -> Int? {
        let h = hash(key)
        let tag = Self.tag(h)
        let slots = tags.count
        var i = Self.home(h, slots)
        while true {
            let t = tags[i]
            if t == 0 { return nil }
            if t == tag && keys[i] == key { return i }
            i += 1
            if i == slots { i = 0 }
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
        if Self.isOverloaded(entries: occupied + 1, slots: tags.count) { grow() }
        let h = hash(key)
        let slots = tags.count
        var i = Self.home(h, slots)
        while tags[i] != 0 {
            i += 1
            if i == slots { i = 0 }
        }
        tags[i] = Self.tag(h)
        keys[i] = key
        values[i] = value
        occupied += 1
        return i
    }

    /// Empties the slot, moving later entries of its probe run back (no tombstones).
    public mutating func remove(at slot: Int) {
        let slots = tags.count
        var hole = slot
        var j = slot
        while true {
            j = j + 1 == slots ? 0 : j + 1
            if tags[j] == 0 { break }
            let home = Self.home(hash(keys[j]), slots)
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
    @inlinable
    public mutating func removeAll() {
        if tags.count > Self.slots(for: count) * 8 {
            self = StringTable(placeholder: placeholder, slots: Self.slots(for: count))
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
        let slots = tags.count + tags.count / 2
        tags = [UInt32](repeating: 0, count: slots)
        keys = [String](repeating: "", count: slots)
        values = [Value](repeating: placeholder, count: slots)
        occupied = 0
        for i in oldTags.indices where oldTags[i] != 0 { insert(oldKeys[i], oldValues[i]) }
    }

    /// The lower half: the slot comes from the upper bits (`home`).
    @inlinable @inline(__always)
    static func tag(_ h: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: h) | 1 }

    /// The first slot to probe: `h` scaled to 0..<slots (any slot count, no power of two needed).
    @inlinable @inline(__always)
    static func home(_ h: UInt64, _ slots: Int) -> Int { Int(truncatingIfNeeded: h.multipliedFullWidth(by: UInt64(slots)).high) }

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
