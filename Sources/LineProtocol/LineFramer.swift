import SensorLogCore

/// Splits a byte stream into lines without copying complete lines, and without ever buffering more
/// than `maxLineBytes` of one line: a longer line is skipped up to its newline and reported once.
///
/// Imitates swift-nio-extras' LineBasedFrameDecoder (zero-copy slices, no rescanning), with the
/// length bound the line protocol needs.
public struct LineFramer {
    public let maxLineBytes: Int
    /// The start of a line whose end has not arrived yet.
    private var partial: [UInt8] = []
    /// Inside a line that is already too long: discard until its newline.
    private var skipping = false

    public init(maxLineBytes: Int) {
        precondition(maxLineBytes > 0)
        self.maxLineBytes = maxLineBytes
    }

    /// Bytes held for an unfinished line.
    public var bufferedBytes: Int { partial.count }

    /// Feeds the next bytes of the stream.
    /// - Parameters:
    ///   - line: called with each complete line, without its `\n` (a `\r` before it is kept; the
    ///     parser drops it). The buffer is only valid during the call.
    ///   - tooLong: called once for each line skipped for its length.
    /// - Complexity: O(n) in the bytes fed; complete lines are passed without a copy.
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer, line: (UnsafeRawBufferPointer) -> Void, tooLong: () -> Void
    ) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        var start = 0
        let end = bytes.count
        while start < end {
            let remaining = end - start
            guard let hit = memchr(base + start, 0x0A, remaining) else {
                // No newline in the rest: keep it for the next feed, unless it is already too long.
                if skipping { return }
                if partial.count + remaining > maxLineBytes {
                    partial.removeAll(keepingCapacity: false)
                    skipping = true
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                }
                return
            }
            let newline = base.distance(to: hit)
            if skipping {
                skipping = false
                tooLong()
            } else if partial.isEmpty {
                if newline - start > maxLineBytes {
                    tooLong()
                } else {
                    line(UnsafeRawBufferPointer(rebasing: bytes[start..<newline]))
                }
            } else {
                if partial.count + (newline - start) > maxLineBytes {
                    tooLong()
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<newline]))
                    partial.withUnsafeBytes { line($0) }
                }
                partial.removeAll(keepingCapacity: partial.capacity <= 4096)
            }
            start = newline + 1
        }
    }

    /// Ends the stream.
    /// - Returns: whether an unfinished line (or the unfinished rest of a too-long one) was dropped.
    public mutating func finish() -> Bool {
        let dropped = !partial.isEmpty || skipping
        partial.removeAll()
        skipping = false
        return dropped
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
