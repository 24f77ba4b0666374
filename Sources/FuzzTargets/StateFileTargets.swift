import SensorLogCore

import LogStore

/// The small JSON files of a data directory: `groups/NAME.json` (ConsumerGroups.swift),
/// `retention.json` (Retention.swift) and `meta.json` (Log.swift). Each input is the file.
enum StateFileTargets {
    static let partitions = 4
    static let noSync = FileOperations(sync: { _ in 0 }, fullSync: { _ in 0 }, syncDirectory: { _ in 0 })
    /// One directory each, made once: each input overwrites the file.
    static let groupsDirectory = Scratch.fresh("groups")
    static let retentionDirectory = Scratch.fresh("retention")
    static let metaDirectory = Scratch.fresh("meta")

    /// Accepted offsets: one per partition, none negative; committed again, read back equal.
    @Sendable static func groups(_ input: UnsafeRawBufferPointer) {
        let directory = groupsDirectory
        Scratch.write(input, to: DataLayout(directory).group("g").path)
        let groups = ConsumerGroups(dataDirectory: directory, partitions: partitions)
        guard let offsets = try? groups.committed("g") else { return }
        check(offsets.count == partitions && offsets.allSatisfy { $0 >= 0 }, "accepted offsets out of bounds: \(offsets)")
        roundTrip(offsets, "offsets", write: { try groups.commit("g", offsets: $0) }, read: { try groups.committed("g") })
    }

    /// Accepted floors: one per partition; written back, read back equal.
    @Sendable static func retention(_ input: UnsafeRawBufferPointer) {
        let directory = retentionDirectory
        Scratch.write(input, to: DataLayout(directory).retentionFloors)
        guard let floors = try? Retention.floors(dataDirectory: directory, partitions: partitions) else { return }
        check(floors.count == partitions, "accepted \(floors.count) floors for \(partitions) partitions")
        roundTrip(floors, "floors", write: { try Retention.writeFloors($0, dataDirectory: directory, noSync) },
                  read: { try Retention.floors(dataDirectory: directory, partitions: partitions) })
    }

    /// Accepted metadata: this format and version, a partition count within the bounds; written
    /// back, read back equal.
    @Sendable static func meta(_ input: UnsafeRawBufferPointer) {
        let directory = metaDirectory
        Scratch.write(input, to: DataLayout(directory).metadata)
        let maxPartitions = Limits().maxPartitions
        guard let meta = try? LogMetadata.read(directory, maxPartitions: maxPartitions) else { return }
        check(meta.format == "sensorlog" && meta.formatVersion == LogMetadata.currentVersion && meta.partitionHash == "fnv1a64"
              && (1...maxPartitions).contains(meta.partitions), "accepted metadata out of bounds: \(meta)")
        roundTrip(meta, "metadata", write: { try $0.write(directory) }, read: { try LogMetadata.read(directory, maxPartitions: maxPartitions) })
    }

    /// What a reader accepted is written back through its writer and read back equal.
    static func roundTrip<T: Equatable>(_ accepted: T, _ what: String, write: (T) throws -> Void, read: () throws -> T?) {
        do {
            try write(accepted)
            let back = try read()
            check(back == accepted, "\(what) read back differ")
        } catch {
            check(false, "accepted \(what) cannot be written again: \(error)")
        }
    }
}
