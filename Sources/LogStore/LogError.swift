#if canImport(Glibc)
import Glibc
#endif

/// An error of the storage engine, with the file and byte position it concerns.
///
/// `code` is stable and meant for callers (an HTTP layer maps `.diskFull` to 503); `message` is
/// for operators. `path` is relative to the data directory when the log knows it.
public struct LogError: Error, Sendable, CustomStringConvertible {
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        public let rawValue: String
        init(_ rawValue: String) { self.rawValue = rawValue }
        /// A code as another node sent it (a forwarded write's failure).
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// A read or write failed for a reason other than a full disk.
        public static let io = Code("io_error")
        /// The file system is full (ENOSPC, EDQUOT); appends work again once space is freed.
        public static let diskFull = Code("disk_full")
        /// A batch failed its checks (CRC, length, offsets) where a torn write cannot explain it.
        public static let corruptBatch = Code("corrupt_batch")
        /// Another process holds the data directory.
        public static let locked = Code("locked")
        /// The data directory is not a usable log (bad metadata, missing segments, wrong version).
        public static let invalidLog = Code("invalid_log")
        /// The caller passed something out of range (empty batch, unknown partition, too many records).
        public static let invalidArgument = Code("invalid_argument")
        /// The log was closed.
        public static let closed = Code("closed")
        /// A copied batch does not start at the partition's end (a gap, or a batch already
        /// there): a follower reads its source again from the partition's end.
        public static let notContiguous = Code("not_contiguous")
        /// The write cannot be made durable right now, nothing of it is acknowledged: in a
        /// cluster, no node owns the partition at the moment, or its stream cannot be reached.
        /// A retry is deduplicated.
        public static let unavailable = Code("unavailable")
    }

    public var code: Code
    public var message: String
    /// The file concerned, relative to the data directory.
    public var path: String?
    /// The byte position in `path`.
    public var position: Int64?
    /// The `errno` of the failed system call.
    public var errno: Int32?

    public init(_ code: Code, _ message: String, path: String? = nil, position: Int64? = nil, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.path = path
        self.position = position
        self.errno = errno
    }

    public var description: String {
        var text = message
        if let path {
            text += " (\(path)"
            if let position { text += " at byte \(position)" }
            text += ")"
        }
        if let errno { text += ": \(String(cString: strerror(errno)))" }
        return text
    }

    /// The error for a failed system call, `.diskFull` when the errno says so.
    public static func system(_ what: String, errno: Int32, path: String? = nil) -> LogError {
        let code: Code = (errno == ENOSPC || errno == EDQUOT) ? .diskFull : .io
        return LogError(code, what, path: path, errno: errno)
    }
}
