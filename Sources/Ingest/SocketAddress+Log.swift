public import NIOCore
#if canImport(Glibc)
import Glibc
#endif

extension SocketAddress {
    /// The address as logs show it, on both listeners: `127.0.0.1:57454` or `[::1]:57454`, not
    /// NIO's `[IPv4]127.0.0.1/127.0.0.1:57454`.
    public var logDescription: String {
        guard let ip = ipAddress, let port else { return pathname ?? "?" }
        if case .v6 = self { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }

    /// Whether the peer is on this host: 127.0.0.0/8, ::1 (or ::ffff:127.x), a Unix socket.
    public var isLocal: Bool {
        switch self {
        case .v4: return ipAddress?.hasPrefix("127.") == true
        case .v6: return ipAddress == "::1" || ipAddress?.hasPrefix("::ffff:127.") == true
        case .unixDomainSocket: return true
        }
    }
}
