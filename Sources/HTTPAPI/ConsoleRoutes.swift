import HTTPTypes
import Hummingbird
import NIOCore
import Ingest
import SensorLogCore

/// The web console (`/`, `/console/{file}`) and the API's description (`/openapi.json`), served
/// from bytes compiled into the binary: nothing to deploy, and no CDN, since the machine may be
/// offline. None of them needs a key: they hold no data, and the console asks for the key itself.
enum ConsoleRoutes {
    /// Paths the API-key middleware lets through.
    static func isOpen(_ path: String) -> Bool {
        path == "/" || path == "/openapi.json" || path == "/session" || path.hasPrefix("/console/")
    }

    /// What `/session` answers: whether keys are asked for, and what the key given (or, without
    /// keys, this client) may do, so that the console shows only what will answer 2xx.
    struct Session: Encodable {
        var keysRequired: Bool
        var roles: [String]
        enum CodingKeys: String, CodingKey { case keysRequired = "keys_required", roles }
    }

    static func add(to routes: Routes, keysRequired: Bool) {
        routes.get("/session") { request, context in
            // An unknown key is refused as on every other route, so guesses show in the metrics.
            if keysRequired, context.roles == nil, APIKeyMiddleware.credential(request) != nil {
                throw APIError(.unauthorized, code: "unauthorized", "unknown API key")
            }
            let roles: [APIRole] = keysRequired
                ? (context.roles ?? []).sorted()
                // Without keys /admin/ answers on loopback only (AdminRoutes.authorize).
                : APIRole.allCases.filter { $0 != .admin || (context.remoteAddress?.isLocal ?? false) }
            return JSONBody.response(.ok, Session(keysRequired: keysRequired, roles: roles.map(\.rawValue)))
        }
        routes.get("/") { request, _ in try serve("index.html", request) }
        routes.get("/console/:file") { request, context in try serve(context.parameters.require("file"), request) }
        routes.get("/openapi.json") { request, _ in try serve("openapi.json", request) }
    }

    /// The console's scripts come from this origin only, so an injected string can never run
    /// as code, and no other site may frame the console (clickjacking of the admin buttons).
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"

    static func serve(_ name: String, _ request: Request) throws -> Response {
        guard let asset = EmbeddedAssets.files[name] else {
            throw APIError(.notFound, code: "not_found", "no such console file", field: "file")
        }
        var headers: HTTPFields = [
            .contentType: asset.contentType, .eTag: asset.etag, .cacheControl: "no-cache",
            .xContentTypeOptions: "nosniff", .contentSecurityPolicy: contentSecurityPolicy,
        ]
        headers[HTTPField.Name("Referrer-Policy")!] = "no-referrer"
        if request.headers[.ifNoneMatch] == asset.etag {
            return Response(status: .notModified, headers: headers)
        }
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: asset.text)))
    }
}
