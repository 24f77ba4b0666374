import CDeflate
package import NIOCore

/// `Content-Encoding: gzip` bodies, inflated with a bound: the decompressed size counts against
/// the body limit, and no output buffer ever exceeds it, so a gzip bomb costs at most the limit in
/// memory (and twice the limit in work) before its 413.
///
/// libdeflate rather than zlib: it inflates a whole buffer at once three times as fast, and
/// inflation was the one cost the HTTP door had that the TCP door did not (docs/benchmarks.md).
package enum Gzip {
    package enum Failure: Error, Equatable {
        /// Inflates to more than the limit.
        case tooLarge
        /// Not gzip, or cut short.
        case corrupt(String)
    }

    /// The bytes `compressed` inflates to (one gzip member or several back to back, as `cat`
    /// of two .gz files gives).
    package static func inflate(_ compressed: ByteBuffer, limit: Int) throws(Failure) -> ByteBuffer {
        guard compressed.readableBytes >= 18 else { throw .corrupt("shorter than a gzip header and trailer") }
        // The last member's trailer says its size (mod 2^32): right for the usual single member,
        // a hint otherwise. A wrong hint costs one more pass, never more memory than the limit.
        let hint = compressed.getInteger(at: compressed.writerIndex - 4, endianness: .little, as: UInt32.self).map(Int.init) ?? limit
        let first = min(hint, limit)
        if let out = try attempt(compressed, capacity: first) { return out }
        if first < limit, let out = try attempt(compressed, capacity: limit) { return out }
        throw .tooLarge
    }

    /// Inflates every member into at most `capacity` bytes; nil when they need more.
    private static func attempt(_ compressed: ByteBuffer, capacity: Int) throws(Failure) -> ByteBuffer? {
        guard let decompressor = libdeflate_alloc_decompressor() else { throw .corrupt("no memory for a decompressor") }
        defer { libdeflate_free_decompressor(decompressor) }
        var output = ByteBufferAllocator().buffer(capacity: max(capacity, 1))
        let result: Result<Bool, Failure> = compressed.withUnsafeReadableBytes { input in
            var consumed = 0
            while consumed < input.count {
                let room = capacity - output.readableBytes
                var usedIn = 0, usedOut = 0
                let status = output.withUnsafeMutableWritableBytes { out in
                    libdeflate_gzip_decompress_ex(decompressor, input.baseAddress! + consumed, input.count - consumed,
                                                  out.baseAddress, room, &usedIn, &usedOut)
                }
                switch status {
                case LIBDEFLATE_SUCCESS:
                    output.moveWriterIndex(forwardBy: usedOut)
                    consumed += usedIn
                case LIBDEFLATE_INSUFFICIENT_SPACE:
                    return .success(false)
                default:
                    return .failure(.corrupt(consumed == 0 ? "not gzip, or cut short" : "a gzip member after the first is damaged"))
                }
            }
            return .success(true)
        }
        return try result.get() ? output : nil
    }
}
