#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HTTPAPI
import Hummingbird
import LogStore
import Logging
import SensorLogCore
import ServiceLifecycle

/// The admin routes on a Unix domain socket in the data directory, mode 0600: whoever may
/// touch the files may administer, with no key. `sensorlog` finds the running server there.
/// On shutdown it stops taking jobs and waits for the running ones (stopped at their next
/// batch) before the aggregator and the log close under them.
final class AdminSocketService: Service {
    let admin: AdminService
    let path: String
    let staging: String
    let staged: String
    let limits: Limits
    let logger: Logger

    init(admin: AdminService, layout: DataLayout, limits: Limits, logger: Logger) {
        self.admin = admin
        self.path = layout.adminSocket
        staging = layout.adminSocketStaging
        staged = layout.adminSocketStaged
        self.limits = limits
        self.logger = logger
    }

    /// sockaddr_un holds 108 bytes with the terminating zero.
    static let maxPathBytes = 107

    func run() async throws {
        if let why = prepare() {
            logger.error("cannot listen on the admin socket; sensorlog cannot reach this server (use /admin/ over HTTP)",
                         metadata: ["path": "\(path)", "reason": "\(why)"])
            try? await gracefulShutdown()
        } else {
            let (path, staging, staged, logger) = (path, staging, staged, logger)
            let app = HTTPServer.makeAdminSocket(path: staged, admin: admin, limits: limits, logger: logger) {
                // Bound inside a folder only this user may enter; once only the owner may
                // connect, it moves to where sensorlog looks for it.
                if chmod(staged, 0o600) != 0 || rename(staged, path) != 0 {
                    logger.error("cannot put the admin socket in place; sensorlog cannot reach this server (use /admin/ over HTTP)",
                                 metadata: ["path": "\(path)", "error": "\(String(cString: strerror(errno)))"])
                    return
                }
                rmdir(staging)
                logger.info("admin socket listening", metadata: ["path": "\(DataLayout.adminSocketDisplay)"])
            }
            try await app.run()
        }
        unlink(path)
        unlink(staged)
        rmdir(staging)
        await admin.stopJobs()
    }

    /// Clears what a server killed with -9 left (the directory lock says none runs now) and
    /// makes the private folder. Returns why it cannot, if it cannot.
    private func prepare() -> String? {
        unlink(path)
        unlink(staged)
        rmdir(staging)
        let longest = max(path.utf8.count, staged.utf8.count)
        if longest > Self.maxPathBytes {
            return "the data directory's path is too long for a socket (\(longest) bytes, at most \(Self.maxPathBytes))"
        }
        if mkdir(staging, 0o700) != 0 { return "cannot create \(staging): \(String(cString: strerror(errno)))" }
        return nil
    }
}
