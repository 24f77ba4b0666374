import Foundation
public import Hummingbird
import HummingbirdCore
import Logging
import Ingest
import NIOCore
import SensorLogCore

/// What the server does for `/admin/`: jobs that change the log while it serves. The HTTP layer
/// only authenticates, routes and relays; the daemon decides (and knows the files).
public protocol AdminOperations: Sendable {
    /// The operations `POST /admin/{operation}` starts.
    var operations: [String] { get }
    /// Starts `operation` with the request's JSON body (empty: defaults).
    /// - Returns: the job's JSON object.
    /// - Throws: why nothing was started (and nothing changed).
    func start(_ operation: String, body: [UInt8]) async throws(AdminRefusal) -> String
    /// `{"jobs":[...]}`, newest first.
    func jobsJSON() -> String
    /// One job's JSON object, or nil for an unknown id.
    func jobJSON(_ id: Int) -> String?
}

/// A refused admin request: its HTTP status (400, 404, 409), a stable code, a message naming
/// the field or the running job.
public struct AdminRefusal: Error, Sendable {
    public var status: Int
    public var code: String
    public var message: String
    public var field: String?

    public init(status: Int, code: String, _ message: String, field: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
    }
}

enum AdminRoutes {
    /// `POST /admin/{operation}` → 202 and the job (`Location: /admin/jobs/{id}`);
    /// `GET /admin/jobs`, `GET /admin/jobs/{id}`.
    static func add(_ admin: any AdminOperations, to routes: Routes, maxBodyBytes: Int) {
        routes.get("/admin/jobs") { _, context in
            try authorize(context)
            return JSONBody.response(.ok, raw: admin.jobsJSON() + "\n")
        }
        routes.get("/admin/jobs/:id") { _, context in
            try authorize(context)
            guard let id = context.parameters.get("id").flatMap({ Int($0) }), let job = admin.jobJSON(id) else {
                throw APIError(.notFound, code: "unknown_job", "no such job", field: "id")
            }
            return JSONBody.response(.ok, raw: job + "\n")
        }
        for operation in admin.operations {
            routes.post("/admin/\(operation)") { request, context in
                try authorize(context)
                // A browser sends application/json to another origin only after asking (CORS
                // preflight): a page open on the server's host cannot start a job by a plain POST.
                guard request.headers[.contentType]?.lowercased().hasPrefix("application/json") == true else {
                    throw APIError(.unsupportedMediaType, code: "unsupported_media_type",
                                   "an admin request's body is JSON: send Content-Type: application/json")
                }
                let body = try await request.body.collect(upTo: maxBodyBytes)
                let job: String
                do {
                    job = try await admin.start(operation, body: Array(buffer: body))
                } catch let error as AdminRefusal {
                    throw APIError(HTTPResponse.Status(code: error.status), code: error.code, error.message, field: error.field)
                }
                var response = JSONBody.response(.accepted, raw: job + "\n")
                if let id = Self.id(of: job) { response.headers[.location] = "/admin/jobs/\(id)" }
                return response
            }
        }
    }

    /// Checked by the route itself, whatever path reached it: a key with the admin role, or,
    /// without keys, a client on this host (loopback, or the admin socket).
    static func authorize(_ context: SensorRequestContext) throws {
        if let roles = context.roles {
            guard roles.contains(.admin) else { throw APIError(.forbidden, code: "forbidden", "this API key lacks the admin role this route needs") }
        } else if !(context.remoteAddress?.isLocal ?? false) {
            throw APIError(.forbidden, code: "forbidden", "/admin/ answers on loopback only when no API keys are configured")
        }
    }

    private static func id(of job: String) -> Int? {
        (try? JSONSerialization.jsonObject(with: Data(job.utf8)) as? [String: Any])?["id"] as? Int
    }
}

/// On the admin socket whoever may connect may administer (the socket's mode and folder say
/// who may): every request there has the admin role.
struct AdminSocketTrust: RouterMiddleware {
    typealias Context = SensorRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.roles = [.admin]
        return try await next(request, context)
    }
}
