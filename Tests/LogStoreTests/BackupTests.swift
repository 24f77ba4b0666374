import Foundation
import SensorLogCore
import TestSupport
import Testing

@testable import LogStore

@Suite struct BackupTests {
    /// A one-partition log of 64 KiB segments, several of them closed.
    func makeLog(_ path: String) throws {
        var limits = Limits()
        limits.partitions = 1
        limits.segmentBytes = 64 << 10
        let log = try Log.open(dataDirectory: path, configuration: LogConfiguration(limits: limits, fsync: .never))
        try log.appendAll(noisyReadings(40_000), batch: 500)
        try log.close()
    }

    /// Flips one byte in the middle of the first (closed) segment of partition 0.
    func flipByteInClosedSegment(_ dataDirectory: String) throws -> String {
        let segments = segmentFiles(dataDirectory, partition: 0)
        try #require(segments.count >= 3)
        let victim = segments[0]
        var bytes = try Data(contentsOf: URL(fileURLWithPath: victim))
        bytes[bytes.count / 2] ^= 0x10
        // In place, as a bad disk or a stray write would: a new inode would spare a hard link.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: victim))
        try handle.seek(toOffset: UInt64(bytes.count / 2))
        try handle.write(contentsOf: bytes[(bytes.count / 2)...].prefix(1))
        try handle.close()
        return victim
    }

    func errors(_ dataDirectory: String) throws -> [VerifyProblem] {
        try LogDirectory(dataDirectory: dataDirectory).verify(partition: 0).problems.filter { $0.severity == .error }
    }

    @Test func aBackupIsAnIndependentCopyOfClosedSegments() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        try makeLog(dir.path + "/data")
        let result = try LogBackup.backup(dataDirectory: dir.path + "/data", to: dir.path + "/backup")
        #expect(result.linked == 0 && result.reflinked + result.copied == result.files)
        _ = try flipByteInClosedSegment(dir.path + "/data")
        #expect(try !errors(dir.path + "/data").isEmpty)
        #expect(try errors(dir.path + "/backup").isEmpty)
    }

    @Test func hardLinksOnlyWhenAskedAndThenShareTheDamage() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        try makeLog(dir.path + "/data")
        let result = try LogBackup.backup(dataDirectory: dir.path + "/data", to: dir.path + "/backup", segments: .hardLink)
        #expect(result.linked > 0)
        _ = try flipByteInClosedSegment(dir.path + "/data")
        #expect(try !errors(dir.path + "/backup").isEmpty)
    }

    @Test func theBackupRestoresToTheSameReadings() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        try makeLog(dir.path + "/data")
        _ = try LogBackup.backup(dataDirectory: dir.path + "/data", to: dir.path + "/backup")
        _ = try LogBackup.restore(from: dir.path + "/backup", into: dir.path + "/restored")
        let original = try readAll(LogDirectory(dataDirectory: dir.path + "/data").reader(partition: 0, from: 0))
        let restored = try readAll(LogDirectory(dataDirectory: dir.path + "/restored").reader(partition: 0, from: 0))
        #expect(restored.count == 40_000 && restored.map(\.offset) == original.map(\.offset))
        #expect(restored.map(\.reading) == original.map(\.reading))
    }

    @Test func restoreRefusesANonEmptyTargetAndWhatIsNotABackup() throws {
        let dir = TemporaryDirectory()
        defer { dir.cleanup() }
        try makeLog(dir.path + "/data")
        #expect { try LogBackup.restore(from: dir.path + "/data", into: dir.path + "/data") } throws: {
            ($0 as? LogError)?.code == .invalidArgument
        }
        #expect { try LogBackup.restore(from: dir.path + "/nothing", into: dir.path + "/new") } throws: {
            ($0 as? LogError)?.code == .invalidLog
        }
        // An empty directory some process holds (a sensorlogd just started on it) is not restored into.
        try FileManager.default.createDirectory(atPath: dir.path + "/held", withIntermediateDirectories: true)
        try withDirectoryLock(dir.path + "/held") { _ in
            #expect { try LogBackup.restore(from: dir.path + "/data", into: dir.path + "/held") } throws: {
                ($0 as? LogError)?.code == .locked
            }
        }
        // Restored under its lock, which the restore releases.
        let restored = try LogBackup.restore(from: dir.path + "/data", into: dir.path + "/held")
        #expect(restored.files > 0)
        try Log.open(dataDirectory: dir.path + "/held").close()
    }
}
