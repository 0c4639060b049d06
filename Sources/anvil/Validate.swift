import AnvilCore
import AnvilONNX
import ArgumentParser
import Foundation

/// Compares a model's outputs with reference outputs as Polygraphy does: per output the
/// statistics of each side and of the error, a histogram, the tolerances that would
/// pass, cosine similarity and top-k agreement; text or JSON.
struct Validate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a model on reference inputs and compare with reference outputs.",
        discussion: """
            An element fails only where its absolute error exceeds --atol and its relative error exceeds --rtol
            (|a - e| / |e|); --check-error-stat max|mean|median compares that statistic of the errors instead.
            Tolerances and the statistic may be given per output: --atol logits:1e-2 --atol 1e-4.
            --reference is a folder (input_N/output_N .pb or .npy files, or test_data_set_N folders) or an .npz
            archive whose arrays are named after the model's inputs and outputs.
            With --mark-all, every layer's output is compared with the value of the same name in the reference
            executor's run of the ONNX model (the model itself, or --against), and the first layer whose output
            diverges beyond tolerance is named.
            Exit status 0 only if every output of every data set passes.
            """)

    @Argument(help: "The ONNX model (built into an engine in memory) or engine file.") var model: String
    @Option(help: "Folder with input_N.pb/output_N.pb or test_data_set_N folders, or an .npz archive of named inputs and outputs.")
    var reference: String
    @Option(help: "Compare with this ONNX model (run by the reference executor on the same inputs) instead of the reference outputs.") var against: String?
    // Unconditional: "--atol -1" reaches the check below instead of "Missing value".
    @Option(parsing: .unconditionalSingleValue, help: "Absolute tolerance, or name:value for one output (default 1e-5).") var atol: [String] = []
    @Option(parsing: .unconditionalSingleValue, help: "Relative tolerance, or name:value for one output (default 1e-3).") var rtol: [String] = []
    @Option(name: .customLong("check-error-stat"), help: "elemwise, max, mean or median, or name:stat for one output (default elemwise).")
    var checkErrorStat: [String] = []
    @Flag(help: "Print one JSON document (docs/validate.md) instead of text.") var json = false
    @Flag(name: .customLong("mark-all"), help: "Compare every layer's output with the reference executor's and name the first that diverges.")
    var markAll = false
    @Flag(help: "Run an ONNX model on the reference executor instead of building an engine.") var referenceExecutor = false

    @OptionGroup var limits: LimitOptions

    /// A setting given once for all outputs and per output by name.
    struct PerOutput<Value> {
        var all: Value
        var named: [String: Value] = [:]
        func callAsFunction(_ name: String) -> Value { named[name] ?? all }
    }

    static func perOutput<Value>(_ specs: [String], flag: String, default value: Value, parse: (String) -> Value?) throws -> PerOutput<Value> {
        var result = PerOutput(all: value)
        var seenAll = false
        for spec in specs {
            if let v = parse(spec) {
                guard !seenAll else { throw AnvilError.invalidArgument("\(flag) is given twice for all outputs") }
                (result.all, seenAll) = (v, true)
                continue
            }
            guard let colon = spec.lastIndex(of: ":"), colon != spec.startIndex, let v = parse(String(spec[spec.index(after: colon)...])) else {
                throw AnvilError.invalidArgument("\(flag) '\(spec)' is neither a value nor name:value")
            }
            let name = String(spec[..<colon])
            guard result.named[name] == nil else { throw AnvilError.invalidArgument("\(flag) is given twice for '\(name)'") }
            result.named[name] = v
        }
        return result
    }

    static func tolerance(_ text: String) -> Double? {
        guard let v = Double(text), v.isFinite, v >= 0 else { return nil }
        return v
    }

    struct DataSetReport: Encodable {
        var source: String
        var milliseconds: Double
        var outputs: [OutputComparison]
        var missing: [String]
        var firstDivergence: LayerDivergence?
    }

    struct Report: Encodable {
        var model: String
        var runner: String
        var baseline: String
        var passed: Bool
        var dataSets: [DataSetReport]
    }

    func run() throws {
        var allPassed = true
        try Anvil.guarded(limits) {
            // Negative or non-finite tolerances name the flag (a plain "-1" is not a tolerance).
            for (flag, specs) in [("--atol", atol), ("--rtol", rtol)] {
                for spec in specs where Double(spec) != nil && Self.tolerance(spec) == nil {
                    throw AnvilError.invalidArgument("--atol and --rtol must be finite and non-negative, got \(flag) \(spec)")
                }
            }
            let atols = try Self.perOutput(atol, flag: "--atol", default: 1e-5, parse: Self.tolerance)
            let rtols = try Self.perOutput(rtol, flag: "--rtol", default: 1e-3, parse: Self.tolerance)
            let stats = try Self.perOutput(checkErrorStat, flag: "--check-error-stat", default: ErrorStatistic.elemwise) { ErrorStatistic(rawValue: $0) }
            let runner = try Runner.load(model, reference: referenceExecutor)
            for name in Set(atols.named.keys).union(rtols.named.keys).union(stats.named.keys) where !runner.outputNames.contains(name) {
                throw AnvilError.invalidArgument("a tolerance names '\(name)', which is not an output (outputs: \(runner.outputNames.joined(separator: ", ")))")
            }
            let baselinePath = against ?? (markAll && !isEngineFile(model) ? model : nil)
            let baseline = try against.map { try Runner.load($0, reference: true) }
            if markAll {
                guard runner.engine != nil else { throw AnvilError.invalidArgument("--mark-all compares an engine's layers: give an engine or an ONNX model without --reference-executor") }
                guard baselinePath != nil else { throw AnvilError.invalidArgument("--mark-all needs the ONNX model to compare layers with: give --against model.onnx") }
            }
            let say: (String) -> Void = json ? { _ in } : { print($0) }
            say("Running on the \(runner.description)" + (baseline.map { ", compared with the \($0.description)" } ?? ""))
            let sets: [TestDataSet]
            if reference.hasSuffix(".npz") {
                sets = [try TestDataSet.archive(reference, inputs: runner.inputNames, outputs: runner.outputNames)]
            } else {
                sets = try TestDataSet.folders(under: reference).map { try TestDataSet.load($0) }
            }
            var reports: [DataSetReport] = []
            for var data in sets {
                let inputs = try bindInputs(data.inputs, declared: runner.inputNames, origin: data.folder)
                if let baseline { data.outputs = try baseline.run(inputs).map { ($0.name, $0.value) } }
                guard !data.outputs.isEmpty else { throw AnvilError.io(path: data.folder, reason: "holds no reference outputs (output_N.pb, or arrays named after outputs)") }
                let start = Date()
                let actual = try runner.run(inputs)
                var report = DataSetReport(source: data.folder, milliseconds: Date().timeIntervalSince(start) * 1000, outputs: [], missing: [])
                say("\(data.folder) (\(String(format: "%.1f", report.milliseconds)) ms)")
                for (i, expected) in data.outputs.enumerated() {
                    guard let match = actual.first(where: { $0.name == expected.name }) ?? (i < actual.count ? actual[i] : nil) else {
                        say("  output \(i) '\(expected.name)': FAIL (the model has no such output)")
                        report.missing.append(expected.name)
                        allPassed = false
                        continue
                    }
                    let c = OutputComparison.compare(name: match.name, actual: match.value, expected: expected.tensor, atol: atols(match.name),
                                                     rtol: rtols(match.name), statistic: stats(match.name))
                    if !json { Self.printText(c) }
                    report.outputs.append(c)
                    allPassed = allPassed && c.passed
                }
                if markAll, let engine = runner.engine, let path = baselinePath {
                    report.firstDivergence = try LayerDivergence.find(engine: engine, model: path, inputs: inputs, atol: atols.all, rtol: rtols.all,
                                                                      statistic: stats.all, say: say)
                }
                reports.append(report)
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
                let report = Report(model: model, runner: runner.description, baseline: baseline?.description ?? "reference outputs in \(reference)",
                                    passed: allPassed, dataSets: reports)
                print(String(decoding: try encoder.encode(report), as: UTF8.self))
            } else {
                let tolerances = "atol \(atols.all), rtol \(rtols.all)" + (stats.all == .elemwise ? "" : ", \(stats.all) error")
                print(allPassed ? "PASSED (\(tolerances))" : "FAILED (\(tolerances))")
            }
        }
        if !allPassed { throw ExitCode(1) }
    }

    static func fmt(_ v: Double) -> String { String(format: "%.3g", v) }

    static func printText(_ c: OutputComparison) {
        let verdict = c.passed ? "PASS" : "FAIL"
        if let why = c.structuralError {
            print("  \(c.name): \(verdict) (\(why))")
            return
        }
        print("  \(c.name): max abs error \(fmt(c.maxAbsoluteError)), max rel error \(fmt(c.maxRelativeError)), \(c.mismatches)/\(c.count) outside tolerance: \(verdict)")
        guard c.count > 0 else { return }
        func line(_ label: String, _ s: ValueSummary) -> String {
            var text = "    \(label) mean \(fmt(s.mean)), std \(fmt(s.std)), min \(fmt(s.min)) at \(s.minIndex), max \(fmt(s.max)) at \(s.maxIndex), "
                + "median \(fmt(s.median)), p90 \(fmt(s.p90)), p95 \(fmt(s.p95)), p99 \(fmt(s.p99))"
            if s.nanCount > 0 { text += ", \(s.nanCount) NaN" }
            if s.infinityCount > 0 { text += ", \(s.infinityCount) ±inf" }
            return text
        }
        print(line("actual:   ", c.actual))
        print(line("expected: ", c.expected))
        print(line("abs error:", c.absoluteError))
        print(line("rel error:", c.relativeError))
        print("    abs error histogram: " + c.histogram.enumerated().map { i, b in
            "[\(fmt(i == 0 ? 0 : c.histogram[i - 1].upTo)), \(fmt(b.upTo))\(i == 9 ? "]" : ")"): \(b.count)"
        }.joined(separator: " | "))
        let stat = c.errorStatistic == .elemwise ? "" : " (\(c.errorStatistic) error)"
        print("    passes\(stat) with --atol \(fmt(c.requiredAtol)) (rtol 0) or --rtol \(fmt(c.requiredRtol)) (atol 0); given atol \(c.atol), rtol \(c.rtol)")
        var similarity: [String] = []
        if let cos = c.cosine { similarity.append("cosine similarity \(String(format: "%.6f", cos))") }
        if let t = c.top1Agreement { similarity.append("top-1 agreement \(String(format: "%.1f", t * 100))%") }
        if let t = c.top5Overlap { similarity.append("top-5 overlap \(String(format: "%.1f", t * 100))%") }
        if !similarity.isEmpty { print("    " + similarity.joined(separator: ", ")) }
    }
}
