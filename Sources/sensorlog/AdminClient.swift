#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LogStore
import SensorLogCore

/// The tool's side of a running server: when sensorlogd holds the data directory, a command
/// that changes the log asks it, through the admin socket in the data directory, to run the
/// same operation as a job, follows the job with the progress bar, prints what the offline
/// command prints and exits with the same status. Exit 75 only when the server cannot be
/// reached.
enum AdminClient {
    /// Takes the data directory's lock; when sensorlogd holds it, runs `operation` there
    /// instead and exits (never returns then).
    static func lockOrDelegate(_ dataDirectory: String, operation: String, parameters: [String: Any], label: String, json: Bool) -> DirectoryLock {
        do {
            return try DirectoryLock(dataDirectory: dataDirectory)
        } catch where error.code == .locked {
            delegate(dataDirectory, operation: operation, parameters: parameters, label: label, json: json, held: error.message)
        } catch {
            Terminal.fail(error.message, code: .ioError)
        }
    }

    /// Runs `operation` on the server holding `dataDirectory` and exits with the job's status.
    static func delegate(_ dataDirectory: String, operation: String, parameters: [String: Any], label: String, json: Bool,
                         held: String) -> Never {
        let socket = DataLayout(dataDirectory).adminSocket
        let body = (try? JSONSerialization.data(withJSONObject: parameters, options: [.sortedKeys])) ?? Data("{}".utf8)
        let started: [String: Any]
        do {
            let (status, reply) = try request(socket, "POST", "/admin/\(operation)", body: body)
            guard status == 202 else { refused(status, reply) }
            started = reply
        } catch {
            Terminal.fail("\(held); its admin socket \(DataLayout.adminSocketDisplay) does not answer (\(error)): "
                          + "an older sensorlogd, or a data directory path too long for a socket", code: .locked)
        }
        guard let id = started["id"] as? Int else { Terminal.fail("the server's answer names no job", code: .ioError) }
        Terminal.error("sensorlogd is running: \(operation) runs inside it as job \(id) (GET /admin/jobs/\(id))")
        let job = follow(socket, started, label: label)
        finish(job, json: json)
    }

    /// Polls the job until it ends, drawing its progress. A server that restarted meanwhile
    /// (killed, say) knows the job no more, or has another under its id: that is a server that
    /// went away (75), not a refusal.
    private static func follow(_ socket: String, _ started: [String: Any], label: String) -> [String: Any] {
        let id = started["id"] as? Int ?? 0
        let progress = Progress(label: label)
        while true {
            let job: [String: Any]
            do {
                let (status, reply) = try request(socket, "GET", "/admin/jobs/\(id)", body: nil)
                guard status == 200, reply["started"] as? String == started["started"] as? String else {
                    Terminal.fail("sensorlogd restarted while job \(id) ran: its outcome is unknown; run the command again", code: .locked)
                }
                job = reply
            } catch {
                Terminal.fail("lost the server while following job \(id) (\(error)); its state is at GET /admin/jobs/\(id) once it is back",
                              code: .locked)
            }
            if let p = job["progress"] as? [String: Any], let done = p["done"] as? Int64 ?? (p["done"] as? Int).map(Int64.init),
               let total = p["total"] as? Int64 ?? (p["total"] as? Int).map(Int64.init), total > 0 {
                progress.update(done: done, total: total)
            }
            if job["state"] as? String != "running" {
                progress.finish()
                return job
            }
            usleep(100_000)
        }
    }

    /// Prints the job's outcome as the offline command would, and exits with its status.
    private static func finish(_ job: [String: Any], json: Bool) -> Never {
        let summary = job["summary"] as? [String] ?? []
        let error = (job["error"] as? [String: Any])?["message"] as? String
        if json {
            if let result = job["result"], !(result is NSNull) { Terminal.printJSON(result) }
        } else {
            for line in error == nil ? summary : Array(summary.dropLast()) { print(line) }
        }
        if let error { Terminal.error(error) }
        exit(Int32(job["exit_code"] as? Int ?? Int(ExitStatus.ioError.rawValue)))
    }

    /// A request the server refused: its message, and the exit status docs/cli.md gives it.
    private static func refused(_ status: Int, _ reply: [String: Any]) -> Never {
        let message = ((reply["error"] as? [String: Any])?["message"] as? String) ?? "the server answered \(status)"
        switch status {
        case 400, 404: Terminal.fail(message, code: .usage)
        case 409: Terminal.fail(message, code: .problemsFound)
        case 503: Terminal.fail(message, code: .locked)
        default: Terminal.fail(message, code: .ioError)
        }
    }

    struct SocketError: Error, CustomStringConvertible {
        let description: String
    }

    /// One HTTP/1.1 exchange over the Unix socket (`Connection: close`; the body is JSON).
    static func request(_ path: String, _ method: String, _ target: String, body: Data?) throws -> (Int, [String: Any]) {
        let fd = try connect(path)
        defer { close(fd) }
        var head = "\(method) \(target) HTTP/1.1\r\nHost: sensorlog\r\nConnection: close\r\n"
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        try writeAll(fd, Array((head + "\r\n").utf8) + Array(body ?? Data()))
        let reply = try readAll(fd)
        guard let split = reply.firstRange(of: Data("\r\n\r\n".utf8)) else { throw SocketError(description: "a reply without headers") }
        let header = String(decoding: reply[..<split.lowerBound], as: UTF8.self)
        let fields = header.split(separator: "\r\n")
        guard let status = fields.first?.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else {
            throw SocketError(description: "a reply without a status")
        }
        var content = Data(reply[split.upperBound...])
        if fields.contains(where: { $0.lowercased().hasPrefix("transfer-encoding:") && $0.lowercased().contains("chunked") }) {
            content = dechunk(content)
        }
        let object = (try? JSONSerialization.jsonObject(with: content)) as? [String: Any] ?? [:]
        return (status, object)
    }

    private static func connect(_ path: String) throws -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw SocketError(description: "socket path too long") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketError(description: String(cString: strerror(errno))) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else {
            let why = String(cString: strerror(errno))
            close(fd)
            throw SocketError(description: why)
        }
        return fd
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw SocketError(description: String(cString: strerror(errno))) }
            sent += n
        }
    }

    private static func readAll(_ fd: Int32) throws -> Data {
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw SocketError(description: String(cString: strerror(errno))) }
            if n == 0 { return data }
            data.append(contentsOf: buffer[..<n])
        }
    }

    /// A chunked body's content.
    private static func dechunk(_ data: Data) -> Data {
        var out = Data()
        var rest = data[...]
        while let line = rest.firstRange(of: Data("\r\n".utf8)),
              let size = Int(String(decoding: rest[..<line.lowerBound], as: UTF8.self).split(separator: ";")[0], radix: 16), size > 0,
              rest.distance(from: line.upperBound, to: rest.endIndex) >= size {
            let start = line.upperBound
            let end = rest.index(start, offsetBy: size)
            out.append(rest[start..<end])
            rest = rest[min(rest.index(end, offsetBy: 2, limitedBy: rest.endIndex) ?? rest.endIndex, rest.endIndex)...]
        }
        return out
    }
}
