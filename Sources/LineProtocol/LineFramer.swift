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
    /// The first bytes of the line being skipped, for the report.
    private var skippedStart: [UInt8] = []
    /// How much of a skipped or dropped line is kept to report it.
    public static let reportedBytes = 128

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
    ///   - tooLong: called once for each line skipped for its length, with its first
    ///     `reportedBytes` bytes.
    /// - Complexity: O(n) in the bytes fed; complete lines are passed without a copy.
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer, line: (UnsafeRawBufferPointer) -> Void, tooLong: (UnsafeRawBufferPointer) -> Void
    ) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let reported = Self.reportedBytes
        var start = 0
        let end = bytes.count
        while start < end {
            let remaining = end - start
            guard let hit = memchr(base + start, 0x0A, remaining) else {
                // No newline in the rest: keep it for the next feed, unless it is already too long.
                if skipping {
                    keepSkippedStart(bytes[start..<end])
                } else if partial.count + remaining > maxLineBytes {
                    skippedStart = Array(partial.prefix(reported))
                    keepSkippedStart(bytes[start..<end])
                    partial.removeAll(keepingCapacity: false)
                    skipping = true
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                }
                return
            }
            let newline = base.distance(to: hit)
            if skipping {
                keepSkippedStart(bytes[start..<newline])
                skipping = false
                skippedStart.withUnsafeBytes { tooLong($0) }
                skippedStart = []
            } else if partial.isEmpty {
                if newline - start > maxLineBytes {
                    tooLong(UnsafeRawBufferPointer(rebasing: bytes[start..<(start + min(reported, newline - start))]))
                } else {
                    line(UnsafeRawBufferPointer(rebasing: bytes[start..<newline]))
                }
            } else {
                if partial.count + (newline - start) > maxLineBytes {
                    skippedStart = Array(partial.prefix(reported))
                    keepSkippedStart(bytes[start..<newline])
                    skippedStart.withUnsafeBytes { tooLong($0) }
                    skippedStart = []
                } else {
                    partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<newline]))
                    partial.withUnsafeBytes { line($0) }
                }
                partial.removeAll(keepingCapacity: partial.capacity <= 4096)
            }
            start = newline + 1
        }
    }

    /// Tops up the reported start of a too-long line from `bytes`.
    private mutating func keepSkippedStart(_ bytes: Slice<UnsafeRawBufferPointer>) {
        let room = Self.reportedBytes - skippedStart.count
        if room > 0 { skippedStart.append(contentsOf: bytes.prefix(room)) }
    }

    /// Ends the stream.
    /// - Returns: the first bytes (up to `reportedBytes`) of the unfinished line dropped (or of
    ///   the too-long one being skipped), or nil when the stream ended on a line boundary.
    public mutating func finish() -> [UInt8]? {
        let dropped = skipping ? skippedStart : partial.isEmpty ? nil : Array(partial.prefix(Self.reportedBytes))
        partial.removeAll()
        skippedStart = []
        skipping = false
        return dropped
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
