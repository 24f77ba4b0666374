#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Committed offsets of consumer groups: per group, per partition, the next offset it will read
/// (as in Kafka). Each group is one file, `groups/<name>.json`, replaced atomically on commit.
///
/// The `aggregator` group is not here: its offsets live in `aggregates.sqlite`, in the same
/// transaction as the aggregates they reflect.
public struct ConsumerGroups: Sendable {
    public let dataDirectory: String
    public let partitions: Int

    public init(dataDirectory: String, partitions: Int) {
        self.dataDirectory = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        self.partitions = partitions
    }

    var directory: String { DataLayout(dataDirectory).groups }

    /// Where a group may start when it has no committed offsets.
    public enum Start: Sendable { case earliest, latest }

    /// What a reset moves a group to.
    public enum ResetTarget: Sendable, Equatable {
        case earliest
        case latest
        case offset(Int64)
        /// The first batch holding a reading at or after this time (through the time index).
        case timestamp(Int64)
    }

    /// Whether `name` may name a group: 1-128 letters, digits, `-`, `_`, `.` (a file name).
    public static func isValidName(_ name: String) -> Bool { validName(name) }

    static func validName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 128
            && name.utf8.allSatisfy { ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95 || $0 == 46 }
            && name != "." && name != ".."
    }

    /// Group names with committed offsets, sorted.
    public func list() -> [String] {
        DataLayout.groupNames(in: (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter(Self.validName).sorted()
    }

    /// The committed offsets of `group`, or nil when it has none.
    public func committed(_ group: String) throws(LogError) -> [Int64]? {
        guard Self.validName(group) else { throw LogError(.invalidArgument, "bad group name '\(group)' (letters, digits, - _ .)") }
        let file = DataLayout(dataDirectory).group(group)
        guard let bytes = SegmentFiles.readWholeFile(file.path) else { return nil }
        struct File: Decodable { var offsets: [Int64] }
        guard let decoded = try? JSONDecoder().decode(File.self, from: Data(bytes)), decoded.offsets.count == partitions,
              decoded.offsets.allSatisfy({ $0 >= 0 })
        else { throw LogError(.invalidLog, "unreadable offsets of group \(group)", path: file.display) }
        return decoded.offsets
    }

    /// Commits `offsets` for `group`, durably and atomically.
    public func commit(_ group: String, offsets: [Int64]) throws(LogError) {
        guard Self.validName(group) else { throw LogError(.invalidArgument, "bad group name '\(group)'") }
        guard group != "aggregator" else { throw LogError(.invalidArgument, "the aggregator group's offsets live in aggregates.sqlite") }
        guard offsets.count == partitions, offsets.allSatisfy({ $0 >= 0 }) else { throw LogError(.invalidArgument, "one offset per partition") }
        let file = DataLayout(dataDirectory).group(group)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw LogError(.io, "cannot create the groups folder: \(error)", path: file.display)
        }
        let text = "{\"offsets\":[" + offsets.map(String.init).joined(separator: ",") + "]}\n"
        try SegmentFiles.writeAtomically(Array(text.utf8), to: file.path, directory: directory, displayPath: file.display)
    }

    /// Deletes `group`'s committed offsets, durably.
    /// - Returns: false when it had none.
    public func delete(_ group: String) throws(LogError) -> Bool {
        guard Self.validName(group) else { throw LogError(.invalidArgument, "bad group name '\(group)'") }
        guard group != "aggregator" else { throw LogError(.invalidArgument, "the aggregator group is sensorlogd's own") }
        let file = DataLayout(dataDirectory).group(group)
        guard unlink(file.path) == 0 else {
            if errno == ENOENT { return false }
            throw LogError(.io, "cannot delete the group's offsets: \(String(cString: strerror(errno)))", path: file.display)
        }
        try syncDirectory(directory, display: file.display)
        return true
    }

    /// The offsets a reset of `group` to `target` gives, for `partition` or all of them.
    /// - Parameters:
    ///   - start, end, seek: the log's start and end offsets of a partition, and its time seek.
    public func resetOffsets(
        _ group: String, to target: ResetTarget, partition: Int?,
        start: (Int) throws(LogError) -> Int64, end: (Int) throws(LogError) -> Int64, seek: (Int, Int64) throws(LogError) -> Int64
    ) throws(LogError) -> [Int64] {
        var offsets = try committed(group) ?? (0..<partitions).map { _ in 0 }
        for p in 0..<partitions where partition == nil || partition == p {
            let lo = try start(p)
            let hi = try end(p)
            switch target {
            case .earliest: offsets[p] = lo
            case .latest: offsets[p] = hi
            case .offset(let o): offsets[p] = min(max(o, lo), hi)
            case .timestamp(let t): offsets[p] = min(max(try seek(p, t), lo), hi)
            }
        }
        return offsets
    }
}
