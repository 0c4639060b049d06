import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilONNX
import AnvilRuntime
import ArgumentParser
import Foundation

/// How to time an engine, shared by `anvil bench` and `anvil exec`.
struct BenchSettings {
    var warmUp: Double = 200
    var iterations = 10
    var duration: Double = 3
    var avgRuns = 10
    var percentiles: [Double] = [90, 95, 99]
    var loadInputs: [String] = []
    /// Shapes for inputs with dynamic dimensions (random inputs).
    var shapes: [String: [Int]] = [:]
    var exportTimes: String?
    var exportProfile: String?
    var dumpProfile = false

    static func percentiles(_ text: String) throws -> [Double] {
        try text.split(separator: ",").map { p -> Double in
            guard let v = Double(p.trimmingCharacters(in: .whitespaces)), v > 0, v <= 100 else {
                throw AnvilError.invalidArgument("--percentile '\(p)' is not a number in (0, 100]")
            }
            return v
        }
    }

    /// The files --loadInputs names ("name:file"), as inputs no output may overwrite.
    static func inputFiles(_ loadInputs: [String]) -> [(flag: String, path: String)] {
        loadInputs.compactMap { spec in spec.lastIndex(of: ":").map { ("--loadInputs", String(spec[spec.index(after: $0)...])) } }
    }

    /// Refuses --exportTimes / --exportProfile naming the model, an input file or each other.
    func requireDistinctOutputs(models: [(flag: String, path: String)]) throws {
        try OutputFiles.requireDistinct(outputs: [("--exportTimes", exportTimes), ("--exportProfile", exportProfile)].compactMap { flag, path in path.map { (flag, $0) } },
                                        inputs: models + Self.inputFiles(loadInputs))
    }

    func inputs(for engine: Engine) throws -> [String: Tensor] {
        var inputs: [String: Tensor] = [:]
        for spec in loadInputs {
            guard let colon = spec.lastIndex(of: ":") else { throw AnvilError.invalidArgument("--loadInputs '\(spec)' is not name:file") }
            let name = String(spec[..<colon])
            guard engine.inputs.contains(where: { $0.name == name }) else {
                throw AnvilError.invalidArgument("--loadInputs names '\(name)', which is not an input (inputs: \(engine.inputs.map(\.name).joined(separator: ", ")))")
            }
            inputs[name] = try TensorFiles.read(String(spec[spec.index(after: colon)...]), member: name).tensor
        }
        for name in shapes.keys where !engine.inputs.contains(where: { $0.name == name }) {
            throw AnvilError.invalidArgument("--shapes names '\(name)', which is not an input (inputs: \(engine.inputs.map(\.name).joined(separator: ", ")))")
        }
        var rng = SeededGenerator(seed: 1)
        let defaults = try engine.sampleInputs()
        for (name, type) in engine.inputs where inputs[name] == nil {
            let shape = shapes[name] ?? defaults[name]!.shape
            let n = shape.reduce(1, *)
            let element = type.elementType ?? .float
            inputs[name] = element.isFloatingPoint
                ? try Tensor(element, shape: shape, floats: (0..<n).map { _ in Float.random(in: -1...1, using: &rng) })
                : try Tensor(element, shape: shape, int64s: (0..<n).map { _ in Int64.random(in: 0...1, using: &rng) })
        }
        return inputs
    }

