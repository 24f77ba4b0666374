#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A directory for the targets that read files: in /dev/shm when there is one (the log reads
/// through real file descriptors: `FileOperations` is the seam for effects, not for reads), one
/// per process, emptied before each input.
package enum Scratch {
    package static let root: String = {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let path = base + "/sensorlog-fuzz-\(getpid())"
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: Scratch.root) }
        return path
    }()

    /// An empty data directory `name` under the scratch root.
    package static func fresh(_ name: String) -> String {
        let path = root + "/" + name
        try? FileManager.default.removeItem(atPath: path)
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    package static func write(_ bytes: some Collection<UInt8>, to path: String) {
        let dir = (path as NSString).deletingLastPathComponent
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let ok = FileManager.default.createFile(atPath: path, contents: Data(bytes))
        precondition(ok, "cannot write \(path) in the scratch directory")
    }
}
