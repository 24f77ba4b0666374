import Foundation
import Logging
@testable import Ingest
import LineProtocol
import LogStore
import NIOCore
import NIOEmbedded
import NIOPosix
import NIOSSL
import NIOTLS
import SensorLogCore
import Synchronization
import Testing

import TestSupport

@Suite struct DedupeTests {
    @Test func exactOverTheWholeLogInAndOutOfOrder() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        let first = (0..<2000).map { r("s\($0 % 50)", Int64($0)) }
        let o1 = try await f.pipeline.submit(first, via: .tcp)
        #expect(o1.allSatisfy { if case .appended = $0 { return true } else { return false } })
        // A resend, shuffled, with new late readings and in-batch duplicates mixed in.
        var resend = first.shuffled()
        resend += [r("s1", -5), r("s1", -5), r("s2", 100_000), r("s2", 100_000)]
        let o2 = try await f.pipeline.submit(resend, via: .tcp)
        let appended = o2.filter { if case .appended = $0 { return true } else { return false } }.count
        #expect(appended == 2)
        var stored = try f.stored()
        #expect(stored.count == 2002 && stored.values.allSatisfy { $0 == 1 })

        // After a restart the state is rebuilt from the log: still no duplicate gets in.
        let g = try await f.reopen()
        defer { g.close() }
        let o3 = try await g.pipeline.submit(resend + [r("s3", 7_000_000)], via: .http)
        #expect(o3.filter { if case .appended = $0 { return true } else { return false } }.count == 1)
        stored = try g.stored()
        #expect(stored.count == 2003 && stored.values.allSatisfy { $0 == 1 })
    }

    /// Retention cuts into a run of the dedupe's key filters, and background compaction merges the
    /// one-reading batches the runs were made of into batches that begin before a run and end
    /// after it: an out-of-order resend is still found stored (no error, no second copy), one at
    /// or before the floor is refused, and a new reading between stored ones is taken.
    @Test func exactAcrossARetentionCutAndACompactionSwap() async throws {
        let f = try await Fixture.make(partitions: 1)
        defer { f.close() }
        var sent: [Reading] = []
        for i in 0..<10_000 {
            let reading = r("s\(i % 7)", Int64(i) * 1000)
            sent.append(reading)
            _ = try await f.pipeline.submit([reading], via: .tcp)
            if i == 5999 { try f.log.rollActiveSegments() }  // a segment boundary inside the run [4096, 8192)
        }
        try f.log.rollActiveSegments()
        let cut = try await f.log.applyRetention(RetentionPolicy(maxBytes: 0), now: Int64.max, foldedUpTo: [6000],
                                                 floorsRaised: { await f.pipeline.raiseFloors($0) })
        await f.pipeline.logStartMoved()
        #expect(cut.segments == 1 && f.log.partitions[0].startOffset == 6000)
        let afterCut = try await f.pipeline.submit(Array(sent[6000..<6100]).shuffled() + [sent[100]], via: .tcp)
        #expect(afterCut.prefix(100).allSatisfy { $0 == .duplicate }, "\(afterCut.prefix(3))")
        #expect(afterCut.last == .tooOld)

        let compacted = try f.log.compactOnline(partition: 0, memory: CompactionMemory())
        #expect(compacted.runs == 1)
        let resend = Array(sent[8000..<8200]).shuffled() + [r("s1", 8_000_500)]
        let outcomes = try await f.pipeline.submit(resend, via: .tcp)
        #expect(outcomes.prefix(200).allSatisfy { $0 == .duplicate }, "\(outcomes.prefix(3))")
        #expect(outcomes.last == .appended(partition: 0, offset: 10_000))
        #expect(try f.stored().values.allSatisfy { $0 == 1 })
    }

    /// One reading per write makes one-reading batches: the dedupe's per-batch spans merge into
    /// runs (bounded memory), and out-of-order checks stay exact across runs, the run still
    /// growing, a far-future reading that widens every later bound, and a restart.
    @Test func exactWithTinyBatchesAndAFarFutureReading() async throws {
        let f = try await Fixture.make(partitions: 2)
        defer { f.close() }
        var sent: [Reading] = []
        for i in 0..<3000 {
            let reading = i == 10 ? r("s0", 9_000_000_000_000_000_000) : r("s\(i % 20)", Int64(i) * 1000)
            sent.append(reading)
            _ = try await f.pipeline.submit([reading], via: .tcp)
        }
        var late: [Reading] = []
        for i in 0..<40 { late.append(r("s\(i % 20)", Int64(i) * 1000 + 500)) }  // new, between stored ones
        var resend = (sent + late).shuffled()
        var appended = 0
        while !resend.isEmpty {
            let chunk = Array(resend.prefix(10))
            resend.removeFirst(chunk.count)
            appended += try await f.pipeline.submit(chunk, via: .tcp).filter { if case .appended = $0 { return true } else { return false } }.count
        }
        #expect(appended == late.count)
        let g = try await f.reopen()
        defer { g.close() }
        let again = try await g.pipeline.submit((sent + late).shuffled(), via: .http)
        #expect(!again.contains { if case .appended = $0 { return true } else { return false } })
        let stored = try g.stored()
        #expect(stored.count == sent.count + late.count && stored.values.allSatisfy { $0 == 1 })
    }

    /// A backfill written together with live readings makes every run's time bounds span the
    /// whole backfill; a resend of the backfill must still be checked run by run through the
    /// runs' key filters, not by decoding every run for every reading (that took minutes).
    @Test func resendingABackfillMixedWithLiveReadingsIsQuick() async throws {
        let f = try await Fixture.make(partitions: 1)
        defer { f.close() }
        let live: Int64 = 1_900_000_000_000_000_000
        var history: [Reading] = []
        for k in 0..<200 {
            let part = (0..<500).map { i in r("h\(i % 50)", Int64(k * 500 + i) * 1000) }
            history += part
            _ = try await f.pipeline.submit(part + [r("live", live + Int64(k))], via: .tcp)
        }
        let clock = ContinuousClock()
        let started = clock.now
        var duplicates = 0
        for chunk in stride(from: 0, to: history.count, by: 2000) {
            let outcomes = try await f.pipeline.submit(Array(history[chunk..<min(chunk + 2000, history.count)]), via: .tcp)
            duplicates += outcomes.filter { $0 == .duplicate }.count
        }
        #expect(duplicates == history.count)
        // A bound on speed: stretched under a sanitizer, it still catches the minutes it took.
        #expect(clock.now - started < .seconds(30 * testTimeScale), "resend took \(clock.now - started)")
        // And a reading of the backfill's time range that is not stored still goes in.
        let gap = try await f.pipeline.submit([r("h1", 7)], via: .tcp)
        #expect(gap == [.appended(partition: 0, offset: Int64(history.count + 200))])
    }

    @Test func aSensorKeepsTheTypeOfItsFirstReading() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        _ = try await f.pipeline.submit([r("t1", 1, type: "humidity", value: 5)], via: .tcp)
        let o = try await f.pipeline.submit([r("t1", 2, type: "temperature"), r("t1", 3, type: "humidity")], via: .tcp)
        #expect(o[0] == .typeMismatch(expected: "humidity"))
        if case .appended = o[1] {} else { Issue.record("same-type reading refused: \(o[1])") }
        let whole = try await f.pipeline.submitWhole([r("new", 1, type: "pressure"), r("new", 2, type: "humidity"), r("t1", 9)], via: .http)
        guard case .typeConflict(1, "pressure") = whole else { Issue.record("\(whole)"); return }
        // The conflict nearest the start is reported, whichever partition it is in.
        let later = try await f.pipeline.submitWhole([r("x", 1), r("t1", 9), r("new", 3, type: "pressure")], via: .http)
        guard case .typeConflict(1, "humidity") = later else { Issue.record("\(later)"); return }
        #expect(try f.stored().keys.allSatisfy { $0.hasPrefix("t1") })
    }

    /// Arrays that each bring new sensors, with the same sensors' first readings of other types
    /// racing them one by one: every array is written whole or refused whole, and no sensor
    /// ends up with two types.
    @Test func arraysRacingOtherTypesAreWrittenWholeOrNotAtAll() async throws {
        let f = try await Fixture.make(fsync: .always)
        defer { f.close() }
        let sensors = 40
        let arrays = try await withThrowingTaskGroup(of: (Bool, Int)?.self) { group in
            for k in 0..<sensors {
                group.addTask {
                    let items = (0..<6).map { r("race\(k)-\($0 % 3)", Int64($0), type: "temperature") }
                    switch try await f.pipeline.submitWhole(items, via: .http) {
                    case .submitted(let o): return (o.allSatisfy { if case .appended = $0 { true } else { false } }, o.count)
                    case .typeConflict: return (true, 0)
                    }
                }
                group.addTask {
                    _ = try await f.pipeline.submit([r("race\(k)-\(k % 3)", 100, type: "humidity", value: 50)], via: .http)
                    return nil
                }
            }
            var all: [(Bool, Int)] = []
            for try await x in group { if let x { all.append(x) } }
            return all
        }
        #expect(arrays.allSatisfy { $0.0 }, "an array was partly refused after its check")
        let stored = try f.storedReadings()
        var types: [String: Set<String>] = [:]
        for reading in stored { types[reading.sensorID, default: []].insert(reading.type) }
        #expect(types.values.allSatisfy { $0.count == 1 })
        for k in 0..<sensors {
            let fromArray = stored.filter { $0.sensorID.hasPrefix("race\(k)-") && $0.type == "temperature" }.count
            #expect(fromArray == 0 || fromArray == 6, "race\(k): \(fromArray) of 6 array readings stored")
        }
    }

    @Test func concurrentProducersOfTheSameReadingsStoreEachOnce() async throws {
        let f = try await Fixture.make(fsync: .always)
        defer { f.close() }
        let readings = (0..<3000).map { r("c\($0 % 30)", Int64($0)) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for k in 0..<8 {
                group.addTask {
                    let slice = k % 2 == 0 ? readings : readings.reversed()
                    for chunk in stride(from: 0, to: slice.count, by: 250) {
                        _ = try await f.pipeline.submit(Array(slice[chunk..<(chunk + 250)]), via: .tcp)
                    }
                }
            }
            try await group.waitForAll()
        }
        let stored = try f.stored()
        #expect(stored.count == 3000 && stored.values.allSatisfy { $0 == 1 })
    }
}

