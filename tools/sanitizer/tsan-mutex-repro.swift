// Why tools/sanitizer/tsan.supp may suppress a race between two `Mutex.withLock` bodies:
// ThreadSanitizer does not see Synchronization.Mutex hand the lock over when it is contended.
// Two threads change an Int only inside `withLock`; the count comes out right, and TSan still
// reports a "Swift access race". With NSLock in place of Mutex it reports nothing.
//
//   swiftc -sanitize=thread -Onone tools/sanitizer/tsan-mutex-repro.swift -o /tmp/repro && /tmp/repro
import Foundation
import Synchronization

final class Box: @unchecked Sendable { var n = 0 }
let box = Box()
let lock = Mutex<Void>(())
let done = Atomic<Int>(0)
let threads = (0..<2).map { _ in
    Thread {
        for _ in 0..<200_000 { lock.withLock { _ in box.n += 1 } }
        done.add(1, ordering: .sequentiallyConsistent)
    }
}
threads.forEach { $0.start() }
while done.load(ordering: .sequentiallyConsistent) < 2 { usleep(1000) }
print("n =", lock.withLock { _ in box.n }, "(400000 expected)")
