import Foundation
public import Ingest
public import LogStore
public import SensorLogCore
import Synchronization

/// A log with its ingest pipeline in a fresh directory.
public struct Fixture: Sendable {
    public let path: String
    public let log: Log
    public let pipeline: IngestPipeline

    public static func make(partitions: Int = 4, fsync: FsyncPolicy = .interval, path: String? = nil,
                     fileOperations: FileOperations = .system, time: any TimeSource = SystemTime()) async throws -> Fixture {
        let path = path ?? NSTemporaryDirectory() + "sensorlog-ingest-" + UUID().uuidString
        var limits = Limits()
        limits.partitions = partitions
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits, fsync: fsync, fileOperations: fileOperations, time: time))
        let pipeline = try await IngestPipeline(log: log, validator: ReadingValidator(limits: limits), metrics: IngestMetrics())
        return Fixture(path: path, log: log, pipeline: pipeline)
    }

    public func reopen() async throws -> Fixture {
        try log.close()
        return try await Fixture.make(partitions: log.partitions.count, path: path)
    }

    public func close(remove: Bool = true) {
        try? log.close()
        if remove { try? FileManager.default.removeItem(atPath: path) }
    }

    /// Every reading in the log, per sensor/timestamp key, with how often it is stored.
    public func stored() throws -> [String: Int] {
        var counts: [String: Int] = [:]
        for p in 0..<log.partitions.count {
            let reader = log.reader(partition: p, from: 0)
            while let (batch, first) = try reader.next() {
                guard batch.kind == .readings else { continue }
                for i in first..<batch.count { counts["\(batch.sensorID(at: i))@\(batch.timestamps[i])", default: 0] += 1 }
            }
        }
        return counts
    }

    /// Every reading in the log.
    public func storedReadings() throws -> [Reading] {
        var all: [Reading] = []
        for p in 0..<log.partitions.count {
            let reader = log.reader(partition: p, from: 0)
            while let (batch, first) = try reader.next() {
                if batch.kind == .readings { all += batch.readings[first...] }
            }
        }
        return all
    }
}

public func r(_ id: String, _ ts: Int64, type: String = "temperature", value: Double = 1) -> Reading {
    Reading(sensorID: id, type: type, value: value, location: "lab", timestamp: ts)
}