@Suite struct LineProtocolServerTests {
    @Test func linesOverARealSocketWithBadInputAround() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        var limits = Limits()
        limits.maxLineBytes = 1024
        let server = LineProtocolServer(configuration: .init(host: "127.0.0.1", port: 0, limits: limits), pipeline: f.pipeline, logger: .init(label: "test"))
        let port = try await server.start()
        var text = ""
        for i in 0..<5000 {
            text += "temperature,sensor_id=s\(i % 100),location=l value=\(i).5 \(1_700_000_000_000_000_000 + Int64(i))\n"
            if i % 1000 == 7 { text += "garbage line \(i)\n" + String(repeating: "x", count: 5000) + "\n" }
        }
        text += "temperature,sensor_id=cut,location=l value=1"  // partial last line: dropped
        try sendTCP(port: port, Array(text.utf8))
        let deadline = Date().addingTimeInterval(20 * testTimeScale)
        while try f.stored().count < 5000 && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        await server.shutdown()
        let stored = try f.stored()
        #expect(stored.count == 5000 && stored.values.allSatisfy { $0 == 1 })
        #expect(stored["cut@42"] == nil)
    }
}

extension LineProtocolServerTests {
    func serve(_ f: Fixture, limits: Limits = Limits()) async throws -> (LineProtocolServer, Int) {
        let server = LineProtocolServer(configuration: .init(host: "127.0.0.1", port: 0, limits: limits), pipeline: f.pipeline, logger: .init(label: "test"))
        return (server, try await server.start())
    }

