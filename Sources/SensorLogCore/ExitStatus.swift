/// How both executables exit, defined once (the numbers are sysexits.h's where one fits):
/// docs/cli.md's table lists them, and tools/check-docs checks that every one is there.
public enum ExitStatus: Int32, Sendable, CaseIterable {
    case ok = 0
    /// `verify` found problems (or some remain after `--repair`); `retention` held back by a group.
    case problemsFound = 1
    /// Bad arguments or configuration (EX_USAGE), a flag or `SENSORLOG_` value that does not parse.
    case usage = 64
    /// The log could not be read: a corrupt batch (EX_DATAERR).
    case dataError = 65
    /// No log where one was expected (EX_NOINPUT).
    case noInput = 66
    /// A listener could not bind its port (EX_UNAVAILABLE).
    case unavailable = 69
    /// An I/O or store error: the log or the aggregates cannot be opened or written, or readings
    /// read at shutdown could not be appended (EX_IOERR).
    case ioError = 74
    /// The data directory is held by another process (EX_TEMPFAIL).
    case locked = 75
}