    /// Runs and prints trtexec's performance summary; `loadTime` is how long loading took.
    func bench(_ engine: Engine, loadTime: Double) throws {
        guard warmUp >= 0, iterations > 0, duration >= 0, avgRuns > 0 else {
            throw AnvilError.invalidArgument("--warmUp, --iterations, --duration and --avgRuns must be positive")
        }
        let context = ExecutionContext(engine: engine)
        let inputs = try self.inputs(for: engine)
        let firstStart = Date()
        _ = try context.run(inputs)
        let firstRun = Date().timeIntervalSince(firstStart)
        if let reason = context.planFailure { print("Note: runs on the layer interpreter (\(reason))") }
        let warmEnd = Date().addingTimeInterval(warmUp / 1000)
        while Date() < warmEnd { _ = try context.run(inputs) }
        context.profiling = dumpProfile || exportProfile != nil
        var records: [(start: Double, end: Double)] = []
        let origin = Date()
        while records.count < iterations || Date().timeIntervalSince(origin) < duration {
            let s = Date().timeIntervalSince(origin)
            _ = try context.run(inputs)
            records.append((s * 1000, Date().timeIntervalSince(origin) * 1000))
        }
        let latencies = records.map { $0.end - $0.start }.sorted()
        func at(_ p: Double) -> Double { latencies[min(latencies.count - 1, max(0, Int((p / 100 * Double(latencies.count)).rounded(.up)) - 1))] }
        let total = records.last!.end - records.first!.start
        let mean = latencies.reduce(0, +) / Double(latencies.count)
        print("=== Performance summary ===")
        print("Load + first inference: \(String(format: "%.2f", (loadTime + firstRun) * 1000)) ms (engine load \(String(format: "%.2f", loadTime * 1000)) ms, "
              + "first inference with planning \(String(format: "%.2f", firstRun * 1000)) ms)")
        print("Throughput: \(String(format: "%.2f", Double(records.count) / (total / 1000))) qps")
        print("Latency: min = \(f(latencies.first!)) ms, max = \(f(latencies.last!)) ms, mean = \(f(mean)) ms, median = \(f(at(50))) ms, "
              + percentiles.map { "percentile(\(f($0))%) = \(f(at($0))) ms" }.joined(separator: ", "))
        let windows = stride(from: 0, to: records.count - avgRuns + 1, by: avgRuns).map { i in
            records[i..<(i + avgRuns)].reduce(0) { $0 + $1.end - $1.start } / Double(avgRuns)
        }
        if let lo = windows.min(), let hi = windows.max() {
            print("Average on \(avgRuns) runs: \(windows.count) windows, fastest \(f(lo)) ms, slowest \(f(hi)) ms")
        }
        print("Total time: \(f(total / 1000)) s, \(records.count) inferences")
        let variance = latencies.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(latencies.count)
        if variance.squareRoot() > 0.1 * mean {
            print("Warning: the latency varies by more than 10% (coefficient of variation \(f(variance.squareRoot() / mean * 100))%); the machine may be busy.")
        }
        // Layers inside control-flow bodies are part of the layer holding them: counted once.
        let all = context.profile.filter { !$0.layer.contains(ExecutionContext.nestedLayerSeparator) }.reduce(0) { $0 + $1.milliseconds.reduce(0, +) }
        let profile = context.profile.sorted { $0.milliseconds.reduce(0, +) > $1.milliseconds.reduce(0, +) }.map { entry in
            let total = entry.milliseconds.reduce(0, +), sorted = entry.milliseconds.sorted()
            return (entry: entry, total: total, average: total / Double(sorted.count), median: sorted[sorted.count / 2], share: total / max(all, 1e-12) * 100)
        }
        // Each layer's precision as inspect names it (nested layers of control-flow bodies have none).
        let layers = Dictionary(engine.graph.layers.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func precision(_ name: String) -> String? {
            layers[name].map { EngineReport.precision($0, $0.decision, plan: context.lastPlan, types: engine.graph.valueTypes) }
        }
        if dumpProfile {
            print("\n=== Profile (\(records.count) runs) ===")
            print("   Time(ms)   Avg(ms) Median(ms)  Time(%)  Layer [kernel] precision")
            for p in profile {
                print(String(format: "%11.2f %9.3f %10.3f %8.1f  ", p.total, p.average, p.median, p.share) + "\(p.entry.layer) [\(p.entry.kernels)]"
                      + (precision(p.entry.layer).map { " \($0)" } ?? ""))
            }
        }
        var files: [(String, [UInt8])] = []
        if let exportTimes {
            let json = "[\n" + records.map {
                "  { \"startComputeMs\" : \($0.start), \"endComputeMs\" : \($0.end), \"computeMs\" : \($0.end - $0.start), \"latencyMs\" : \($0.end - $0.start) }"
            }.joined(separator: ",\n") + "\n]\n"
            files.append((exportTimes, Array(json.utf8)))
        }
        if let exportProfile {
            let rows = ["  { \"count\" : \(records.count) }"] + profile.map {
                "  { \"name\" : \(jsonString($0.entry.layer)), \"timeMs\" : \($0.total), \"averageMs\" : \($0.average), \"medianMs\" : \($0.median), "
                    + "\"percentage\" : \($0.share), \"tactic\" : \(jsonString($0.entry.kernels))"
                    + (precision($0.entry.layer).map { ", \"precision\" : \(jsonString($0)) }" } ?? " }")
            }
            files.append((exportProfile, Array(("[\n" + rows.joined(separator: ",\n") + "\n]\n").utf8)))
        }
        try OutputFiles.write(files)
    }

    func jsonString(_ s: String) -> String {
        String(decoding: (try? JSONEncoder().encode(s)) ?? Data("\"\"".utf8), as: UTF8.self)
    }

    func f(_ v: Double) -> String { String(format: "%.4g", v) }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time an engine (or an ONNX model, built in memory) and print a trtexec-style performance summary.")

    @Argument(help: "An engine file or an ONNX model.") var model: String
    @Option(name: .customLong("warmUp"), help: "Warm-up time in milliseconds.") var warmUp: Double = 200
    @Option(help: "Minimum number of timed inferences.") var iterations: Int = 10
    @Option(help: "Minimum timed duration in seconds.") var duration: Double = 3
    @Option(name: .customLong("avgRuns"), help: "Report latency averaged over windows of this many consecutive runs.") var avgRuns: Int = 10
    @Option(help: "Comma-separated latency percentiles to report.") var percentile: String = "90,95,99"
    @Option(help: "Threads for oneDNN (default: all cores).") var threads: Int?
    @Option(help: "Shapes of random inputs with dynamic dimensions: name:AxBxC[,…].") var shapes: [String] = []
    @Option(name: .customLong("loadInputs"), help: "Inputs as name:file (.pb or .npy); others are random.") var loadInputs: [String] = []
    @Option(name: .customLong("exportTimes"), help: "Write per-inference times as trtexec's JSON.") var exportTimes: String?
    @Option(name: .customLong("exportProfile"), help: "Write the per-layer profile as trtexec's JSON.") var exportProfile: String?
    @Flag(name: .customLong("dumpProfile"), help: "Print a per-layer profile: total, average and median time and share.") var dumpProfile = false

    @OptionGroup var limits: LimitOptions

    func run() throws {
        try Anvil.guarded(limits) {
            try setThreads(threads)
            var settings = BenchSettings()
            settings.warmUp = warmUp
            settings.iterations = iterations
            settings.duration = duration
            settings.avgRuns = avgRuns
            settings.percentiles = try BenchSettings.percentiles(percentile)
            settings.loadInputs = loadInputs
            settings.shapes = try ShapeProfile.parse(shapes, flag: "--shapes")
            settings.exportTimes = exportTimes
            settings.exportProfile = exportProfile
            settings.dumpProfile = dumpProfile
            try settings.requireDistinctOutputs(models: [("the model", model)])
            let start = Date()
            let engine = try engineOrBuilt(model)
            try settings.bench(engine, loadTime: Date().timeIntervalSince(start))
        }
    }
}
