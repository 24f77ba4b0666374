/// One fuzz target: a parser of outside bytes or a reader of on-disk bytes, run on one input and
/// checking properties of what it accepts. A property that fails is a bug, so it traps
/// (`precondition`): libFuzzer then keeps the input, and the replay in `FuzzTests` fails on it.
///
/// Every target is deterministic on its input (no clock, no randomness), so an input that
/// crashed once crashes again; one exception, harmless to the properties: `lp-body` and
/// `mqtt-payload` share one pipeline, whose server timestamps for lines without one go on from
/// the last given. docs/testing.md, "Fuzzing", lists the targets and their properties.
public struct FuzzTarget: Sendable {
    public let name: String
    /// What it runs and what it checks, for `tools/fuzz --list`.
    public let summary: String
    public let run: @Sendable (UnsafeRawBufferPointer) -> Void

    public init(_ name: String, _ summary: String, run: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
        self.name = name
        self.summary = summary
        self.run = run
    }

    /// The targets of this module: parsers and readers without networking.
    public static let core: [FuzzTarget] = [
        FuzzTarget("line", "LineParser, both dialects: accepted lines validate, format with LineFormatter and parse back identical",
                   run: LineTargets.line),
        FuzzTarget("framer", "LineFramer: the same lines and too-long reports however the stream is cut, and as a plain split says",
                   run: LineTargets.framer),
        FuzzTarget("json", "ReadingJSON: accepted bodies re-encode and parse equal; a posted reading accepted passes validation",
                   run: JSONTarget.run),
        FuzzTarget("query", "query parameters and cursors: from/to timestamps, limits, offsets, group names; round trips and bounds",
                   run: QueryTarget.run),
        FuzzTarget("batch", "batch header + CRC + decoder: accepted batches have a valid CRC, fields in bounds, and re-encode equal",
                   run: BatchTarget.run),
        FuzzTarget("recovery", "opening a partition over arbitrary segment and index files: refused with a LogError, or a log that verifies clean",
                   run: RecoveryTarget.recovery),
        FuzzTarget("journal", "commit-journal replay over arbitrary journal files: refused with a LogError, or a log that verifies clean",
                   run: RecoveryTarget.journal),
        FuzzTarget("index", "segment .index/.timeindex and .sensors parsers: accepted entries in bounds, re-encode byte for byte",
                   run: IndexTarget.run),
        FuzzTarget("groups", "groups/NAME.json: accepted offsets in bounds, a commit of them reads back equal",
                   run: StateFileTargets.groups),
        FuzzTarget("retention", "retention.json: accepted floors, written back, read back equal",
                   run: StateFileTargets.retention),
        FuzzTarget("meta", "meta.json: accepted metadata in bounds, written back, read back equal",
                   run: StateFileTargets.meta),
    ]
}

/// A property of an accepted input does not hold: traps with `message`, so libFuzzer keeps the input.
package func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    precondition(condition(), message(), file: file, line: line)
}
