import Foundation
public import LogStore
import Synchronization

/// A switch shared with a fault-injecting `FileOperations`.
public final class Gate: Sendable {
    private let state: Mutex<Bool>
    public init(closed: Bool) { state = Mutex(closed) }
    public var isClosed: Bool { state.withLock { $0 } }
    public func open() { state.withLock { $0 = false } }
    public func close() { state.withLock { $0 = true } }
}

/// Real writes, except while `gate` is closed: then `fault` runs first; it returns true for a
/// failed write (with errno set), false to check the gate again.
public func writes(while gate: Gate, _ fault: @escaping @Sendable () -> Bool) -> FileOperations {
    FileOperations(
        write: { fd, bytes, offset in
            while gate.isClosed {
                if fault() { return -1 }
            }
            return FileOperations.system.write(fd, bytes, offset)
        },
        sync: FileOperations.system.sync)
}

/// A connected TCP socket to 127.0.0.1:`port`.
public func connectTCP(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    precondition(fd >= 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    precondition(rc == 0, "connect failed")
    return fd
}

/// Sends bytes on a fresh TCP connection and closes it.
/// `count` line-protocol lines of sensors `<sensor>-0` … `<sensor>-<sensors - 1>` in turn, one
/// nanosecond apart.
public func lines(_ count: Int, sensor: String, of sensors: Int) -> [UInt8] {
    var text = ""
    for i in 0..<count { text += "temperature,sensor_id=\(sensor)-\(i % sensors),location=l value=1 \(1_700_000_000_000_000_000 + Int64(i))\n" }
    return Array(text.utf8)
}

public func sendTCP(port: Int, _ bytes: [UInt8]) throws {
    let fd = try connectTCP(port: port)
    defer { close(fd) }
    var sent = 0
    while sent < bytes.count {
        let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        precondition(n > 0)
        sent += n
    }
}

/// When a fault-injecting `FileOperations` refused something: a test waits on what it saw
/// (so many attempts, retries spanning so long) instead of sleeping a fixed time.
public final class FaultLog: Sendable {
    private let attempts = Mutex<[ContinuousClock.Instant]>([])

    public init() {}

    public func record() { attempts.withLock { $0.append(.now) } }

    public struct Seen: Sendable {
        public var count: Int
        /// From the first attempt to the last.
        public var span: Duration
    }

    public var seen: Seen {
        attempts.withLock { Seen(count: $0.count, span: ($0.last ?? .now) - ($0.first ?? .now)) }
    }

    /// Waits (60 s times `testTimeScale` at most, then fails) until `condition` holds for what was seen.
    public func wait(until condition: (Seen) -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(60 * testTimeScale)
        while !condition(seen) {
            guard ContinuousClock.now < deadline else { throw FaultLogTimeout(seen: seen) }
            try await Task.sleep(for: .milliseconds(10))
        }
    }
}

public struct FaultLogTimeout: Error {
    public let seen: FaultLog.Seen
}
