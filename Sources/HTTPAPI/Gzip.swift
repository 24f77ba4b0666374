import CZlib
import NIOCore

/// `Content-Encoding: gzip` bodies, inflated with a bound: the decompressed size counts against
/// the body limit, and inflation stops as soon as it passes it, so a gzip bomb costs at most the
/// limit in memory and never more than that in work.
enum Gzip {
    enum Failure: Error, Equatable {
        /// Inflates to more than the limit.
        case tooLarge
        /// Not gzip, or cut short.
        case corrupt(String)
    }

    /// The bytes `compressed` inflates to (one gzip member or several back to back, as `cat`
    /// of two .gz files gives).
    static func inflate(_ compressed: ByteBuffer, limit: Int) throws(Failure) -> ByteBuffer {
        var stream = z_stream()
        // 15 + 16: a gzip header and trailer (CRC and length checked by zlib), no raw deflate.
        guard czlib_inflate_init(&stream, 15 + 16) == Z_OK else { throw .corrupt("zlib could not start") }
        defer { inflateEnd(&stream) }
        var output = ByteBufferAllocator().buffer(capacity: min(limit, max(4096, compressed.readableBytes * 4)))
        let failure: Failure? = compressed.withUnsafeReadableBytes { input -> Failure? in
            guard let base = input.baseAddress, !input.isEmpty else { return .corrupt("empty body") }
            stream.next_in = UnsafeMutablePointer(mutating: base.assumingMemoryBound(to: Bytef.self))
            stream.avail_in = uInt(input.count)
            while true {
                // One byte past the limit is room enough to know the body is over it.
                guard output.readableBytes <= limit else { return .tooLarge }
                if output.writableBytes == 0 { output.reserveCapacity(min(limit + 1, output.capacity * 2)) }
                let room = min(output.writableBytes, limit + 1 - output.readableBytes)
                let (status, produced) = output.withUnsafeMutableWritableBytes { out -> (Int32, Int) in
                    stream.next_out = out.baseAddress!.assumingMemoryBound(to: Bytef.self)
                    stream.avail_out = uInt(room)
                    let status = CZlib.inflate(&stream, Z_NO_FLUSH)
                    return (status, room - Int(stream.avail_out))
                }
                output.moveWriterIndex(forwardBy: produced)
                switch status {
                case Z_STREAM_END:
                    guard stream.avail_in > 0 else { return output.readableBytes <= limit ? nil : .tooLarge }
                    // Another member follows.
                    guard inflateReset(&stream) == Z_OK else { return .corrupt("zlib could not continue") }
                case Z_OK:
                    // No progress with room to write means the input ended inside the stream.
                    if produced == 0 && stream.avail_in == 0 { return .corrupt("gzip stream cut short") }
                case Z_BUF_ERROR:
                    // No progress possible: the input ended inside the stream.
                    if produced == 0 { return .corrupt("gzip stream cut short") }
                default:
                    let message = stream.msg.map { String(cString: $0) } ?? "status \(status)"
                    return .corrupt(message)
                }
            }
        }
        if let failure { throw failure }
        return output
    }
}
