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
    let limits: Limits
    let logger: Logger

    init(admin: AdminService, path: String, limits: Limits, logger: Logger) {
        self.admin = admin
        self.path = path
        self.limits = limits
        self.logger = logger
    }

    /// sockaddr_un holds 108 bytes with the terminating zero.
    static let maxPathBytes = 107

    func run() async throws {
        // A socket left by a server killed with -9: the directory lock says none is running.
        unlink(path)
        if path.utf8.count > Self.maxPathBytes {
            logger.error("the data directory's path is too long for the admin socket; sensorlog cannot reach this server (use /admin/ over HTTP)",
                         metadata: ["path": "\(path)", "bytes": "\(path.utf8.count)", "max": "\(Self.maxPathBytes)"])
            try? await gracefulShutdown()
        } else {
            let (path, logger) = (path, logger)
            let app = HTTPServer.makeAdminSocket(path: path, admin: admin, limits: limits, logger: logger) {
                // Before the first request can be served: only the owner may connect.
                chmod(path, 0o600)
                logger.info("admin socket listening", metadata: ["path": "\(DataLayout.adminSocketDisplay)"])
            }
            try await app.run()
        }
        unlink(path)
        await admin.stopJobs()
    }
}
