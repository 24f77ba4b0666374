import ArgumentParser
import Foundation
import SensorLogCore

/// Output helpers shared by the subcommands: JSON to stdout, diagnostics to stderr.
enum Terminal {
    static let isTTY = isatty(2) == 1

    static func printJSON(_ object: Any) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        FileHandle.standardOutput.write(data + Data("\n".utf8))
    }

    static func error(_ message: String) {
        FileHandle.standardError.write(Data("sensorlog: \(message)\n".utf8))
    }

    static func fail(_ message: String, code: ExitStatus) -> Never {
        error(message)
        exit(code.rawValue)
    }
}

extension ExitCode {
    init(_ status: ExitStatus) { self.init(status.rawValue) }
}

/// A progress bar with rate and ETA on a terminal; a plain line every few seconds otherwise.
/// Nothing is drawn during the first second: a bar for a shorter run would show a first
/// fraction and an ETA extrapolated from a few milliseconds, and never move.
final class Progress {
    let label: String
    let started = Date()
    static let quietSeconds = 1.0
    private var lastPrint: Date?
    private var done: Int64 = 0
    private var total: Int64 = 1

    init(label: String) { self.label = label }

    func update(done: Int64, total: Int64) {
        self.done = done
        self.total = total
        let now = Date()
        guard now.timeIntervalSince(started) >= Self.quietSeconds else { return }
        if let lastPrint, now.timeIntervalSince(lastPrint) < (Terminal.isTTY ? 0.1 : 5) { return }
        lastPrint = now
        draw(now: now)
    }

    /// Ends a bar that was drawn at 100 %.
    func finish() {
        guard lastPrint != nil else { return }
        done = max(done, total)
        draw(now: Date())
        if Terminal.isTTY { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    private func draw(now: Date) {
        let fraction = total > 0 ? min(1, Double(done) / Double(total)) : 0
        let elapsed = now.timeIntervalSince(started)
        let rate = Double(done) / max(elapsed, 1e-9) / 1e6
        let eta = fraction > 0 ? elapsed / fraction - elapsed : 0
        if Terminal.isTTY {
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data(String(format: "\r%@ [%@] %3.0f%% %.1f MB/s ETA %.0fs ", label, bar, fraction * 100, rate, eta).utf8))
        } else {
            FileHandle.standardError.write(Data(String(format: "%@: %.0f%% %.1f MB/s ETA %.0fs\n", label, fraction * 100, rate, eta).utf8))
        }
    }
}
