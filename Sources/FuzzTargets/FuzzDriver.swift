#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Writes to standard error (diagnostics; stdout is for `--list`).
func printError(_ message: String, terminator: String = "\n") {
    FileHandle.standardError.write(Data((message + terminator).utf8))
}

/// What `sensorlog-fuzz` does outside libFuzzer: lists the targets, and replays files (a corpus,
/// a crash libFuzzer saved) through one, so a crash is repeated and debugged in a plain build.
public enum FuzzDriver {
    /// The environment variable that names the target the instrumented binary runs.
    public static let targetVariable = "SENSORLOG_FUZZ_TARGET"

    /// The target `SENSORLOG_FUZZ_TARGET` names, looked up once (libFuzzer calls in for every input).
    public static func targetFromEnvironment(_ targets: [FuzzTarget]) -> FuzzTarget {
        guard let name = ProcessInfo.processInfo.environment[targetVariable] else {
            printError("sensorlog-fuzz: set \(targetVariable) to one of: \(targets.map(\.name).joined(separator: " "))")
            exit(64)
        }
        guard let target = targets.first(where: { $0.name == name }) else {
            printError("sensorlog-fuzz: no target '\(name)'; known: \(targets.map(\.name).joined(separator: " "))")
            exit(64)
        }
        return target
    }

    /// Every regular file under `path` (or `path` itself), sorted.
    public static func files(under path: String) -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [] }
        guard isDirectory.boolValue else { return [path] }
        let names = (FileManager.default.enumerator(atPath: path)?.allObjects as? [String]) ?? []
        return names.map { path + "/" + $0 }.filter {
            var dir: ObjCBool = false
            return FileManager.default.fileExists(atPath: $0, isDirectory: &dir) && !dir.boolValue && !$0.hasSuffix("/.gitkeep")
        }.sorted()
    }

    /// Runs each file through `target`.
    /// - Returns: how many files ran.
    @discardableResult
    public static func replay(_ paths: [String], through target: FuzzTarget) -> Int {
        var n = 0
        for path in paths.flatMap(files(under:)) {
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            data.withUnsafeBytes { target.run($0) }
            n += 1
        }
        return n
    }

    /// Runs inputs made from the files under `paths` by random mutations (libFuzzer's simplest
    /// ones: flip a bit, set a byte, insert, erase, copy within, splice two inputs, cut) until
    /// `runs` inputs or `seconds` have gone, for a build without libFuzzer: the brief fuzz that
    /// `tools/test` gives the networking targets (`tools/fuzz --smoke`), whose instrumented build
    /// it cannot afford. The inputs are deterministic on `seed`. Each is written to `Scratch.root` before it runs, so the one that trapped is left.
    /// - Returns: how many inputs ran.
    @discardableResult
    public static func mutate(_ paths: [String], through target: FuzzTarget, runs: Int = .max, seconds: Double? = nil, seed: UInt64) -> Int {
        let pool = paths.flatMap(files(under:)).compactMap { FileManager.default.contents(atPath: $0).map { [UInt8]($0) } }
        let current = Scratch.root + "/input"
        var random = Mutator(seed: seed)
        let end = seconds.map { ContinuousClock.now + .milliseconds(Int64($0 * 1000)) }
        var ran = 0
        while ran < runs, end.map({ ContinuousClock.now < $0 }) ?? true {
            ran += 1
            let input = random.mutate(pool.isEmpty ? [] : pool[random.below(pool.count)], pool: pool)
            _ = FileManager.default.createFile(atPath: current, contents: Data(input))
            // libFuzzer's -timeout=10: an input that hangs a target is a finding, and SIGALRM's
            // default action ends the process with the input left in place.
            alarm(10)
            input.withUnsafeBytes { target.run($0) }
            alarm(0)
        }
        return ran
    }

    /// `sensorlog-fuzz --list`, `sensorlog-fuzz TARGET FILE|DIR...`, `sensorlog-fuzz --seed DIR`,
    /// `sensorlog-fuzz --mutate TARGET RUNS|SECONDSs FILE|DIR...`.
    public static func main(arguments: [String], targets: [FuzzTarget], seeds: (String) throws -> Void) -> Int32 {
        let usage = """
            usage: sensorlog-fuzz --list
                   sensorlog-fuzz TARGET FILE|DIR...   run each file through TARGET (a corpus, a crash)
                   sensorlog-fuzz --seed DIR           write the seed corpora, DIR/<target>/…
                   sensorlog-fuzz --mutate TARGET RUNS|SECONDSs FILE|DIR...
                                                       random mutations of the files through TARGET
                                                       (seed: SENSORLOG_TEST_SEED, else random; printed)
            The fuzzing itself is the instrumented build of this binary: tools/fuzz TARGET.

            """
        guard let first = arguments.first else {
            printError(usage, terminator: "")
            return 64
        }
        switch first {
        case "--list":
            for t in targets { print("\(t.name)\t\(t.summary)") }
            return 0
        case "--seed":
            guard arguments.count == 2 else { printError(usage, terminator: ""); return 64 }
            do { try seeds(arguments[1]) } catch {
                printError("sensorlog-fuzz: \(error)")
                return 1
            }
            return 0
        case "--mutate":
            // LIMIT: a number of inputs, or seconds ("3s").
            let limit = arguments.count >= 4 ? arguments[2] : ""
            let seconds = limit.hasSuffix("s") ? Double(limit.dropLast()) : nil
            let runs = seconds == nil ? Int(limit) : .max
            guard arguments.count >= 4, let target = targets.first(where: { $0.name == arguments[1] }),
                  let runs, runs >= 0, (0...86_400).contains(seconds ?? 0) else {
                printError(usage, terminator: "")
                return 64
            }
            let seed = ProcessInfo.processInfo.environment["SENSORLOG_TEST_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 0...UInt64(UInt32.max))
            printError("\(target.name): mutations for \(limit), SENSORLOG_TEST_SEED=\(seed) (an input that traps is left in \(Scratch.root)/input)")
            let ran = mutate(Array(arguments.dropFirst(3)), through: target, runs: runs, seconds: seconds, seed: seed)
            print("\(target.name): \(ran) mutated inputs, no property failed")
            return 0
        case "-h", "--help":
            print(usage, terminator: "")
            return 0
        default:
            guard let target = targets.first(where: { $0.name == first }), arguments.count >= 2 else {
                printError(usage, terminator: "")
                return 64
            }
            let paths = Array(arguments.dropFirst())
            if let missing = paths.first(where: { !FileManager.default.fileExists(atPath: $0) }) {
                printError("sensorlog-fuzz: no such file or directory: \(missing)")
                return 66
            }
            let n = replay(paths, through: target)
            print("\(target.name): \(n) inputs, no property failed")
            return 0
        }
    }
}

