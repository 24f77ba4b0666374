#if canImport(Glibc)
import Glibc
#endif
import CNATS
import Synchronization

/// How a node reaches the NATS cluster: every server's URL (nats.c picks one, and reconnects to
/// another when it goes away), and the credentials and TLS the servers require.
public struct NATSConfiguration: Sendable {
    public var urls: [String]
    /// The connection's name, as the servers' monitoring shows it (the node id).
    public var name: String
    /// A `.creds` file (NATS decentralised auth), a user and password, or a token: at most one.
    public var credentialsFile: String?
    public var user: String?
    public var password: String?
    public var token: String?
    /// TLS to the servers: the CA that signed their certificates, and a client certificate.
    public var tlsCAFile: String?
    public var tlsCertFile: String?
    public var tlsKeyFile: String?
    /// How long a JetStream API call (and a publish's acknowledgement) may take.
    public var requestTimeoutMilliseconds: Int64 = 2_000
    /// How long a connection attempt to one server may take.
    public var connectTimeoutMilliseconds: Int64 = 2_000
    /// A server that answers no ping for `maxPingsOut` intervals is left for another: a stopped
    /// (not dead) server keeps its socket open, and nats.c's default (2 minutes, 2 pings) would
    /// stall a node for minutes.
    public var pingIntervalMilliseconds: Int64 = 1_000
    public var maxPingsOut: Int32 = 3

    public init(urls: [String], name: String) {
        self.urls = urls
        self.name = name
    }
}

/// One connection to the NATS cluster and its JetStream context. nats.c's connection and context
/// are safe to share between threads; their calls block, so callers run them off event loops.
public final class NATSConnection: @unchecked Sendable {
    let connection: OpaquePointer
    let jetStream: OpaquePointer
    public let configuration: NATSConfiguration

    public init(_ configuration: NATSConfiguration) throws(NATSError) {
        self.configuration = configuration
        var options: OpaquePointer?
        try check(natsOptions_Create(&options), "cannot create NATS options")
        defer { natsOptions_Destroy(options) }
        try Self.configure(options, configuration)
        var nc: OpaquePointer?
        try check(natsConnection_Connect(&nc, options), "cannot connect to \(configuration.urls.joined(separator: ","))")
        var jsOptions = jsOptions()
        jsOptions_Init(&jsOptions)
        jsOptions.Wait = configuration.requestTimeoutMilliseconds
        var js: OpaquePointer?
        do { try check(natsConnection_JetStream(&js, nc, &jsOptions), "cannot open a JetStream context") } catch {
            natsConnection_Destroy(nc)
            throw error
        }
        connection = nc!
        jetStream = js!
    }

    private static func configure(_ options: OpaquePointer?, _ c: NATSConfiguration) throws(NATSError) {
        let copies = c.urls.map { strdup($0) }
        defer { copies.forEach { free($0) } }
        var servers = copies.map { UnsafePointer<CChar>($0) }
        try check(natsOptions_SetServers(options, &servers, Int32(servers.count)), "bad NATS server URLs \(c.urls)")
        try check(natsOptions_SetName(options, c.name), "bad NATS connection name")
        // Never give up on the cluster: a node without NATS refuses writes (503) until it is back.
        try check(natsOptions_SetMaxReconnect(options, -1), "NATS options")
        try check(natsOptions_SetReconnectWait(options, 100), "NATS options")
        try check(natsOptions_SetTimeout(options, c.connectTimeoutMilliseconds), "NATS options")
        try check(natsOptions_SetPingInterval(options, c.pingIntervalMilliseconds), "NATS options")
        try check(natsOptions_SetMaxPingsOut(options, c.maxPingsOut), "NATS options")
        if let file = c.credentialsFile { try check(natsOptions_SetUserCredentialsFromFiles(options, file, nil), "cannot read NATS credentials \(file)") }
        if let user = c.user { try check(natsOptions_SetUserInfo(options, user, c.password), "NATS user") }
        if let token = c.token { try check(natsOptions_SetToken(options, token), "NATS token") }
        if let ca = c.tlsCAFile {
            try check(natsOptions_SetSecure(options, true), "NATS TLS")
            try check(natsOptions_LoadCATrustedCertificates(options, ca), "cannot read the NATS CA \(ca)")
        }
        if let cert = c.tlsCertFile, let key = c.tlsKeyFile {
            try check(natsOptions_LoadCertificatesChain(options, cert, key), "cannot read the NATS client certificate \(cert)")
        }
    }

    /// The URL of the server this connection is on now.
    public var connectedURL: String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard natsConnection_GetConnectedUrl(connection, &buffer, buffer.count) == NATS_OK else { return nil }
        return String(cString: buffer)
    }

    private let closed = Mutex(false)

    /// Closes the connection; a second call does nothing. No call may follow.
    public func close() {
        guard closed.withLock({ (done: inout Bool) -> Bool in
            defer { done = true }
            return !done
        }) else { return }
        jsCtx_Destroy(jetStream)
        natsConnection_Close(connection)
        natsConnection_Destroy(connection)
    }
}
