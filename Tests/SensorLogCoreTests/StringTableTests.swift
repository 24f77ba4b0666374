import PropertyBased
import SensorLogCore
import Testing

@Suite struct StringTableTests {
    /// Operations against a model: insert, overwrite, remove, lookup, clear.
    @Test func behavesLikeADictionary() async {
        // Few distinct keys, so removals and re-insertions of the same key happen often; long
        // keys take the non-inline String path.
        let key = Gen.oneOf(
            Gen.int(in: 0...300).map { "sensor-\($0)" },
            Gen.int(in: 0...50).map { String(repeating: "long-prefix-", count: 3) + "\($0)" },
            Gen.letterOrNumber.string(of: 0...3))
        let op = zip(Gen.int(in: 0...9), key, Gen.int(in: 0...1000))
        await propertyCheck(count: 200, input: op.array(of: 0...600)) { ops in
            var table = StringTable<Int>(placeholder: -1)
            var model: [String: Int] = [:]
            for (kind, k, v) in ops {
                switch kind {
                case 0...4:
                    if let s = table.slot(of: k) { table[slot: s] = v } else { table.insert(k, v) }
                    model[k] = v
                case 5...6:
                    if let s = table.slot(of: k) { table.remove(at: s) }
                    model[k] = nil
                case 7:
                    table[k] = nil
                    model[k] = nil
                case 8:
                    if v % 50 == 0 {
                        table.removeAll()
                        model.removeAll()
                    }
                default:
                    #expect(table[k] == model[k])
                }
                #expect(table.count == model.count)
            }
            for (k, v) in model { #expect(table[k] == v) }
            #expect(Dictionary(uniqueKeysWithValues: table.entries.map { ($0.key, $0.value) }) == model)
        }
    }

    @Test func growsAndShrinksOnClear() {
        var table = StringTable<Int>(placeholder: 0)
        for i in 0..<100_000 { table.insert("s\(i)", i) }
        #expect(table.count == 100_000)
        for i in stride(from: 0, to: 100_000, by: 7) { #expect(table["s\(i)"] == i) }
        #expect(table["s100000"] == nil)
        table.removeAll()
        #expect(table.isEmpty)
        table.insert("a", 1)
        #expect(table["a"] == 1)
    }
}