    /// Waits (20 s times `testTimeScale` at most) until `count` readings are stored, shuts the
    /// server down, and expects exactly `count`, each once.
    func expectStoredOnce(_ f: Fixture, _ count: Int, then server: LineProtocolServer) async throws {
        let deadline = Date().addingTimeInterval(20 * testTimeScale)
        while try f.stored().count < count && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        await server.shutdown()
        let stored = try f.stored()
        #expect(stored.count == count && stored.values.allSatisfy { $0 == 1 })
    }
    /// Lines without a timestamp take the receive time; several of one sensor in one packet
    /// are several readings, not one and its duplicates.
    @Test func linesWithoutTimestampsAreEachStored() async throws {
        let f = try await Fixture.make()
        defer { f.close() }
        let (server, port) = try await serve(f)
        try sendTCP(port: port, Array(String(repeating: "temperature,sensor_id=no-ts,location=l value=1\n", count: 50).utf8))
        try sendTCP(port: port, Array(String(repeating: "temperature,sensor_id=no-ts,location=l value=2\n", count: 50).utf8))
        try await expectStoredOnce(f, 100, then: server)
    }

    /// The log refuses writes for a while (disk full): TCP has no acks, so what was read is kept
    /// and retried, not dropped; once writes succeed, every line is stored once.
    @Test func readingsReadWhileTheDiskIsFullLandOnceItIsNot() async throws {
        let full = Gate(closed: true)
        let refused = FaultLog()
        let f = try await Fixture.make(fileOperations: writes(while: full) { refused.record(); errno = ENOSPC; return true })
        defer { f.close() }
        let (server, port) = try await serve(f)
        try sendTCP(port: port, lines(2000, sensor: "full", of: 7))
        // A refused attempt and its retry, seen rather than slept for.
        try await refused.wait(until: { $0.count >= 2 })
        #expect(try f.stored().isEmpty)
        full.open()
        try await expectStoredOnce(f, 2000, then: server)
    }

