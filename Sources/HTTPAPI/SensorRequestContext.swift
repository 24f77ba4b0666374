public import Hummingbird
public import NIOCore
public import SensorLogCore

/// The request context of the API: the correlation id and the client's address.
public struct SensorRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    /// From `X-Request-Id`, or generated; echoed in the response and on every log line.
    public var requestID = ""
    /// The API key the request authenticated with (rate limiting is per key).
    public var apiKey: String?
    /// The roles of that key; nil when no keys are configured.
    public var roles: Set<APIRole>?
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.remoteAddress = source.channel.remoteAddress
    }
}