/// The mutations of `FuzzDriver.mutate`, on SplitMix64.
struct Mutator {
    private var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(max(n, 1))) }

    /// One to four mutations of `input`.
    mutating func mutate(_ input: [UInt8], pool: [[UInt8]]) -> [UInt8] {
        var bytes = input
        for _ in 0...below(4) {
            let at = below(bytes.count + 1)
            switch below(7) {
            case 0 where !bytes.isEmpty: bytes[min(at, bytes.count - 1)] ^= UInt8(1) << below(8)
            case 1 where !bytes.isEmpty: bytes[min(at, bytes.count - 1)] = UInt8(truncatingIfNeeded: next())
            case 2: bytes.insert(contentsOf: (0..<1 + below(8)).map { _ in UInt8(truncatingIfNeeded: next()) }, at: at)
            case 3: bytes.removeSubrange(at..<min(bytes.count, at + 1 + below(16)))
            case 4 where !bytes.isEmpty:
                let from = below(bytes.count)
                bytes.insert(contentsOf: bytes[from..<min(bytes.count, from + 1 + below(32))], at: at)
            case 5 where !pool.isEmpty:
                let other = pool[below(pool.count)]
                bytes = Array(bytes[..<at]) + other[min(other.count, below(other.count + 1))...]
            default: bytes.removeLast(below(bytes.count + 1) / 2)
            }
        }
        return bytes
    }
}

#if SENSORLOG_FUZZ
/// The target this libFuzzer process runs, set once by `libFuzzerMain` before the first input.
nonisolated(unsafe) private var libFuzzerTarget: FuzzTarget?

/// What libFuzzer calls with each input. Its own `main` (linked in with `-sanitize=fuzzer`)
/// refers to it; `libFuzzerMain` passes it to the driver.
@_cdecl("LLVMFuzzerTestOneInput")
public func LLVMFuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    if libFuzzerTarget == nil { libFuzzerTarget = FuzzDriver.targetFromEnvironment(FuzzTarget.core) }
    libFuzzerTarget!.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// libFuzzer's driver, for a program with its own `main` (compiler-rt: FuzzerInterface.h).
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

extension FuzzDriver {
    /// The instrumented executable's entry point. SwiftPM links an executable with `main`
    /// aliased to `<module>_main` (so that tests may import it), which keeps libFuzzer's own
    /// `main` out: the executable defines that symbol and calls this, which runs libFuzzer.
    public static func libFuzzerMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                                     targets: [FuzzTarget]) -> Int32 {
        libFuzzerTarget = targetFromEnvironment(targets)
        var argc = argc
        var argv = argv
        return LLVMFuzzerRunDriver(&argc, &argv) { data, size in LLVMFuzzerTestOneInput(data, size) }
    }
}
#endif
