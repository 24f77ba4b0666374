import Foundation
import Metrics
public import NIOCore
import NIOSSL
import NIOTLS
public import SensorLogCore
import Synchronization

/// TLS on the listeners: the HTTP API (`https://`) and the line protocol (QuestDB's `tcps::`).
///
/// One context serves both. A reload (SIGHUP) reads the files again and swaps the context for
/// connections accepted from then on; a connection keeps the context it began with, so renewing
/// a certificate drops nobody. Files that do not load leave the old context in place.
public final class ServerTLS: Sendable {
    /// Where the PEM files are; read at start-up and on every reload.
    public struct Files: Sendable, Equatable {
        /// The server's certificate, then any intermediates.
        public var certificateChain: String
        public var privateKey: String
        /// CA certificates a client's certificate must chain to; nil asks clients for none.
        public var clientCA: String?

        public init(certificateChain: String, privateKey: String, clientCA: String? = nil) {
            self.certificateChain = certificateChain
            self.privateKey = privateKey
            self.clientCA = clientCA
        }
    }

    public let files: Files
    /// The context new connections get, and its certificate's expiry (Unix seconds).
    private let current: Mutex<(context: NIOSSLContext, notAfter: Int)>
    private let handshakeTimeout: TimeAmount
    private let expiry = Gauge(label: "sensorlog_tls_certificate_expiry_timestamp_seconds")
    private let reloaded = Counter(label: "sensorlog_tls_reloads_total", dimensions: [("result", "ok")])
    private let reloadFailed = Counter(label: "sensorlog_tls_reloads_total", dimensions: [("result", "failed")])
    private let failures: [String: Counter]

    public static let listeners = ["http", "line_protocol"]

    public static let descriptions = [
        MetricDescription("sensorlog_tls_certificate_expiry_timestamp_seconds",
                          help: "When the server certificate in use stops being valid (Unix seconds): alert well before it."),
        MetricDescription("sensorlog_tls_reloads_total",
                          help: "Certificate reloads (SIGHUP) by result; a failed one keeps the certificate in use."),
        MetricDescription("sensorlog_tls_handshake_failures_total",
                          help: "TLS connections closed before their handshake completed (a bad or missing client certificate, plain text on a TLS port, a timeout), by listener."),
    ]

    /// Loads the files.
    /// - Throws: `ServerTLSError` naming the file that does not load.
    public init(files: Files, limits: Limits) throws(ServerTLSError) {
        self.files = files
        let (context, notAfter) = try Self.load(files)
        self.current = Mutex((context, notAfter))
        handshakeTimeout = .nanoseconds(Int64(limits.tlsHandshakeTimeout / .nanoseconds(1)))
        failures = Dictionary(uniqueKeysWithValues: Self.listeners.map {
            ($0, Counter(label: "sensorlog_tls_handshake_failures_total", dimensions: [("listener", $0)]))
        })
        expiry.record(notAfter)
    }

    /// When the certificate in use stops being valid (Unix seconds).
    public var notAfter: Int { current.withLock { $0.notAfter } }

    /// Reads the files again; connections accepted from now on use them.
    /// - Returns: the new certificate's expiry (Unix seconds).
    /// - Throws: `ServerTLSError`; the old context stays.
    @discardableResult
    public func reload() throws(ServerTLSError) -> Int {
        do {
            let (new, notAfter) = try Self.load(files)
            // The metrics first: whoever sees the new certificate sees them too.
            expiry.record(notAfter)
            reloaded.increment()
            current.withLock { $0 = (new, notAfter) }
            return notAfter
        } catch {
            reloadFailed.increment()
            throw error
        }
    }

    /// Puts TLS first in a new connection's pipeline, with a deadline for its handshake.
    /// - Parameter listener: one of `listeners`, for the failure count.
    public func addHandlers(to channel: any Channel, listener: String) throws {
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(NIOSSLServerHandler(context: current.withLock { $0.context }))
        let failures = failures[listener]
        try sync.addHandler(TLSHandshakeGuard(timeout: handshakeTimeout, countFailure: { failures?.increment() }))
    }

    /// Loads the files without keeping them: `sensorlogd` checks its flags before it starts.
    public static func check(_ files: Files) throws(ServerTLSError) {
        _ = try load(files)
    }

    static func load(_ files: Files) throws(ServerTLSError) -> (NIOSSLContext, Int) {
        let chain = try certificates(files.certificateChain, "--tls-cert")
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        } catch {
            throw ServerTLSError("--tls-key \(files.privateKey): not a readable PEM private key (\(error))")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        // TLS 1.0 and 1.1 are deprecated (RFC 8996); every client this serves speaks 1.2.
        configuration.minimumTLSVersion = .tlsv12
        // Closing waits this long for the peer's close_notify; a line-protocol producer never
        // reads its socket, so it never answers, and a shutdown must not wait for it long.
        configuration.shutdownTimeout = .seconds(1)
        if let ca = files.clientCA {
            configuration.trustRoots = .certificates(try certificates(ca, "--tls-client-ca"))
            // A client must present a certificate that chains to the CA; its name is not checked
            // (a client has no host name to match).
            configuration.certificateVerification = .noHostnameVerification
            // Names the acceptable CAs, so a client holding several certificates picks the right one.
            configuration.sendCANameList = true
        }
        do {
            return (try NIOSSLContext(configuration: configuration), chain[0].notValidAfter)
        } catch {
            throw ServerTLSError("--tls-cert \(files.certificateChain) and --tls-key \(files.privateKey) do not make a TLS context (a key that is not the certificate's?): \(error)")
        }
    }

    private static func certificates(_ path: String, _ flag: String) throws(ServerTLSError) -> [NIOSSLCertificate] {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMFile(path)
        } catch {
            throw ServerTLSError("\(flag) \(path): not a readable PEM certificate file (\(error))")
        }
        guard !chain.isEmpty else { throw ServerTLSError("\(flag) \(path): no certificate in it") }
        return chain
    }
}

public struct ServerTLSError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Right after the TLS handler: closes a connection whose handshake has not completed within
/// the timeout (a silent or trickling client holds a slot no longer), and counts handshakes that
/// fail: an error, the peer closing, or the deadline. A close the server starts for its own
/// reasons (a shutdown, the HTTP connection cap) is not the client's failure and is not counted.
/// Reads only the event loop's clock, so a test moves it.
final class TLSHandshakeGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private let timeout: TimeAmount
    private let countFailure: () -> Void
    private var deadline: Scheduled<Void>?
    private var done = false

    init(timeout: TimeAmount, countFailure: @escaping () -> Void) {
        self.timeout = timeout
        self.countFailure = countFailure
    }

    func handlerAdded(context: ChannelHandlerContext) {
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !done else { return }
            failed()
            context.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard case .handshakeCompleted = event as? TLSUserEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        finish()
        // Passed on before the guard leaves: once removed, its context forwards nothing.
        context.fireUserInboundEventTriggered(event)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        failed()
        context.fireErrorCaught(error)
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Closed by the peer mid-handshake (a port scan, a plain-text client giving up).
        failed()
        context.fireChannelInactive()
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        finish()
        context.close(mode: mode, promise: promise)
    }

    private func failed() {
        guard !done else { return }
        finish()
        countFailure()
    }

    private func finish() {
        done = true
        deadline?.cancel()
    }
}
