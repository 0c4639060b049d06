import AnvilFuzzTargets
import CFuzzDriver
import Foundation

// libFuzzer's driver over one of the fuzz targets (AnvilFuzzTargets). tools/fuzz builds
// this with coverage and AddressSanitizer and links libFuzzer; a plain build says so.
//
// Usage: anvil-fuzz onnx|tensor|engine [libFuzzer flags] [corpus folders]

nonisolated(unsafe) var target = FuzzTarget.onnx

var arguments = CommandLine.arguments
// The target is the first argument; libFuzzer's fork and merge modes start this binary again
// with its own flags only, so it also passes to them through the environment.
if arguments.count >= 2, let chosen = FuzzTarget(rawValue: arguments[1]) {
    target = chosen
    arguments.remove(at: 1)
    setenv("ANVIL_FUZZ_TARGET", chosen.rawValue, 1)
} else if let name = ProcessInfo.processInfo.environment["ANVIL_FUZZ_TARGET"], let chosen = FuzzTarget(rawValue: name) {
    target = chosen
} else {
    FileHandle.standardError.write(Data("usage: anvil-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) [libFuzzer flags] [corpus folders]\n".utf8))
    exit(2)
}

var argc = Int32(arguments.count)
var cStrings: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
let status = cStrings.withUnsafeMutableBufferPointer { buffer -> Int32 in
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = buffer.baseAddress
    return anvil_fuzz_run(&argc, &argv) { data, size in
        target.run(Array(UnsafeBufferPointer(start: data, count: size)))
        return 0
    }
}
if status == -1 {
    FileHandle.standardError.write(Data("anvil-fuzz: this binary has no libFuzzer; build it with tools/fuzz\n".utf8))
    exit(2)
}
exit(status)
