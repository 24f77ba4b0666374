/// A growable byte buffer that keeps its storage between uses, so encoding a batch allocates
/// nothing once the buffer has grown to the batch size.
final class GrowableBuffer {
    private(set) var base: UnsafeMutableRawPointer
    private(set) var capacity: Int
    var count = 0

    init(capacity: Int = 4096) {
        self.capacity = max(capacity, 64)
        self.base = .allocate(byteCount: self.capacity, alignment: 16)
    }

    deinit { base.deallocate() }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    func removeAll() { count = 0 }

    /// Makes room for `extra` more bytes.
    @inline(__always)
    func reserve(_ extra: Int) {
        if count + extra > capacity { grow(to: count + extra) }
    }

    private func grow(to needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let newBase = UnsafeMutableRawPointer.allocate(byteCount: newCapacity, alignment: 16)
        newBase.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    @inline(__always)
    func append(_ byte: UInt8) {
        reserve(1)
        base.storeBytes(of: byte, toByteOffset: count, as: UInt8.self)
        count += 1
    }

    @inline(__always)
    func appendVarint(_ value: UInt64) {
        reserve(10)
        var v = value
        var p = count
        while v >= 0x80 {
            base.storeBytes(of: UInt8(truncatingIfNeeded: v) | 0x80, toByteOffset: p, as: UInt8.self)
            v >>= 7
            p += 1
        }
        base.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: p, as: UInt8.self)
        count = p + 1
    }

    @inline(__always)
    func appendZigZag(_ value: Int64) {
        appendVarint(UInt64(bitPattern: (value << 1) ^ (value >> 63)))
    }

    @inline(__always)
    func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        reserve(MemoryLayout<T>.size)
        base.storeBytes(of: value.littleEndian, toByteOffset: count, as: T.self)
        count += MemoryLayout<T>.size
    }

    func append(_ raw: UnsafeRawBufferPointer) {
        guard raw.count > 0 else { return }
        reserve(raw.count)
        (base + count).copyMemory(from: raw.baseAddress!, byteCount: raw.count)
        count += raw.count
    }

    /// Appends zeros and returns where they start, for a header filled in later.
    func appendZeros(_ n: Int) -> Int {
        reserve(n)
        let start = count
        (base + count).initializeMemory(as: UInt8.self, repeating: 0, count: n)
        count += n
        return start
    }

    func storeLittleEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        precondition(offset + MemoryLayout<T>.size <= count)
        base.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

/// A malformed payload. Only the batch decoder throws it; callers turn it into a `LogError`.
package struct DecodeError: Error {
    package var message: String
    package init(_ message: String) { self.message = message }
}

/// A bounds-checked reader over untrusted bytes: every read either succeeds or throws, never traps.
package struct ByteReader {
    package let bytes: UnsafeRawBufferPointer
    package var position = 0

    package init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    package var remaining: Int { bytes.count - position }

    @inline(__always)
    package mutating func readByte() throws(DecodeError) -> UInt8 {
        guard position < bytes.count else { throw DecodeError("payload ends early") }
        let b = bytes[position]
        position += 1
        return b
    }

    @inline(__always)
    package mutating func readVarint() throws(DecodeError) -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < bytes.count else { throw DecodeError("varint runs past the payload") }
            let b = bytes[position]
            position += 1
            if shift == 63 && b > 1 { throw DecodeError("varint overflows 64 bits") }
            result |= UInt64(b & 0x7F) << shift
            if b < 0x80 { return result }
            shift += 7
            if shift > 63 { throw DecodeError("varint longer than 10 bytes") }
        }
    }

    /// A varint that must fit `limit`, as an `Int`.
    @inline(__always)
    package mutating func readCount(max limit: Int) throws(DecodeError) -> Int {
        let v = try readVarint()
        guard limit >= 0, v <= UInt64(limit) else { throw DecodeError("count \(v) exceeds \(limit)") }
        return Int(v)
    }

    @inline(__always)
    package mutating func readZigZag() throws(DecodeError) -> Int64 {
        let v = try readVarint()
        return Int64(bitPattern: v >> 1) ^ -Int64(bitPattern: v & 1)
    }

    /// Moves past `n` varints without decoding them (each ends at its first byte below 0x80).
    package mutating func skipVarints(_ n: Int) throws(DecodeError) {
        var left = n
        var p = position
        let end = bytes.count
        while left > 0 {
            guard p < end else { throw DecodeError("varint runs past the payload") }
            if bytes[p] < 0x80 { left -= 1 }
            p += 1
        }
        position = p
    }

    package mutating func readLittleEndian<T: FixedWidthInteger>(_: T.Type) throws(DecodeError) -> T {
        let size = MemoryLayout<T>.size
        guard remaining >= size else { throw DecodeError("payload ends early") }
        let v = bytes.loadUnaligned(fromByteOffset: position, as: T.self)
        position += size
        return T(littleEndian: v)
    }

    package mutating func readBytes(_ n: Int) throws(DecodeError) -> UnsafeRawBufferPointer {
        guard n >= 0, remaining >= n else { throw DecodeError("payload ends early") }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[position..<(position + n)])
        position += n
        return slice
    }
}
