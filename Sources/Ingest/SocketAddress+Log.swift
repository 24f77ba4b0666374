public import NIOCore

extension SocketAddress {
    /// The address as logs show it, on both listeners: `127.0.0.1:57454` or `[::1]:57454`, not
    /// NIO's `[IPv4]127.0.0.1/127.0.0.1:57454`.
    public var logDescription: String {
        guard let ip = ipAddress, let port else { return pathname ?? "?" }
        if case .v6 = self { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }
}