    /// The idle timeout is for silent producers, not for ones the server paused: a connection held
    /// through a failed append outlives the timeout, and what it sent lands once the log writes.
    /// The idle timer and the retry timer run on the event loop's clock, which a testing event
    /// loop lets the test move: many idle periods pass without a second of waiting.
    @Test func aConnectionPausedByTheServerIsNotIdle() async throws {
        let full = Gate(closed: true)
        let refused = FaultLog()
        let f = try await Fixture.make(fileOperations: writes(while: full) { refused.record(); errno = ENOSPC; return true })
        defer { f.close() }
        let loop = NIOAsyncTestingEventLoop()
        let idle = TimeAmount.seconds(1)
        func connection() async throws -> NIOAsyncTestingChannel {
            let channel = NIOAsyncTestingChannel(loop: loop)
            let handler = LineProtocolHandler(pipeline: f.pipeline, parser: LineParser(validator: f.pipeline.validator), logger: Logger(label: "test"),
                                              maxLineBytes: 64 << 10, maxPendingReadings: 10_000)
            try await channel.pipeline.addHandlers([ReadIdleHandler(timeout: idle), handler])
            try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).get()
            return channel
        }
        let held = try await connection()
        let silent = try await connection()
        try await held.writeInbound(ByteBuffer(bytes: lines(500, sensor: "held", of: 5)))
        // Retries (one per `appendRetryDelay`, 1 s) refused while the clock moves past idle periods.
        // The deadline only guards against a hang: with the whole suite running on two cores,
        // the retries' tasks may wait long for a thread.
        let deadline = ContinuousClock.now + .seconds(120 * testTimeScale)
        var moved = 0
        while refused.seen.count < 3 || moved < 3 {
            try #require(ContinuousClock.now < deadline)
            await loop.advanceTime(by: idle)
            moved += 1
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect(held.isActive, "the server closed a connection it had paused")
        #expect(!silent.isActive, "a silent connection outlived the idle timeout")
        full.open()
        while try f.stored().count < 500 {
            try #require(ContinuousClock.now < deadline)
            await loop.advanceTime(by: .milliseconds(100))
            try await Task.sleep(for: .milliseconds(2))
        }
        let stored = try f.stored()
        #expect(stored.count == 500 && stored.values.allSatisfy { $0 == 1 })
        _ = try? await held.close()
        try await loop.shutdownGracefully()
    }

    /// A submission of duplicates alone writes nothing, so it says nothing about whether the log
    /// can write again: /health stays unavailable until an append succeeds.
    @Test func duplicatesAloneDoNotClearAFailedAppend() async throws {
        let failing = Gate(closed: false)
        let f = try await Fixture.make(fileOperations: writes(while: failing) { errno = EIO; return true })
        defer { f.close() }
        _ = try await f.pipeline.submit([r("d", 1)], via: .http)
        failing.close()
        await #expect(throws: LogError.self) { _ = try await f.pipeline.submit([r("d", 2)], via: .http) }
        #expect(f.pipeline.unavailableReason != nil)
        #expect(try await f.pipeline.submit([r("d", 1)], via: .http) == [.duplicate])
        #expect(f.pipeline.unavailableReason != nil, "a duplicate cleared the failure")
        failing.open()
        #expect(try await f.pipeline.submit([r("d", 2)], via: .http) == [.appended(partition: f.pipeline.partition(for: "d"), offset: 1)])
        #expect(f.pipeline.unavailableReason == nil)
    }

