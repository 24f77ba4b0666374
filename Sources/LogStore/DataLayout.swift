/// The data directory's layout: the only code that puts together the name of a file or folder
/// in it. Everything else asks for a path here.
///
/// ```
/// meta.json                    LogMetadata (format, partition count, hash)
/// LOCK                         DirectoryLock
/// admin.sock                   the running server's admin socket (sensorlog finds it here)
/// admin.d/                     where it is bound first (mode 0700), before it moves to admin.sock
/// retention.json               retention floors
/// aggregates.sqlite            the aggregator's rows and offsets (+ -wal, -shm)
/// aggregates.rebuild-pending   present while the aggregates may hold folds the log lost
/// groups/<name>.json           other consumer groups' offsets
/// quarantine/partition-NNN/    originals of salvaged segments, with reports
/// log/commit-{0,1}.journal     the commit journal (fsync always)
/// log/partition-NNN/           one partition: <20-digit base>.log|.index|.timeindex
/// ```
public struct DataLayout: Sendable {
    /// The data directory.
    public let root: String

    public init(_ root: String) { self.root = root }

    static let metadataName = "meta.json"
    static let lockName = "LOCK"
    static let adminSocketName = "admin.sock"
    static let retentionFloorsName = "retention.json"
    static let aggregatesName = "aggregates.sqlite"
    static let aggregatesRebuildPendingName = "aggregates.rebuild-pending"
    static let groupsName = "groups"
    static let logName = "log"
    static let quarantineName = "quarantine"
    static let journalNames = ["commit-0.journal", "commit-1.journal"]

    public var metadata: String { root + "/" + Self.metadataName }
    public var lock: String { root + "/" + Self.lockName }
    /// The running server's admin socket; its name as messages show it.
    public var adminSocket: String { root + "/" + Self.adminSocketName }
    public static let adminSocketDisplay = adminSocketName
    /// A private folder (0700) the socket is bound in, with its mode set, before it is renamed
    /// to `adminSocket`: no other user can connect in between.
    public var adminSocketStaging: String { root + "/admin.d" }
    /// Shorter than `adminSocket`, so a data directory whose socket path fits fits here too.
    public var adminSocketStaged: String { adminSocketStaging + "/s" }
    public var retentionFloors: String { root + "/" + Self.retentionFloorsName }
    public var aggregates: String { root + "/" + Self.aggregatesName }
    public var aggregatesRebuildPending: String { root + "/" + Self.aggregatesRebuildPendingName }
    /// Where a rebuild writes the new aggregates before swapping them in.
    public var aggregatesRebuilding: String { root + "/" + Self.aggregatesRebuildingDisplay }
    /// The names messages show for those files.
    public static let aggregatesDisplay = aggregatesName
    public static let aggregatesRebuildPendingDisplay = aggregatesRebuildPendingName
    public static let aggregatesRebuildingDisplay = aggregatesName + ".rebuild"
    public var groups: String { root + "/" + Self.groupsName }
    /// The folder of the log's partitions and journal.
    public var log: String { root + "/" + Self.logName }

    /// The commit journal's two files, each with its name as messages show it.
    package var journals: [(path: String, display: String)] {
        Self.journalNames.map { (log + "/" + $0, Self.logName + "/" + $0) }
    }

    /// A consumer group's offsets file, and its name as messages show it.
    public func group(_ name: String) -> (path: String, display: String) {
        let relative = Self.groupsName + "/" + name + ".json"
        return (root + "/" + relative, relative)
    }

    /// The consumer groups among the names of the groups folder's files.
    static func groupNames(in names: [String]) -> [String] {
        names.filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }
    }

    /// Partition `p`'s directory, and its name as messages show it.
    public func partition(_ p: Int) -> PartitionPaths {
        let digits = String(p)
        let relative = Self.logName + "/partition-" + String(repeating: "0", count: max(0, 3 - digits.count)) + digits
        return PartitionPaths(directory: root + "/" + relative, display: relative)
    }

    /// Where a salvaged segment of partition `p` is kept, with its report.
    public func quarantine(partition p: Int) -> String {
        root + "/" + Self.quarantineName + "/" + String(partition(p).display.dropFirst(Self.logName.count + 1))
    }
}

/// One partition's directory, and its name as messages show it (relative to the data directory).
public struct PartitionPaths: Sendable {
    public let directory: String
    public let display: String

    package func segment(_ base: Int64) -> SegmentPaths {
        SegmentPaths(directory: directory, displayDirectory: display, base: base)
    }
}
