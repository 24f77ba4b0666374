import Foundation
import HTTPAPI
import SensorLogCore
import Synchronization

/// One operator job run by the server (`/admin/`, or `sensorlog` through the admin socket):
/// what it is, how far it got, how it ended. Progress is what the tool draws as its bar.
final class AdminJob: Sendable {
    let id: Int
    let operation: String
    /// The request's parameters, as JSON text.
    let parameters: String
    let started: Int64

    /// How a job ended.
    struct Outcome: Sendable {
        /// The result document (what `sensorlog … --json` prints), as JSON text.
        var result: String
        /// What `sensorlog` prints without `--json`, a line each.
        var summary: [String]
        /// The tool's exit status for it (docs/cli.md).
        var exitCode: ExitStatus
        /// Why it failed, when it did: a stable code and a message.
        var error: (code: String, message: String)?
    }

    private struct State {
        var phase = "starting"
        var done: Int64 = 0
        var total: Int64 = 0
        var finished: Int64?
        var outcome: Outcome?
    }

    private let state = Mutex(State())

    init(id: Int, operation: String, parameters: String, started: Int64) {
        self.id = id
        self.operation = operation
        self.parameters = parameters
        self.started = started
    }

    var isRunning: Bool { state.withLock { $0.outcome == nil } }

    func progress(done: Int64, total: Int64) {
        state.withLock {
            $0.done = done
            $0.total = total
        }
    }

    func phase(_ phase: String) { state.withLock { $0.phase = phase } }

    func finish(_ outcome: Outcome, at time: Int64) {
        state.withLock {
            $0.outcome = outcome
            $0.finished = time
            $0.phase = outcome.error == nil ? "done" : "failed"
            if outcome.error == nil { $0.done = max($0.done, $0.total) }
        }
    }

    /// `{"id","operation","parameters","state","phase","progress":{"done","total"},"started",
    /// "finished","result","summary","error","exit_code"}`.
    var json: String {
        let s = state.withLock { $0 }
        let stateName = s.outcome == nil ? "running" : s.outcome?.error == nil ? "succeeded" : "failed"
        var fields = [
            "\"id\":\(id)", "\"operation\":\(quoted(operation))", "\"parameters\":\(parameters)",
            "\"state\":\"\(stateName)\"", "\"phase\":\(quoted(s.phase))",
            "\"progress\":{\"done\":\(s.done),\"total\":\(s.total)}",
            "\"started\":\(quoted(Timestamp.formatISO8601(started)))",
            "\"finished\":\(s.finished.map { quoted(Timestamp.formatISO8601($0)) } ?? "null")",
        ]
        if let outcome = s.outcome {
            fields += ["\"result\":\(outcome.result)", "\"summary\":\(jsonText(outcome.summary))",
                       "\"error\":\(outcome.error.map { "{\"code\":\(quoted($0.code)),\"message\":\(quoted($0.message))}" } ?? "null")",
                       "\"exit_code\":\(outcome.exitCode.rawValue)"]
        } else {
            fields += ["\"result\":null", "\"summary\":[]", "\"error\":null", "\"exit_code\":null"]
        }
        return "{" + fields.joined(separator: ",") + "}"
    }
}

/// The jobs the server has run, newest last: one of an operation at a time.
final class AdminJobs: Sendable {
    /// Finished jobs kept for `GET /admin/jobs`.
    static let kept = 100
    private let jobs = Mutex<[AdminJob]>([])
    private let nextID = Atomic<Int>(1)

    /// Registers a new job, unless one of the same operation is running (409 naming it).
    func begin(_ operation: String, parameters: String, now: Int64) throws(AdminRefusal) -> AdminJob {
        try jobs.withLock { (jobs: inout [AdminJob]) throws(AdminRefusal) -> AdminJob in
            if let running = jobs.first(where: { $0.operation == operation && $0.isRunning }) {
                throw AdminRefusal(status: 409, code: "job_running",
                                   "a \(operation) job is already running (job \(running.id), started \(Timestamp.formatISO8601(running.started)))")
            }
            let job = AdminJob(id: nextID.wrappingAdd(1, ordering: .relaxed).oldValue, operation: operation, parameters: parameters, started: now)
            jobs.append(job)
            if jobs.count > Self.kept, let done = jobs.firstIndex(where: { !$0.isRunning }) { jobs.remove(at: done) }
            return job
        }
    }

    func all() -> [AdminJob] { jobs.withLock { $0 } }

    func job(_ id: Int) -> AdminJob? { jobs.withLock { $0.first { $0.id == id } } }
}

/// A JSON string literal.
func quoted(_ text: String) -> String { jsonText(text) }

/// Any JSON value (strings, numbers, arrays, objects of them) as compact, key-sorted text.
func jsonText(_ value: Any) -> String {
    guard let data = try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]) else {
        return "null"
    }
    return String(decoding: data, as: UTF8.self)
}
