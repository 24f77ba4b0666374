import Foundation
import Ingest
import Logging
import NIOCore

/// Who may reach which listener: the line protocol without its own keys (or client
/// certificates) has no authentication, so with API keys on it stays on loopback unless the
/// operator lets it out.
public enum Access {
    /// Where the line protocol listens.
    public static func lineProtocolHost(_ c: DaemonConfiguration) -> String {
        let authenticated = c.lineProtocolKeys != nil || clientCertificates(c)
        return !c.apiKeys.isEmpty && !authenticated && !isLoopback(c.bind) && !c.tcpBeyondLoopback ? "127.0.0.1" : c.bind
    }

    /// With `--tls-client-ca`, only a client holding a certificate from that CA gets past the handshake.
    static func clientCertificates(_ c: DaemonConfiguration) -> Bool { c.tls?.clientCA != nil }

    /// Says at start-up who can write, naming the ports, and warns where anyone can.
    static func log(_ c: DaemonConfiguration, tcpHost: String, logger: Logger) {
        if !isLoopback(c.bind) && c.tls == nil {
            logger.warning("listening beyond loopback without TLS (--tls-cert, --tls-key): API keys and readings cross the network in clear text",
                           metadata: ["bind": "\(c.bind)"])
        }
        let tcp = "\(tcpHost):\(c.tcpPort)"
        let keys = c.apiKeys
        if clientCertificates(c) {
            logger.info("both listeners require a client certificate from --tls-client-ca; API keys apply on HTTP as well",
                        metadata: ["line_protocol": "\(tcp)", "http_keys": "\(keys.count)", "tcp_keys": "\(c.lineProtocolKeys?.count ?? 0)"])
        } else if let tcpKeys = c.lineProtocolKeys {
            logger.info("line protocol authenticates every connection (QuestDB's ECDSA challenge)",
                        metadata: ["line_protocol": "\(tcp)", "tcp_keys": "\(tcpKeys.count)", "http_keys": "\(keys.count)"])
            if keys.isEmpty && !isLoopback(c.bind) {
                logger.warning("HTTP listens beyond loopback with no API keys: anyone who can reach it can write", metadata: ["bind": "\(c.bind)"])
            }
        } else if keys.isEmpty {
            logger.info("API keys off: no --api-keys-file or SENSORLOG_API_KEYS (the embedded default)")
            if !isLoopback(c.bind) {
                logger.warning("listening beyond loopback with no API keys: anyone who can reach this host can write", metadata: ["bind": "\(c.bind)"])
            }
        } else if tcpHost != c.bind {
            logger.info("API keys on for HTTP; the line protocol has no authentication and listens on loopback only (--tcp-beyond-loopback to open it)",
                        metadata: ["keys": "\(keys.count)", "line_protocol": "\(tcp)"])
        } else if !isLoopback(tcpHost) {
            logger.warning("API keys on for HTTP, but the line protocol listens beyond loopback WITHOUT authentication (--tcp-beyond-loopback): anyone who can reach this port can write",
                           metadata: ["keys": "\(keys.count)", "line_protocol": "\(tcp)"])
        } else {
            logger.info("API keys on for HTTP; the line protocol listens on loopback only", metadata: ["keys": "\(keys.count)", "line_protocol": "\(tcp)"])
        }
    }

    /// Only an address, never a name that merely starts like one (`127.example.com`).
    public static func isLoopback(_ host: String) -> Bool {
        if host == "localhost" { return true }
        return (try? SocketAddress(ipAddress: host, port: 0))?.isLocal ?? false
    }
}
