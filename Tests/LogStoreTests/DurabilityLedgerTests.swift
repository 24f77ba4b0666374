import TestSupport
import Testing

@testable import LogStore

/// The durability bookkeeping alone: written and durable ends, waiters completed in order.
@Suite struct DurabilityLedgerTests {
    @Test func waitersCompleteInOrderAndDurabilityOnlyMovesForward() {
        var ledger = DurabilityLedger(durableUpTo: 10, position: 100)
        ledger.wrote(upTo: 15)
        let first = ledger.waiter()
        ledger.wrote(upTo: 20)
        let second = ledger.waiter()
        #expect(ledger.hasUnsynced && first.target == 15 && second.target == 20)
        #expect(ledger.madeDurable(upTo: 12, position: 120).isEmpty, "nobody waits for 12")
        #expect(ledger.madeDurable(upTo: 17, position: 170).map(\.target) == [15])
        #expect(ledger.madeDurable(upTo: 16, position: 160).isEmpty && ledger.durableEnd == 17 && ledger.durablePosition == 170,
                "durability never moves back")
        #expect(ledger.madeDurable(upTo: 25, position: 250).isEmpty && ledger.durableEnd == 17, "nothing past the written end")
        #expect(ledger.madeDurable(upTo: 20, position: nil).map(\.target) == [20])
        #expect(ledger.durablePosition == 170, "a sync of a segment since closed leaves the position")
        #expect(!ledger.hasUnsynced)
    }

    @Test func aRollBackReturnsEveryWaiterAndARollStartsAtZero() {
        var ledger = DurabilityLedger(durableUpTo: 0, position: 0)
        ledger.wrote(upTo: 5)
        _ = ledger.waiter()
        _ = ledger.madeDurable(upTo: 5, position: 50)
        ledger.wrote(upTo: 9)
        let lost = ledger.waiter()
        #expect(ledger.rollBack().map(\.target) == [9] && lost.result == nil)
        #expect(ledger.writtenEnd == 5 && ledger.durableEnd == 5 && ledger.durablePosition == 50)
        ledger.wrote(upTo: 8)
        let waiting = ledger.waiter()
        #expect(ledger.rolled().map(\.target) == [8])
        #expect(waiting.target == 8 && ledger.durableEnd == 8 && ledger.durablePosition == 0)
    }
}
