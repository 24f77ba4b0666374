/// One append's wait for durability, completed by whoever makes its records durable (the sync
/// thread, the commit journal, a roll or a flush) or fails them (a rollback).
final class DurabilityWaiter: @unchecked Sendable {
    let target: Int64
    var result: Result<Void, LogError>?
    var continuation: CheckedContinuation<Result<Void, LogError>, Never>?

    init(target: Int64) { self.target = target }

    /// Sets the result and resumes a suspended waiter (which only enqueues its task).
    func complete(_ result: Result<Void, LogError>) {
        self.result = result
        continuation?.resume(returning: result)
        continuation = nil
    }
}

/// Where a partition's appends stand: written (visible to readers in this process), durable
/// (an fdatasync returned for them), and which appends wait for which. A value: the partition's
/// lock guards it, and it never moves durability backwards except through `rollBack`.
struct DurabilityLedger {
    /// The next offset to be written.
    private(set) var writtenEnd: Int64
    /// Offsets below this are on stable storage.
    private(set) var durableEnd: Int64
    /// The position in the active segment that `durableEnd` corresponds to.
    private(set) var durablePosition: Int64
    private var waiters: [DurabilityWaiter] = []

    /// A partition opened with everything up to `end` (at `position` of its active segment) durable.
    init(durableUpTo end: Int64, position: Int64) {
        writtenEnd = end
        durableEnd = end
        durablePosition = position
    }

    var hasUnsynced: Bool { writtenEnd != durableEnd }

    /// Appends up to `end` are written.
    mutating func wrote(upTo end: Int64) { writtenEnd = end }

    /// A waiter for everything written so far.
    mutating func waiter() -> DurabilityWaiter {
        let waiter = DurabilityWaiter(target: writtenEnd)
        waiters.append(waiter)
        return waiter
    }

    /// Records up to `end` are durable; `position` is where they end in the active segment
    /// (nil when they ended in a segment since closed). Only ever moves forward.
    /// - Returns: the waiters now satisfied, to complete.
    mutating func madeDurable(upTo end: Int64, position: Int64?) -> [DurabilityWaiter] {
        if end > durableEnd && end <= writtenEnd {
            durableEnd = end
            if let position { durablePosition = position }
        }
        let done = waiters.prefix { $0.target <= durableEnd }.count
        defer { waiters.removeFirst(done) }
        return Array(waiters.prefix(done))
    }

    /// Everything written is durable (a flush): it ends at `position` of the active segment.
    mutating func allDurable(position: Int64) -> [DurabilityWaiter] {
        durableEnd = writtenEnd
        durablePosition = position
        return madeDurable(upTo: writtenEnd, position: position)
    }

    /// Everything written is durable, and the active segment is a fresh one (a roll).
    mutating func rolled() -> [DurabilityWaiter] {
        durablePosition = 0
        return madeDurable(upTo: writtenEnd, position: nil)
    }

    /// A failed fdatasync: what was written past the durable point is gone.
    /// - Returns: every waiter, to fail.
    mutating func rollBack() -> [DurabilityWaiter] {
        writtenEnd = durableEnd
        defer { waiters.removeAll() }
        return waiters
    }
}
