import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilKernels
import AnvilONNX
import AnvilRuntime
import ArgumentParser
import Foundation

/// What building an engine needs, shared by `anvil build` and `anvil exec`.
struct BuildSettings {
    var model: String
    var output: String?
    var optimize = true
    var profile = ShapeProfile()
    var verbose = false
    var exportLayerInfo: String?
    var timingCacheFile: String?
    /// Tactic sources turned on or off (--tacticSources): Winograd convolutions.
    var winograd = true
    /// Reduced precision (--bf16, --layerPrecisions).
    var precision = PrecisionPolicy()
    /// --calib, --accuracyBudget and --best.
    var calib: String?
    var budget: AccuracyBudget?
    var best = false
    /// INT8 calibration: --calibMethod, --calibPercentile, --calibCache.
    var calibrationMethod = CalibrationMethod.percentile
    var calibrationPercentile = 99.99
    var calibrationCache: String?

    /// "INT8 40, BF16 3, FP32 2": how many layers got each precision.
    static func counts(_ choices: [PrecisionChoice]) -> String {
        Precision.allCases.reversed().compactMap { p in
            let n = choices.filter { $0.precision == p }.count
            return n > 0 ? "\(p) \(n)" : nil
        }.joined(separator: ", ")
    }

    /// Builds (and writes, when `output` is set) the engine; prints progress and a summary.
    func build() throws -> Engine {
        let start = Date()
        func step(_ what: String) { if verbose { print(String(format: "[%6.2f s] ", Date().timeIntervalSince(start)) + what) } }
        step("importing \(model)")
        try requireONNXModel(model, command: "build")
        // Checked before the build: a side output must not replace the model or another output.
        try OutputFiles.requireDistinct(outputs: [("-o", output), ("--exportLayerInfo", exportLayerInfo), ("--timingCacheFile", timingCacheFile),
                                                  ("--calibCache", calibrationCache)]
                                            .compactMap { flag, path in path.map { (flag, $0) } },
                                        inputs: [("the model", model)] + (calib.map { [("--calib", $0)] } ?? []))
        let m = try ONNXImporter.load(path: model)
        var builder = EngineBuilder()
        builder.optimize = optimize
        builder.profile = profile
        builder.winograd = winograd
        builder.precision = precision
        if best {
            // The fastest precision per layer that keeps the budget: INT8 where a layer can be
            // INT8, BF16 for the other weighted layers, FP32 where the budget needs it.
            builder.precision.bf16 = true
            builder.precision.int8 = true
            builder.budget = budget ?? .cosine(0.999)
        } else {
            builder.budget = budget
        }
        // INT8 ranges from the calibration cache when it exists (then no calibration data is needed).
        let int8 = builder.precision.needsInt8
        var cacheRead = false
        if int8, let calibrationCache, FileManager.default.fileExists(atPath: calibrationCache) {
            let bytes = try ONNXImporter.readFile(calibrationCache, limit: 1 << 28, what: "calibration cache")
            builder.int8Calibration = try Int8Calibration(cache: bytes, file: calibrationCache)
            cacheRead = true
            step("read the ranges of \(builder.int8Calibration!.ranges.count) tensors from \(calibrationCache)")
        } else if !int8, calibrationCache != nil {
            throw AnvilError.invalidArgument("--calibCache holds INT8 ranges: it needs --int8 (or an INT8 layer in --layerPrecisions)")
        }
        builder.calibrationMethod = calibrationMethod
        builder.calibrationPercentile = calibrationPercentile
        if builder.budget != nil || (int8 && !cacheRead) {
            guard let calib else {
                throw AnvilError.invalidArgument(builder.budget != nil ? "\(best ? "--best" : "--accuracyBudget") measures accuracy on calibration data: give --calib DIR"
                                                 : "--int8 calibrates on sample inputs: give --calib DIR (or an existing --calibCache)")
            }
            guard !builder.precision.isFP32 else { throw AnvilError.invalidArgument("--accuracyBudget: nothing is reduced; add --bf16, --fp16, --int8 or --best") }
            builder.calibration = try CalibrationData.load(calib, inputs: m.graph.runtimeInputs.map { ($0.name, $0.type) }).samples.map(\.inputs)
            step("read \(builder.calibration.count) calibration samples from \(calib)")
        } else if calib != nil, !int8 {
            throw AnvilError.invalidArgument("--calib is read by --int8, --accuracyBudget and --best")
        }
        let calibrating = ProgressBar(label: "Calibrating")
        builder.calibrationProgress = { done, total in calibrating.update(done, total) }
        if let timingCacheFile, FileManager.default.fileExists(atPath: timingCacheFile) {
            let bytes = try ONNXImporter.readFile(timingCacheFile, limit: 1 << 28, what: "timing cache")
            builder.timingCache = try TimingCache(contentsOf: bytes, file: timingCacheFile)
            step("read \(builder.timingCache.entries.count) timings from \(timingCacheFile)")
        }
        let bar = ProgressBar(label: "Timing tactics")
        builder.progress = { done, total in bar.update(done, total) }
        step((optimize ? "optimizing, inferring shapes" : "inferring shapes") + ", timing tactics and planning the engine on this CPU (kernels, layouts, memory)")
        let result = try builder.build(m, name: model)
        Anvil.warn(result.warnings)
        calibrating.finish()
        bar.finish()
        step("tactics: \(builder.timingCache.measured) measured, \(builder.timingCache.hits) from the timing cache")
        if verbose, let stats = result.statistics {
            for (pass, counts) in stats.statistics.sorted(by: { $0.key < $1.key }) where !counts.isEmpty {
                step("  \(pass): " + counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
            }
        }
        let bytes = try result.file.encoded()
        let engine = result.engine
        let report = EngineReport(engine: engine, compiled: result.compiled, file: output ?? model, bytes: bytes.count,
                                  storedWeights: result.compiled.packedWeights, loaded: false)
        // The engine and its side outputs: all written or none.
        var files: [(path: String, bytes: [UInt8])] = []
        if let output {
            step("writing \(output)")
            files.append((output, bytes))
        }
        if let timingCacheFile { files.append((timingCacheFile, builder.timingCache.encoded())) }
        if let calibrationCache, !cacheRead, let ranges = result.int8Calibration { files.append((calibrationCache, try ranges.encoded())) }
        if let exportLayerInfo {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            files.append((exportLayerInfo, Array(try encoder.encode(report))))
        }
        try OutputFiles.write(files)
        if let measured = result.measuredBudget, let budget = builder.budget {
            let reduced = result.precisionChoices.filter { $0.precision != .fp32 }.count
            print("Precision: \(reduced) of \(result.precisionChoices.count) weighted layers reduced (\(Self.counts(result.precisionChoices))) within the budget \(budget) "
                  + "(measured \(String(format: "%.6g", measured)) on \(builder.calibration.count) calibration samples against the FP32 engine)")
            for c in result.precisionChoices where verbose || c.reason.hasPrefix("moved") {
                print("  \(c.layer): \(c.precision) (\(c.reason))")
            }
        }
        if int8 {
            let weighted = result.graph.layers.filter { PrecisionPolicy.isWeighted($0, result.graph.constants) }
            print("INT8: \(result.int8Layers.count) of \(weighted.count) weighted layers (\(cacheRead ? "ranges from \(calibrationCache!)" : "calibrated with \(calibrationMethod) on \(builder.calibration.count) samples"))")
        }
        let fused = result.graph.layers.filter { $0.fusedFrom.count > 1 }.count
        let slow = report.layers.filter { $0.slowPath != nil }
        print("Built \(output ?? "an engine in memory"): \(result.graph.layers.count) layers (\(fused) fused, \(report.layers.count - slow.count) on fast kernels, "
              + "\(slow.count) on slow paths), \(ModelReport.bytes(bytes.count)), activation arena \(ModelReport.bytes(report.memoryPlan.arenaBytes)), "
              + "in \(String(format: "%.2f", Date().timeIntervalSince(start))) s")
        if !slow.isEmpty {
            print("Slow paths (reference kernels):")
            for l in slow.prefix(verbose ? slow.count : 20) { print("  \(l.name) (\(l.layerType)): \(l.slowPath!)") }
            if !verbose && slow.count > 20 { print("  … \(slow.count - 20) more (--verbose lists all)") }
        }
        return engine
    }
}

struct Build: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Optimize an ONNX model and write an engine file.",
        discussion: """
            Shapes use trtexec's form: --shapes=input:1x3x224x224 fixes an input's shape (the fastest engine);
            --minShapes/--optShapes/--maxShapes give a range, and inputs outside it are refused at run time.
            Without either, dynamic dimensions stay dynamic and the engine plans each new shape on first sight.
            """)

    @Argument(help: "The ONNX model.") var model: String
    @Option(name: .shortAndLong, help: "The engine file to write (never the input).") var output: String
    @Flag(help: "Build without running the optimizer.") var noOptimize = false
    @Option(help: "Fixed input shapes: name:AxBxC[,name:…].") var shapes: [String] = []
    @Option(name: .customLong("minShapes"), help: "Smallest input shapes of the profile.") var minShapes: [String] = []
    @Option(name: .customLong("optShapes"), help: "Input shapes to plan for.") var optShapes: [String] = []
    @Option(name: .customLong("maxShapes"), help: "Largest input shapes of the profile.") var maxShapes: [String] = []
    @Option(help: "Threads for oneDNN while timing tactics and planning the engine.") var threads: Int?
    @Flag(help: "Print each build step and the optimizer's statistics.") var verbose = false
    @Option(name: .customLong("exportLayerInfo"), help: "Write the layer information (anvil inspect's JSON) to this file.") var exportLayerInfo: String?
    @Option(name: .customLong("timingCacheFile"), help: "Read tactic timings from this file if it exists and write them back: rebuilds are fast and give identical engines.")
    var timingCacheFile: String?
    @Option(name: .customLong("tacticSources"), help: "Tactic sources to enable (+) or disable (-), as in trtexec: -WINOGRAD keeps convolutions off oneDNN's Winograd kernels (slightly less accurate).")
    var tacticSources: String?
    @Flag(help: "Let convolutions and matrix products with constant weights compute in BF16 (AVX-512 BF16; the first and last stay FP32). Without it the engine is FP32.")
    var bf16 = false
    @Option(name: .customLong("layerPrecisions"), help: "Per-layer precision, always obeyed: name:fp32|bf16|fp16|int8[,…] (a layer or an ONNX node fused into it; \"*\" for every layer, own names winning).")
    var layerPrecisions: [String] = []
    @Option(name: .customLong("layerOutputTypes"), help: "Per-layer output type, always obeyed: name:fp32|bf16|int8[,…] (\"*\" for every layer): a BF16 convolution writing FP32, a BF16 matrix product writing BF16, an INT8 layer writing FP32 or INT8.")
    var layerOutputTypes: [String] = []
    @Flag(help: "Store the weights of convolutions and matrix products in FP16 (half the bytes); they compute in FP32, from FP32 activations (docs/precision.md). The first and last stay FP32; --bf16 wins where both are given.")
    var fp16 = false
    @Flag(help: "Let convolutions and matrix products with constant weights compute in INT8 (u8/s8 activations, s8 weights per channel), calibrated on --calib data; the first and last stay FP32.")
    var int8 = false
    @Option(name: .customLong("calibMethod"), help: "INT8 calibration: minmax, entropy (TensorRT's KL divergence) or percentile (default).")
    var calibMethod: String = "percentile"
    @Option(name: .customLong("calibPercentile"), help: "The percentile of |x| --calibMethod percentile keeps (default 99.99).")
    var calibPercentile: Double = 99.99
    @Option(name: .customLong("calibCache"), help: "Read INT8 ranges from this file if it exists (no --calib needed), else calibrate and write them to it.")
    var calibCache: String?
    @Flag(help: "Per layer, the fastest precision that keeps the accuracy budget (default cosine=0.999) on --calib data.") var best = false
    @Option(help: "Calibration data: test_data_set_N folders, input_N.pb/.npy files or .npz archives of the model's inputs.") var calib: String?
    @Option(name: .customLong("accuracyBudget"), help: "cosine=C, rtol=R or top1=P against the FP32 engine on --calib data; layers that hurt most go back to FP32 until it holds.")
    var accuracyBudget: String?

    @OptionGroup var limits: LimitOptions

    func run() throws {
        try Anvil.guarded(limits) {
            try setThreads(threads)
            var settings = BuildSettings(model: model, output: output)
            settings.optimize = !noOptimize
            settings.profile = try profileFrom(shapes: shapes, min: minShapes, opt: optShapes, max: maxShapes)
            settings.verbose = verbose
            settings.exportLayerInfo = exportLayerInfo
            settings.timingCacheFile = timingCacheFile
            settings.winograd = try winogradAllowed(tacticSources: tacticSources)
            settings.precision = PrecisionPolicy(bf16: bf16, int8: int8, fp16: fp16, layerPrecisions: try PrecisionPolicy.parseLayerPrecisions(layerPrecisions))
            settings.precision.layerOutputTypes = try PrecisionPolicy.parseLayerPrecisions(layerOutputTypes, flag: "--layerOutputTypes")
            guard let method = CalibrationMethod(rawValue: calibMethod) else {
                throw AnvilError.invalidArgument("--calibMethod '\(calibMethod)' is not minmax, entropy or percentile")
            }
            guard calibPercentile > 0, calibPercentile <= 100 else { throw AnvilError.invalidArgument("--calibPercentile must lie in (0, 100], got \(calibPercentile)") }
            (settings.calibrationMethod, settings.calibrationPercentile, settings.calibrationCache) = (method, calibPercentile, calibCache)
            (settings.calib, settings.best) = (calib, best)
            settings.budget = try accuracyBudget.map(AccuracyBudget.parse)
            _ = try settings.build()
        }
    }
}
