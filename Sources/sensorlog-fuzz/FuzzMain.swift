// The fuzz driver. Built with `-D SENSORLOG_FUZZ -sanitize=fuzzer,address` (tools/fuzz), it is a
// libFuzzer binary running the target `SENSORLOG_FUZZ_TARGET` names (`FuzzDriver.libFuzzerMain`).
// In the ordinary build it lists the targets, replays files through one, and writes the seeds.
import FuzzTargets
#if canImport(Glibc)
import Glibc
#endif

#if SENSORLOG_FUZZ
@_cdecl("sensorlog_fuzz_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    FuzzDriver.libFuzzerMain(argc, argv, targets: FuzzTarget.core)
}
#else
@main
struct SensorLogFuzz {
    static func main() {
        exit(FuzzDriver.main(arguments: Array(CommandLine.arguments.dropFirst()), targets: FuzzTarget.core, seeds: FuzzSeeds.write(to:)))
    }
}
#endif
