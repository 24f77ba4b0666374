import ArgumentParser
import Crypto
import Foundation
import SensorLogCore

/// `sensorlog keys`: API keys for a keys file (`sensorlogd --api-keys-file`).
struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make API keys for sensorlogd's keys file.",
        subcommands: [Add.self])

    /// `sensorlog keys add`: a new random key, printed once; only its SHA-256 is written.
    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a new random API key to a keys file, stored as its SHA-256; print the key once.",
            discussion: """
                The key is printed on standard output and nowhere else: the file holds only \
                `sha256:<hex> <roles>`, so a copy of the file does not give the key away. Send \
                sensorlogd SIGHUP to take the new key without a restart. The file is created \
                with mode 0640 when missing: give it the server's group (chgrp sensorlog FILE).

                Examples:
                  sensorlog keys add --keys-file /etc/sensorlog/keys --role ingest
                  sensorlog keys add --keys-file keys --role read,admin --comment "the operator"
                """)

        @Option(help: "The keys file (sensorlogd --api-keys-file).") var keysFile: String
        @Option(help: "Roles of the key, comma-separated: ingest, read, admin (default ingest,read).") var role: String = "ingest,read"
        @Option(help: "A comment written on the line before the key.") var comment: String?

        func run() throws {
            let roles = role.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard !roles.isEmpty, roles.allSatisfy({ APIRole(rawValue: $0) != nil }) else {
                Terminal.fail("--role: roles are ingest, read and admin, comma-separated; got \(role)", code: .usage)
            }
            if let comment, comment.contains(where: \.isNewline) { Terminal.fail("--comment must be one line", code: .usage) }
            let key = Self.newKey()
            let digest = SHA256.hash(data: Data(key.utf8)).map { String(format: "%02x", $0) }.joined()
            var text = comment.map { "# \($0)\n" } ?? ""
            text += "\(APIKey.hashPrefix)\(digest) \(roles.joined(separator: ","))\n"
            do {
                try Self.append(text, to: keysFile)
            } catch {
                Terminal.fail("cannot write \(keysFile): \(error)", code: .ioError)
            }
            print(key)
        }

        /// 32 random bytes as base64url without padding: 43 characters, 256 bits.
        static func newKey() -> String {
            var generator = SystemRandomNumberGenerator()
            let bytes = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            return "sl_" + Data(bytes).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        }

        /// Appends, creating the file 0600; a file not ending in a newline gets one first.
        static func append(_ text: String, to path: String) throws {
            // 0640: the server's group may read it (the unit runs as its own user; chgrp it).
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0o640)
            guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            defer { close(fd) }
            var bytes = Array(text.utf8)
            if let existing = FileManager.default.contents(atPath: path), let last = existing.last, last != 0x0A { bytes.insert(0x0A, at: 0) }
            var done = 0
            while done < bytes.count {
                let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, $0.count - done) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
                done += n
            }
            guard fsync(fd) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        }
    }
}
