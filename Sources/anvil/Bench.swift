import AnvilBuilder
import AnvilCore
import AnvilONNX
import AnvilRuntime
import ArgumentParser
import Foundation

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Time an engine (or an ONNX model, built in memory) and print a trtexec-style performance summary.")

    @Argument(help: "An engine file or an ONNX model.") var model: String
    @Option(name: .customLong("warmUp"), help: "Warm-up time in milliseconds.") var warmUp: Double = 200
    @Option(help: "Minimum number of timed inferences.") var iterations: Int = 10
    @Option(help: "Minimum timed duration in seconds.") var duration: Double = 3
    @Option(help: "Comma-separated latency percentiles to report.") var percentile: String = "90,95,99"
    @Option(name: .customLong("loadInputs"), help: "Inputs as name:file (.pb or .npy); others are random.") var loadInputs: [String] = []
    @Option(name: .customLong("exportTimes"), help: "Write per-inference times as trtexec's JSON.") var exportTimes: String?
    @Flag(name: .customLong("dumpProfile"), help: "Print a per-layer profile: total, average and median time and share.") var dumpProfile = false

    func run() throws {
        try Anvil.guarded {
            guard warmUp >= 0, iterations > 0, duration >= 0 else { throw AnvilError.invalidArgument("--warmUp, --iterations and --duration must be positive") }
            let percentiles = try percentile.split(separator: ",").map { p -> Double in
                guard let v = Double(p.trimmingCharacters(in: .whitespaces)), v > 0, v <= 100 else {
                    throw AnvilError.invalidArgument("--percentile '\(p)' is not a number in (0, 100]")
                }
                return v
            }
            let loadStart = Date()
            let engine: Engine
            if isEngineFile(model) {
                engine = try Engine(path: model)
            } else {
                let built = try EngineBuilder().build(try ONNXImporter.load(path: model), name: model)
                engine = try Engine(file: built.file, name: model)
            }
            let loaded = Date().timeIntervalSince(loadStart)
            let context = ExecutionContext(engine: engine)
            var inputs: [String: Tensor] = [:]
            for spec in loadInputs {
                guard let colon = spec.firstIndex(of: ":") else { throw AnvilError.invalidArgument("--loadInputs '\(spec)' is not name:file") }
                inputs[String(spec[..<colon])] = try TensorFiles.read(String(spec[spec.index(after: colon)...])).tensor
            }
            var rng = SystemRandomNumberGenerator()
            for (name, type) in engine.inputs where inputs[name] == nil {
                let shape = (type.dims ?? []).map { $0.value ?? 1 }
                let n = shape.reduce(1, *)
                let element = type.elementType ?? .float
                inputs[name] = element.isFloatingPoint
                    ? try Tensor(element, shape: shape, doubles: (0..<n).map { _ in Double.random(in: -1...1, using: &rng) })
                    : try Tensor(element, shape: shape, int64s: (0..<n).map { _ in Int64.random(in: 0...1, using: &rng) })
            }
            let firstStart = Date()
            _ = try context.run(inputs)
            let firstRun = Date().timeIntervalSince(firstStart)
            if let reason = context.planFailure { print("Note: runs on the layer interpreter (\(reason))") }
            // Input preparation is not part of it.
            let firstInference = loaded + firstRun
            let warmEnd = Date().addingTimeInterval(warmUp / 1000)
            while Date() < warmEnd { _ = try context.run(inputs) }
            context.profiling = dumpProfile
            var records: [(start: Double, end: Double)] = []
            let origin = Date()
            while records.count < iterations || Date().timeIntervalSince(origin) < duration {
                let s = Date().timeIntervalSince(origin)
                _ = try context.run(inputs)
                records.append((s * 1000, Date().timeIntervalSince(origin) * 1000))
            }
            let latencies = records.map { $0.end - $0.start }.sorted()
            func at(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int((p / 100 * Double(latencies.count)).rounded(.up)) - 1)] }
            let total = records.last!.end - records.first!.start
            let mean = latencies.reduce(0, +) / Double(latencies.count)
            print("=== Performance summary ===")
            print("Load + first inference: \(String(format: "%.2f", firstInference * 1000)) ms (engine load \(String(format: "%.2f", loaded * 1000)) ms, "
                  + "first inference with planning \(String(format: "%.2f", firstRun * 1000)) ms)")
            print("Throughput: \(String(format: "%.2f", Double(records.count) / (total / 1000))) qps")
            print("Latency: min = \(f(latencies.first!)) ms, max = \(f(latencies.last!)) ms, mean = \(f(mean)) ms, median = \(f(at(50))) ms, "
                  + percentiles.map { "percentile(\(Int($0))%) = \(f(at($0))) ms" }.joined(separator: ", "))
            print("Total time: \(f(total / 1000)) s, \(records.count) inferences")
            let variance = latencies.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(latencies.count)
            if variance.squareRoot() > 0.1 * mean {
                print("Warning: the latency varies by more than 10% (coefficient of variation \(f(variance.squareRoot() / mean * 100))%); the machine may be busy.")
            }
            if dumpProfile {
                let all = context.profile.reduce(0) { $0 + $1.milliseconds.reduce(0, +) }
                print("\n=== Profile (\(records.count) runs) ===")
                print("   Time(ms)   Avg(ms) Median(ms)  Time(%)  Layer")
                for entry in context.profile.sorted(by: { $0.milliseconds.reduce(0, +) > $1.milliseconds.reduce(0, +) }) {
                    let total = entry.milliseconds.reduce(0, +), sorted = entry.milliseconds.sorted()
                    print(String(format: "%11.2f %9.3f %10.3f %8.1f  ", total, total / Double(sorted.count), sorted[sorted.count / 2], total / all * 100)
                          + "\(entry.layer) [\(entry.tactic)]")
                }
            }
            if let exportTimes {
                let json = "[\n" + records.map {
                    "  { \"startComputeMs\" : \($0.start), \"endComputeMs\" : \($0.end), \"computeMs\" : \($0.end - $0.start), \"latencyMs\" : \($0.end - $0.start) }"
                }.joined(separator: ",\n") + "\n]\n"
                try TensorFiles.writeAll([(exportTimes, Array(json.utf8))])
            }
        }
    }

    func f(_ v: Double) -> String { String(format: "%.4g", v) }
}
