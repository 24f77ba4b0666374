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
        // A socket left by a server killed with -9: the directory lock says none is running.
        unlink(path)
        unlink(staged)
        rmdir(staging)
        if staged.utf8.count > Self.maxPathBytes || mkdir(staging, 0o700) != 0 {
            logger.error("cannot listen on the admin socket (the data directory's path is too long for a socket, or it is not writable); sensorlog cannot reach this server (use /admin/ over HTTP)",
                         metadata: ["path": "\(staged)", "bytes": "\(staged.utf8.count)", "max": "\(Self.maxPathBytes)"])
            try? await gracefulShutdown()
        } else {
            let (path, staging, staged, logger) = (path, staging, staged, logger)
            let app = HTTPServer.makeAdminSocket(path: staged, admin: admin, limits: limits, logger: logger) {
                // Bound inside a folder only this user may enter; once only the owner may
                // connect, it moves to where sensorlog looks for it.
                chmod(staged, 0o600)
                rename(staged, path)
                rmdir(staging)
                logger.info("admin socket listening", metadata: ["path": "\(DataLayout.adminSocketDisplay)"])
            }
            try await app.run()
        }
        unlink(path)
        await admin.stopJobs()
    }
}
