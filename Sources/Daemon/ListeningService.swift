import ServiceLifecycle
import Synchronization

/// A listener's failure before it listened (a port in use, an address not on this host), told
/// apart from failures while it serves so that start-up can name the port and exit 69.
struct ListenError: Error {
    var underlying: any Error
}

/// Runs a server `Service` and turns an error it throws before `markListening()` into `ListenError`.
final class ListeningService<Wrapped: Service>: Service {
    private let listening = Atomic<Bool>(false)
    private let box = Mutex<Wrapped?>(nil)

    /// Call from the wrapped service's on-listening hook.
    func markListening() { listening.store(true, ordering: .releasing) }

    func wrap(_ service: Wrapped) { box.withLock { $0 = service } }

    func run() async throws {
        guard let service = box.withLock({ $0 }) else { fatalError("ListeningService run before wrap") }
        do {
            try await service.run()
        } catch where !listening.load(ordering: .acquiring) {
            throw ListenError(underlying: error)
        }
    }
}
