import LogStore
import SensorLogCore
import Synchronization

/// What became of a submission: counts, and each reading's outcome when asked for.
public struct SubmissionResult: Sendable {
    public var appended = 0
    public var duplicates = 0
    public var mismatches = 0
    public var tooOld = 0
    public var deleted = 0
    public var tooManySensors = 0
    public var outcomes: [IngestOutcome]?
    /// The first reading refused (its index in the submission) and why: what a summary log line
    /// shows when no per-reading report was asked for.
    public var firstRefused: (index: Int, outcome: IngestOutcome)?
    /// The first reading refused for a reason other than being a duplicate: what a producer
    /// must hear about (a duplicate is as good as stored).
    public var firstProblem: (index: Int, outcome: IngestOutcome)?

    mutating func refuse(_ index: Int, _ outcome: IngestOutcome) {
        outcomes?[index] = outcome
        if firstRefused == nil { firstRefused = (index, outcome) }
        if firstProblem == nil { firstProblem = (index, outcome) }
    }

    /// The refused counts under the reasons metrics and logs name them by.
    var refusals: [(reason: String, count: Int)] {
        [("duplicate", duplicates), ("type_mismatch", mismatches), ("too_old", tooOld), ("deleted", deleted),
         ("too_many_sensors", tooManySensors)]
    }
}

extension SubmissionResult {
    /// An empty result, with room for each reading's outcome when `detailed`.
    public init(detailed: Bool) {
        self.init()
        outcomes = detailed ? [] : nil
    }
}

/// A sensor deleted: its deletion record's partition and offset, and the newest reading deleted.
public struct SensorDeletion: Sendable, Equatable {
    public var sensorID: String
    public var partition: Int
    public var offset: Int64
    public var lastReading: Int64
}

/// Readings whose sensor is bound to another type: (index, the sensor's type).
struct TypeConflicts: Error {
    var conflicts: [(index: Int, expected: String)]
}

/// What became of one submitted reading.
public enum IngestOutcome: Sendable, Equatable {
    case appended(partition: Int, offset: Int64)
    case duplicate
    /// The sensor's first reading fixed another type.
    case typeMismatch(expected: String)
    /// Older than what retention removed from its partition: it may have been counted already.
    case tooOld
    /// Of a sensor deleted since, at or before the newest reading the deletion removed.
    case deleted
    /// Of a sensor the server does not know yet, when it knows `Limits.maxSensors` already.
    case tooManySensors

    /// The reason a refused reading is counted and logged under (as `SubmissionResult.refusals`);
    /// nil for an appended one.
    public var reason: String? {
        switch self {
        case .appended: nil
        case .duplicate: "duplicate"
        case .typeMismatch: "type_mismatch"
        case .tooOld: "too_old"
        case .deleted: "deleted"
        case .tooManySensors: "too_many_sensors"
        }
    }
}

/// The sensors every partition's dedupe knows, against `Limits.maxSensors` (0: no bound).
final class SensorBudget: Sendable {
    let limit: Int
    private let count = Atomic<Int>(0)

    init(limit: Int) { self.limit = limit }

    /// Takes room for a new sensor; false when the bound is reached.
    func take() -> Bool {
        var current = count.load(ordering: .relaxed)
        while limit == 0 || current < limit {
            let (exchanged, seen) = count.compareExchange(expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged { return true }
            current = seen
        }
        return false
    }

    /// Sensors already in the log at start-up count whatever the bound.
    func add(_ n: Int) { count.add(n, ordering: .relaxed) }
    func release(_ n: Int) { count.subtract(n, ordering: .relaxed) }
}
