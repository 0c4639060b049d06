import AnvilFuzzTargets
import CFuzzDriver
import Foundation

// libFuzzer's driver over one of the fuzz targets (AnvilFuzzTargets). tools/fuzz builds
// this with coverage and AddressSanitizer and links libFuzzer; a plain build says so.
//
// Usage: anvil-fuzz onnx|tensor|engine [libFuzzer flags] [corpus folders]

nonisolated(unsafe) var target = FuzzTarget.onnx

var arguments = CommandLine.arguments
guard arguments.count >= 2, let chosen = FuzzTarget(rawValue: arguments[1]) else {
    FileHandle.standardError.write(Data("usage: anvil-fuzz \(FuzzTarget.allCases.map(\.rawValue).joined(separator: "|")) [libFuzzer flags] [corpus folders]\n".utf8))
    exit(2)
}
target = chosen
arguments.remove(at: 1)
// Models and engines may ask for any size: the memory policy refuses what is above this.
if ProcessInfo.processInfo.environment["ANVIL_MEMORY_LIMIT"] == nil { setenv("ANVIL_MEMORY_LIMIT", "256M", 1) }

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
