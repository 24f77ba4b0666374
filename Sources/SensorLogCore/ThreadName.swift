import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Names the calling thread, as `top -H` and perf show it. Foundation's `Thread.name` does not
/// reach the kernel on Linux (nor is pthread_setname_np visible to Swift), so this writes
/// /proc/thread-self/comm; the kernel keeps 15 bytes.
public func nameCurrentThread(_ name: String) {
    #if os(Linux)
    let fd = open("/proc/thread-self/comm", O_WRONLY)
    guard fd >= 0 else { return }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
    #endif
}

/// Runs blocking work (fsyncs, whole-file reads, SQLite) on a thread of its own, named `name`,
/// and awaits it: on the cooperative pool it would stall every task on two cores.
public func onThread<T: Sendable, E: Error>(_ name: String, _ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
    let result: Result<T, E> = await withCheckedContinuation { continuation in
        Thread {
            nameCurrentThread(name)
            do throws(E) { continuation.resume(returning: .success(try body())) } catch { continuation.resume(returning: .failure(error)) }
        }.start()
    }
    return try result.get()
}
