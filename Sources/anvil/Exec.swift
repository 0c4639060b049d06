import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilRuntime
import ArgumentParser
import Foundation

/// trtexec's command line on the CPU: existing trtexec invocations build and time
/// Anvil engines where their flags make sense here; GPU-only flags are refused by name.
struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accept a trtexec command line: --onnx=, --saveEngine=, --loadEngine=, --shapes=, --iterations= ….",
        discussion: """
            Value flags: --onnx --saveEngine --loadEngine --shapes --minShapes --optShapes --maxShapes --iterations --warmUp
            --duration --avgRuns --percentile --exportTimes --exportProfile --exportLayerInfo --loadInputs --threads=N --timingCacheFile --tacticSources (-WINOGRAD)
            --memoryLimit (Anvil's: the largest memory one tensor or arena may take, e.g. 8G).
            --layerPrecisions=name:fp32|bf16|fp16|int8,… --layerOutputTypes=name:fp32|bf16|int8,… --calib=<INT8 calibration cache, as anvil build --calibCache writes>
            Switches: --dumpProfile --verbose --skipInference --separateProfileRun --threads --explicitBatch --bf16 --fp16 --int8.
            --fp16 stores weights in FP16 and computes in FP32 (docs/precision.md).
            GPU-only flags (--device, --useCudaGraph, --streams, --useDLACore …) and precisions other than FP32, BF16, FP16 and INT8 are refused.
            """)

    @Argument(parsing: .captureForPassthrough, help: "trtexec flags.") var arguments: [String] = []

    static let valueFlags: Set<String> = ["onnx", "saveEngine", "loadEngine", "shapes", "minShapes", "optShapes", "maxShapes", "iterations",
                                          "warmUp", "duration", "avgRuns", "percentile", "exportTimes", "exportProfile", "exportLayerInfo",
                                          "loadInputs", "threads", "timingCacheFile", "tacticSources", "memoryLimit", "layerPrecisions", "layerOutputTypes", "calib"]
    static let switches: Set<String> = ["dumpProfile", "verbose", "skipInference", "separateProfileRun", "threads", "explicitBatch", "noTF32", "bf16", "int8", "fp16"]
    static let gpuOnly: Set<String> = ["device", "useCudaGraph", "useSpinWait", "streams", "noDataTransfers", "useDLACore", "allowGPUFallback",
                                       "memPoolSize", "workspace", "useManagedMemory", "persistentCacheRatio", "maxAuxStreams", "dumpRefit",
                                       "refit", "versionCompatible", "hardwareCompatibilityLevel", "plugins", "staticPlugins", "dynamicPlugins",
                                       "safe", "consistency", "stronglyTyped", "builderOptimizationLevel", "sparsity",
                                       "useRuntime", "leanDLLPath", "excludeLeanRuntime"]
    static let unsupportedPrecision: Set<String> = ["fp8", "int4", "best", "precisionConstraints",
                                                    "inputIOFormats", "outputIOFormats"]

    /// Parses `--name=value` and `--name` into (name, value?) pairs, refusing what does not apply.
    static func parse(_ arguments: [String]) throws -> [(name: String, value: String?)] {
        try arguments.map { argument in
            guard argument.hasPrefix("--") || (argument.hasPrefix("-") && argument.count > 1) else {
                throw AnvilError.invalidArgument("'\(argument)' is not a flag; trtexec flags look like --name=value")
            }
            let body = argument.drop { $0 == "-" }
            let name = String(body.prefix { $0 != "=" })
            let value = body.contains("=") ? String(body.drop { $0 != "=" }.dropFirst()) : nil
            if gpuOnly.contains(name) { throw AnvilError.invalidArgument("--\(name) is a GPU-only trtexec flag; Anvil runs on the CPU") }
            if unsupportedPrecision.contains(name) {
                throw AnvilError.invalidArgument("--\(name): this precision is not supported by this Anvil yet (it builds FP32, and BF16, FP16 or INT8 convolutions and matrix products)")
            }
            switch (valueFlags.contains(name), switches.contains(name), value) {
            case (true, _, .some), (_, true, .none): return (name, value)
            case (true, false, .none): throw AnvilError.invalidArgument("--\(name) needs a value: --\(name)=…")
            case (false, true, .some): throw AnvilError.invalidArgument("--\(name) takes no value")
            default: throw AnvilError.invalidArgument("unknown flag --\(name) (anvil exec --help lists the trtexec flags it accepts)")
            }
        }
    }

    func run() throws {
        if arguments.contains(where: { ["--help", "-h", "-help"].contains($0) }) {
            print(Self.helpMessage())
            return
        }
        try Anvil.guarded {
            let flags = try Self.parse(arguments)
            func values(_ name: String) -> [String] { flags.filter { $0.name == name }.compactMap(\.value) }
            func one(_ name: String) throws -> String? {
                let v = values(name)
                guard v.count <= 1 else { throw AnvilError.invalidArgument("--\(name) is given \(v.count) times") }
                return v.first
            }
            func number<T: LosslessStringConvertible>(_ name: String, _ default: T) throws -> T {
                guard let text = try one(name) else { return `default` }
                guard let v = T(text) else { throw AnvilError.invalidArgument("--\(name)=\(text) is not a number") }
                return v
            }
            func has(_ name: String) -> Bool { flags.contains { $0.name == name && $0.value == nil } }
            if let limit = try one("memoryLimit") { MemoryPolicy.limit = try MemoryPolicy.parse(limit) }
            if let threads = try one("threads") {
                guard let n = Int(threads) else { throw AnvilError.invalidArgument("--threads=\(threads) is not a number") }
                try setThreads(n)
            }
            let onnx = try one("onnx"), load = try one("loadEngine")
            // Every file written against every file read, before anything runs.
            let models = [("--onnx", onnx), ("--loadEngine", load)].compactMap { flag, path in path.map { (flag, $0) } }
            let loadInputs = values("loadInputs").flatMap { $0.split(separator: ",").map(String.init) }
            try OutputFiles.requireDistinct(outputs: try ["saveEngine", "exportTimes", "exportProfile", "exportLayerInfo", "timingCacheFile"]
                                                .compactMap { name in try one(name).map { ("--\(name)", $0) } },
                                            inputs: models + BenchSettings.inputFiles(loadInputs))
            let start = Date()
            let engine: Engine
            switch (onnx, load) {
            case (let model?, nil):
                var build = BuildSettings(model: model, output: try one("saveEngine"))
                build.profile = try profileFrom(shapes: values("shapes"), min: values("minShapes"), opt: values("optShapes"), max: values("maxShapes"))
                build.verbose = has("verbose")
                build.exportLayerInfo = try one("exportLayerInfo")
                build.timingCacheFile = try one("timingCacheFile")
                build.winograd = try winogradAllowed(tacticSources: try one("tacticSources"))
                build.precision = PrecisionPolicy(bf16: has("bf16"), int8: has("int8"), fp16: has("fp16"),
                                                  layerPrecisions: try PrecisionPolicy.parseLayerPrecisions(values("layerPrecisions")))
                build.precision.layerOutputTypes = try PrecisionPolicy.parseLayerPrecisions(values("layerOutputTypes"), flag: "--layerOutputTypes")
                // trtexec's --calib names a calibration cache (anvil build --int8 --calib DIR --calibCache FILE writes one).
                if let cache = try one("calib") {
                    guard build.precision.needsInt8 else { throw AnvilError.invalidArgument("--calib=\(cache) is an INT8 calibration cache: it needs --int8") }
                    guard FileManager.default.fileExists(atPath: cache) else { throw AnvilError.invalidArgument("--calib=\(cache): no such calibration cache") }
                    build.calibrationCache = cache
                } else if build.precision.needsInt8 {
                    throw AnvilError.invalidArgument("--int8 needs --calib=<calibration cache> (anvil build --int8 --calib DIR --calibCache FILE writes one)")
                }
                engine = try build.build()
            case (nil, let path?):
                guard try one("saveEngine") == nil else { throw AnvilError.invalidArgument("--saveEngine needs --onnx (the engine is already built)") }
                engine = try Engine(path: path)
            case (nil, nil): throw AnvilError.invalidArgument("give --onnx=model.onnx or --loadEngine=model.anvil")
            default: throw AnvilError.invalidArgument("give --onnx or --loadEngine, not both")
            }
            if has("skipInference") { return }
            var bench = BenchSettings()
            bench.warmUp = try number("warmUp", 200.0)
            bench.iterations = try number("iterations", 10)
            bench.duration = try number("duration", 3.0)
            bench.avgRuns = try number("avgRuns", 10)
            if let p = try one("percentile") { bench.percentiles = try BenchSettings.percentiles(p) }
            bench.loadInputs = loadInputs
            // With --loadEngine, --shapes picks the shapes of the run (as in trtexec).
            if load != nil { bench.shapes = try ShapeProfile.parse(values("shapes"), flag: "--shapes") }
            bench.exportTimes = try one("exportTimes")
            bench.exportProfile = try one("exportProfile")
            bench.dumpProfile = has("dumpProfile")
            try bench.bench(engine, loadTime: onnx == nil ? Date().timeIntervalSince(start) : 0)
        }
    }
}
