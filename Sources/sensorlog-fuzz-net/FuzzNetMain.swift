// `sensorlog-fuzz` with the targets of the networking modules too (FuzzTargetsNet): the same
// driver (FuzzMain.swift in sensorlog-fuzz), over `NetTargets.all`.
import FuzzTargets
import FuzzTargetsNet
#if canImport(Glibc)
import Glibc
#endif

#if SENSORLOG_FUZZ
@_cdecl("sensorlog_fuzz_net_main")
func fuzzMain(_ argc: Int32, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> Int32 {
    FuzzDriver.libFuzzerMain(argc, argv, targets: NetTargets.all)
}
#else
@main
struct SensorLogFuzzNet {
    static func main() {
        exit(FuzzDriver.main(arguments: Array(CommandLine.arguments.dropFirst()), targets: NetTargets.all, seeds: NetTargets.writeSeeds(to:)))
    }
}
#endif