    /// While the log cannot write, a connection must stop reading its socket: the producer's
    /// sends stall after a bounded amount (pending readings plus kernel buffers), instead of the
    /// server parsing everything into memory. Once the log writes again, everything lands once.
    @Test func aStalledLogStopsTheSocketBeingRead() async throws {
        let stalled = Gate(closed: true)
        let f = try await Fixture.make(fileOperations: writes(while: stalled) { usleep(1000); return false })
        defer { f.close() }
        var limits = Limits()
        limits.maxPendingReadingsPerConnection = 1000
        limits.maxSocketReadBytes = 64 << 10
        let (server, port) = try await serve(f, limits: limits)

        // 48 MiB of lines, far more than a paused connection plus the kernel's buffers can absorb.
        var bytes: [UInt8] = []
        var lines = 0
        while bytes.count < 48 << 20 {
            bytes += Array("temperature,sensor_id=s\(lines % 500),location=l value=1.5 \(1_700_000_000_000_000_000 + Int64(lines))\n".utf8)
            lines += 1
        }
        let fd = try connectTCP(port: port)
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        // Send until the server has taken nothing for a second.
        var sent = 0
        var idleSince = Date()
        while sent < bytes.count && Date().timeIntervalSince(idleSince) < 1 {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n > 0 {
                sent += n
                idleSince = Date()
            } else {
                usleep(1000)
            }
        }
        #expect(sent < 24 << 20, "the server read \(sent) bytes while its log could not write")

        stalled.open()
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            try #require(n > 0)
            sent += n
        }
        shutdown(fd, Int32(SHUT_WR))
        try await expectStoredOnce(f, lines, then: server)
    }
}


/// The TLS handshake deadline on the event loop's clock, moved by the test.
@Suite struct TLSHandshakeGuardTests {
    /// Records the events the guard passes on.
    final class Events: ChannelInboundHandler {
        typealias InboundIn = NIOAny
        var seen: [String] = []
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) { seen.append("\(event)") }
    }

    func connected(_ timeout: TimeAmount, failures: Box) throws -> (EmbeddedChannel, Events) {
        let channel = EmbeddedChannel()
        let events = Events()
        try channel.pipeline.syncOperations.addHandler(TLSHandshakeGuard(timeout: timeout, countFailure: { failures.count += 1 }))
        try channel.pipeline.syncOperations.addHandler(events)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        return (channel, events)
    }

    final class Box { var count = 0 }

    @Test func aHandshakeNotDoneByTheDeadlineIsClosedAndCounted() throws {
        let failures = Box()
        let (channel, _) = try connected(.seconds(10), failures: failures)
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        #expect(!channel.isActive)
        #expect(failures.count == 1)
    }

    @Test func aCompletedHandshakeIsPassedOnAndLeavesTheDeadlineAndThePipeline() throws {
        let failures = Box()
        let (channel, events) = try connected(.seconds(10), failures: failures)
        channel.pipeline.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: nil))
        #expect(events.seen.count == 1 && events.seen[0].contains("handshakeCompleted"))
        channel.embeddedEventLoop.advanceTime(by: .seconds(3600))
        #expect(channel.isActive)
        #expect(throws: (any Error).self) { try channel.pipeline.syncOperations.handler(type: TLSHandshakeGuard.self) }
        _ = try channel.finish()
        #expect(failures.count == 0)
    }

    @Test func aCloseTheServerStartsIsNotTheClientsFailure() throws {
        let failures = Box()
        let (channel, _) = try connected(.seconds(10), failures: failures)
        try channel.close().wait()  // a shutdown, or the HTTP cap evicting a connection mid-handshake
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(failures.count == 0)
    }

    @Test func aPeerLeavingMidHandshakeIsCountedOnce() throws {
        let failures = Box()
        let (channel, _) = try connected(.seconds(10), failures: failures)
        channel.pipeline.fireErrorCaught(NIOSSLError.handshakeFailed(.sslError([])))
        channel.pipeline.fireChannelInactive()
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(failures.count == 1)
        // The events above were only told to the pipeline: the channel itself is still open, and
        // an unclosed channel and its pipeline hold each other (LeakSanitizer reports them).
        _ = try? channel.finish()
    }
}
