import Cluster
public import ArgumentParser
import Foundation
import Ingest
import LogStore
import Logging
import MQTT
import SensorLogCore

/// What sensorlogd runs with, once flags, environment and defaults are resolved.
struct Settings {
    var dataDir: String
    var tcpPort: Int
    var httpPort: Int
    var bind: String
    /// Nil when neither a flag nor the environment asked for a count (the log's own count wins).
    var partitions: Int?
    var fsync: FsyncPolicy
    var fsyncIntervalMs: Int
    var segmentBytes: Int
    var keysFile: String?
    var rateLimit: Double?
    var corsOrigin: String?
    var maxBodyBytes: Int
    var maxWriteBodyBytes: Int
    var maxConnections: Int
    var maxSensors: Int
    var maxHTTPConnections: Int
    var httpHeaderTimeoutSeconds: Int
    var httpRequestTimeoutSeconds: Int
    var idleTimeoutSeconds: Int
    var maxLineBytes: Int
    var sensorTypes: [String]
    var logLevel: Logger.Level
    var tcpAuthFile: String?
    var tcpBeyondLoopback: Bool
    var retention: RetentionPolicy
    var maintenanceIntervalSeconds: Int
    var compaction: Switch
    var compactionBytesPerSecond: Int64
    var mqtt: MQTTConfiguration?
    var tls: ServerTLS.Files?
    var cluster: ClusterConfiguration?
}

/// An `on`/`off` setting.
enum Switch: String, ExpressibleByArgument, CaseIterable {
    case on, off
}

/// The environment's side of every flag: `SENSORLOG_` plus the flag in capitals with underscores.
///
/// A value is parsed by the same `ExpressibleByArgument` initialiser as the flag, so
/// `SENSORLOG_FSYNC=Always` fails exactly as `--fsync Always` does: start-up stops with exit 64
/// and the variable's name. Falling back to a default instead would run with weaker durability,
/// or on another port, than the operator asked for.
struct Environment {
    static let prefix = "SENSORLOG_"
    var variables: [String: String]

    init(_ variables: [String: String] = ProcessInfo.processInfo.environment) {
        self.variables = variables
    }

    /// The raw value of `SENSORLOG_<name>`; an empty value counts as unset.
    func text(_ name: String) -> String? {
        variables[Self.prefix + name].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The flag's value if given, else the variable's parsed value, else nil.
    /// - Throws: `ValidationError` naming the variable when its value does not parse.
    func value<T: ExpressibleByArgument>(_ flag: T?, _ name: String) throws -> T? {
        if let flag { return flag }
        guard let text = text(name) else { return nil }
        guard let parsed = T(argument: text) else {
            var expected = ""
            if !T.allValueStrings.isEmpty { expected = " (expected one of: \(T.allValueStrings.joined(separator: ", ")))" }
            throw ValidationError("\(Self.prefix)\(name)='\(text)' is not a valid value\(expected)")
        }
        return parsed
    }

    /// Variables with the prefix that no flag reads: most likely a misspelt name.
    func unknownNames(known: Set<String>) -> [String] {
        variables.keys.filter { $0.hasPrefix(Self.prefix) && !known.contains(String($0.dropFirst(Self.prefix.count))) }.sorted()
    }
}

extension FsyncPolicy: ExpressibleByArgument {}
extension Logger.Level: @retroactive ExpressibleByArgument {}
