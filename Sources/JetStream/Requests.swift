#if canImport(Glibc)
import Glibc
#endif
import CNATS
import Foundation
import Synchronization

/// A request a subscription received: its bytes, and how to answer it.
public struct IncomingRequest: @unchecked Sendable {
    public let subject: String
    public let data: [UInt8]
    let reply: String?
    let connection: NATSConnection

    /// Answers the requester (nothing happens for a message sent without a reply subject).
    public func respond(_ bytes: [UInt8]) {
        guard let reply else { return }
        _ = bytes.withUnsafeBufferPointer { natsConnection_Publish(connection.connection, reply, $0.baseAddress, Int32($0.count)) }
    }
}

/// A subscription to a plain NATS subject (not JetStream): its handler runs on nats.c's thread
/// for it, so it must not block; it hands the work to a task.
public final class Subscription: @unchecked Sendable {
    let pointer: OpaquePointer
    private let done = Mutex(false)

    init(pointer: OpaquePointer) {
        self.pointer = pointer
    }

    /// Stops delivery. The handler may still run once more, or be running: nats.c lets the
    /// handler go (its on-complete callback) only once it will not run again.
    public func unsubscribe() {
        guard done.withLock({ (d: inout Bool) -> Bool in defer { d = true }; return !d }) else { return }
        natsSubscription_Unsubscribe(pointer)
    }

    deinit {
        unsubscribe()
        natsSubscription_Destroy(pointer)
    }
}

final class HandlerBox {
    let connection: NATSConnection
    let handle: @Sendable (IncomingRequest) -> Void
    init(connection: NATSConnection, handle: @escaping @Sendable (IncomingRequest) -> Void) {
        self.connection = connection
        self.handle = handle
    }
}

private func deliver(_: OpaquePointer?, _: OpaquePointer?, _ message: OpaquePointer?, _ closure: UnsafeMutableRawPointer?) {
    guard let message, let closure else { return }
    defer { natsMsg_Destroy(message) }
    let box = Unmanaged<HandlerBox>.fromOpaque(closure).takeUnretainedValue()
    let count = Int(natsMsg_GetDataLength(message))
    let data = count == 0 ? [] : Array(UnsafeRawBufferPointer(start: natsMsg_GetData(message), count: count))
    let reply = natsMsg_GetReply(message).map { String(cString: $0) }
    let subject = natsMsg_GetSubject(message).map { String(cString: $0) } ?? ""
    box.handle(IncomingRequest(subject: subject, data: data, reply: reply, connection: box.connection))
}

extension NATSConnection {
    /// Subscribes to `subject`; `handler` gets every message until `unsubscribe`.
    public func subscribe(_ subject: String, _ handler: @escaping @Sendable (IncomingRequest) -> Void) throws(NATSError) -> Subscription {
        let box = Unmanaged.passRetained(HandlerBox(connection: self, handle: handler))
        var sub: OpaquePointer?
        let status = natsConnection_Subscribe(&sub, connection, subject, { deliver($0, $1, $2, $3) }, box.toOpaque())
        guard status == NATS_OK, let sub else {
            box.release()
            throw NATSError(status, what: "cannot subscribe to \(subject)")
        }
        // The box goes when nats.c says no message will be delivered any more.
        natsSubscription_SetOnCompleteCB(sub, { Unmanaged<HandlerBox>.fromOpaque($0!).release() }, box.toOpaque())
        return Subscription(pointer: sub)
    }

    /// Sends `data` to whoever subscribes to `subject` and waits for the first answer. Blocks:
    /// call it through `NATSConnection.offPool`.
    /// - Throws: `.noResponders` when nobody subscribes, `.timeout` when nobody answered in time.
    public func request(_ subject: String, _ data: [UInt8], timeoutMilliseconds: Int64) throws(NATSError) -> [UInt8] {
        var reply: OpaquePointer?
        let status = data.withUnsafeBufferPointer {
            natsConnection_Request(&reply, connection, subject, $0.baseAddress, Int32($0.count), timeoutMilliseconds)
        }
        guard status == NATS_OK, let reply else { throw NATSError(status, what: "request to \(subject) failed") }
        defer { natsMsg_Destroy(reply) }
        let count = Int(natsMsg_GetDataLength(reply))
        return count == 0 ? [] : Array(UnsafeRawBufferPointer(start: natsMsg_GetData(reply), count: count))
    }

    /// Runs a blocking NATS call on a thread of `pool` instead of the cooperative pool, whose
    /// few threads (one a core) would otherwise wait on the network.
    public static func offPool<T: Sendable>(_ pool: BlockingPool, _ body: @escaping @Sendable () throws(NATSError) -> T) async throws(NATSError) -> T {
        let result: Result<T, NATSError> = await withCheckedContinuation { continuation in
            pool.run { continuation.resume(returning: Result { () throws(NATSError) in try body() }) }
        }
        return try result.get()
    }
}

/// Threads of its own for calls that block on the network. Each kind of call has its own pool,
/// so calls that wait on another node (forwarding) never hold the threads that the calls that
/// node waits on (the stream's writes) need: a cycle across nodes would otherwise stall until
/// timeouts. (Dispatch's concurrent queues share one pool about as wide as the cores.)
public final class BlockingPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [@Sendable () -> Void] = []

    /// Starts `threads` threads, which live as long as the process.
    public init(name: String, threads: Int) {
        for i in 0..<threads {
            let thread = Thread { [self] in work() }
            thread.name = "\(name)-\(i)"
            thread.start()
        }
    }

    public func run(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    private func work() {
        while true {
            condition.lock()
            while jobs.isEmpty { condition.wait() }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}

extension KeyValueBucket {
    /// The keys that hold a value now (expired and deleted ones are gone).
    public func keys() throws(NATSError) -> [String] {
        var list = kvKeysList()
        let status = kvStore_Keys(&list, store, nil)
        defer { kvKeysList_Destroy(&list) }
        if status == NATS_NOT_FOUND { return [] }
        try check(status, "cannot list the keys of \(name)")
        return (0..<Int(list.Count)).compactMap { list.Keys[$0].map { String(cString: $0) } }
    }
}
