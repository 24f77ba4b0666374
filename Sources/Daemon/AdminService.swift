import Aggregator
import Foundation
import HTTPAPI
import Ingest
import LogStore
import Logging
import SensorLogCore
import Synchronization

/// The operator's jobs inside the running server: what `sensorlog compact`, `retention`,
/// `reset-offsets --execute`, `rebuild-aggregates`, `verify --repair` and `delete-sensor` do
/// on a stopped server, done while it serves (docs/operations.md). One job of an operation at a
/// time; the jobs that change segments take turns with the server's own maintenance.
///
/// A request is checked before anything starts: bad fields (400), an unknown sensor or group
/// (404), a job of the same operation running (409), a reset of the aggregator (400). Then
/// the job runs in the background and `GET /admin/jobs/{id}` follows it.
final class AdminService: AdminOperations {
    let log: Log
    let pipeline: IngestPipeline
    let aggregator: AggregatorService
    let maintenance: MaintenanceService
    let logger: Logger
    let jobs = AdminJobs()
    /// Held by whatever rebuilds the aggregates in place (`rebuild-aggregates`, and `verify
    /// --repair` when it must): one rebuild at a time, one pause of the aggregator.
    let rebuildWork = AsyncLock()
    /// Set at shutdown: no new job starts, and running ones stop at their next batch.
    let stopping = Atomic<Bool>(false)

    let operations = ["compact", "retention", "reset-offsets", "rebuild-aggregates", "verify", "delete-sensor"]

    init(log: Log, pipeline: IngestPipeline, aggregator: AggregatorService, maintenance: MaintenanceService, logger: Logger) {
        self.log = log
        self.pipeline = pipeline
        self.aggregator = aggregator
        self.maintenance = maintenance
        self.logger = logger
    }

    /// What a job does once started, on the server's behalf.
    typealias Work = @Sendable (AdminJob) async throws -> AdminJob.Outcome

    func start(_ operation: String, body bytes: [UInt8]) async throws(AdminRefusal) -> String {
        var body = try AdminBody(bytes)
        let work: Work
        switch operation {
        case "compact": work = try await compactJob(&body)
        case "retention": work = try retentionJob(&body)
        case "reset-offsets": work = try resetJob(&body)
        case "rebuild-aggregates": work = try rebuildJob(&body)
        case "verify": work = try verifyJob(&body)
        case "delete-sensor": work = try await deleteJob(&body)
        default: throw AdminRefusal(status: 404, code: "not_found", "no admin operation \(operation)")
        }
        try body.finish()
        guard !stopping.load(ordering: .relaxed) else {
            throw AdminRefusal(status: 503, code: "shutting_down", "sensorlogd is shutting down")
        }
        let job = try jobs.begin(operation, parameters: body.json, now: log.configuration.time.wallNanoseconds)
        logger.info("admin job started", metadata: ["job": "\(job.id)", "operation": "\(operation)", "parameters": "\(body.json)"])
        Task { await self.run(job, work) }
        return job.json
    }

    /// Stops taking jobs and returns once the running ones have ended (shutdown).
    func stopJobs() async {
        stopping.store(true, ordering: .relaxed)
        while jobs.all().contains(where: \.isRunning) { try? await Task.sleep(for: .milliseconds(5)) }
    }

    func jobsJSON() -> String { "{\"jobs\":[" + jobs.all().reversed().map(\.json).joined(separator: ",") + "]}" }

    func jobJSON(_ id: Int) -> String? { jobs.job(id)?.json }

    private func run(_ job: AdminJob, _ work: Work) async {
        let outcome: AdminJob.Outcome
        do {
            outcome = try await work(job)
        } catch let failure as JobFailure {
            outcome = failure.outcome
        } catch {
            outcome = JobFailure(code: "io", "\(error)", exit: .ioError).outcome
        }
        job.finish(outcome, at: log.configuration.time.wallNanoseconds)
        var metadata: Logger.Metadata = ["job": "\(job.id)", "operation": "\(job.operation)", "exit_code": "\(outcome.exitCode.rawValue)"]
        if let error = outcome.error {
            metadata["error"] = "\(error.message)"
            logger.warning("admin job failed", metadata: metadata)
        } else {
            logger.info("admin job done", metadata: metadata.merging(["summary": "\(outcome.summary.last ?? "")"]) { $1 })
        }
    }
}

/// A job that ended without doing its work, or refused part of it: the outcome says why.
struct JobFailure: Error {
    var outcome: AdminJob.Outcome

    init(code: String, _ message: String, exit: ExitStatus, result: [String: Any]? = nil, summary: [String] = []) {
        outcome = AdminJob.Outcome(result: result.map(jsonText) ?? "null", summary: summary + [message], exitCode: exit,
                                   error: (code, message))
    }
}

extension AdminJob.Outcome {
    static func done(_ result: [String: Any], summary: [String]) -> AdminJob.Outcome {
        AdminJob.Outcome(result: jsonText(result), summary: summary, exitCode: .ok, error: nil)
    }
}
