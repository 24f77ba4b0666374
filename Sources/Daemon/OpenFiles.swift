import Foundation
import Glibc
import Logging
import SensorLogCore

/// The open-file limit against the connection caps: every connection is a descriptor, and a
/// process out of descriptors cannot accept (its accept loop fails) nor open a segment.
enum OpenFiles {
    /// Raises the soft limit to the hard one, then lowers the connection caps if even that cannot
    /// hold both caps plus `fileDescriptorReserve`, saying so.
    /// - Returns: the limits with the caps that fit.
    static func fit(_ limits: Limits, logger: Logger) -> Limits {
        let available = raiseSoftLimit(logger: logger)
        var limits = limits
        // Each partition keeps its active segment and indexes open beside the fixed reserve.
        let reserve = limits.fileDescriptorReserve + 4 * limits.partitions
        let needed = limits.maxConnections + limits.maxHTTPConnections + reserve
        guard available < needed else { return limits }
        // Both doors keep a share in proportion to what was asked.
        let room = max(2, available - reserve)
        let asked = limits.maxConnections + limits.maxHTTPConnections
        let tcp = max(1, room * limits.maxConnections / asked)
        let http = max(1, room - tcp)
        logger.warning("the open-file limit cannot hold the connection caps; lowering them (raise LimitNOFILE or ulimit -n)", metadata: [
            "open_files": "\(available)", "reserve": "\(reserve)",
            "max_connections": "\(limits.maxConnections) -> \(tcp)", "max_http_connections": "\(limits.maxHTTPConnections) -> \(http)",
        ])
        limits.maxConnections = tcp
        limits.maxHTTPConnections = http
        return limits
    }

    /// The soft RLIMIT_NOFILE after raising it as far as the hard limit allows.
    static func raiseSoftLimit(logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(RLIMIT_NOFILE_VALUE, &limit) == 0 else { return 1024 }
        // An unlimited hard limit is not a value setrlimit takes for open files: the kernel's
        // nr_open (1 048 576 by default) bounds it.
        let target = limit.rlim_max == rlim_t.max ? rlim_t(nrOpen()) : limit.rlim_max
        if limit.rlim_cur < target {
            var raised = limit
            raised.rlim_cur = target
            if setrlimit(RLIMIT_NOFILE_VALUE, &raised) == 0 {
                logger.debug("raised the open-file limit", metadata: ["from": "\(limit.rlim_cur)", "to": "\(target)"])
                return Int(target)
            }
        }
        return Int(min(limit.rlim_cur, rlim_t(Int.max)))
    }

    private static func nrOpen() -> Int {
        (try? String(contentsOfFile: "/proc/sys/fs/nr_open", encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) } ?? 1 << 20
    }

    /// Glibc's RLIMIT_NOFILE is an enum constant Swift imports with its own type.
    private static let RLIMIT_NOFILE_VALUE = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
}
