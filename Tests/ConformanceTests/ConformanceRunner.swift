import AnvilCore
import AnvilIR
import AnvilONNX
import AnvilOps
import Foundation

/// Outcome of one conformance case.
enum CaseStatus: Equatable {
    case passed
    case failed(String)
    case unsupported(String)

    var label: String {
        switch self {
        case .passed: "pass"
        case .failed: "fail"
        case .unsupported: "unsupported"
        }
    }
}

/// Runs ONNX test-data cases (model.onnx + test_data_set_N) through an executor.
struct ConformanceRunner {
    /// Runs a model on inputs; the reference executor by default, other paths later.
    var execute: (Model, [String: Tensor]) throws -> [(name: String, value: Tensor)] = { model, inputs in
        try ReferenceExecutor(model: model).run(inputs)
    }

    /// Smallest relative tolerance per element type: about two units in the last
    /// place for the 16-bit float types (bfloat16 has 8 significant bits, float16 11).
    static let relativeToleranceFloor: [DataType: Double] = [.bfloat16: 1.6e-2, .float16: 2e-3]

    /// The repository root (this file is Tests/ConformanceTests/ConformanceRunner.swift).
    static var root: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }

    struct Meta: Decodable {
        var op: String?
        var rtol: Double?
        var atol: Double?
        var unstorable: String?
    }

    static func meta(_ folder: String) -> Meta {
        guard let data = FileManager.default.contents(atPath: "\(folder)/meta.json"),
              let m = try? JSONDecoder().decode(Meta.self, from: data) else { return Meta() }
        return m
    }

    /// The cases the manifest expects to pass.
    static func manifest() throws -> [String] {
        try String(contentsOfFile: "\(root)/Tests/ConformanceTests/manifest.txt", encoding: .utf8)
            .split(separator: "\n").map(String.init).filter { !$0.hasPrefix("#") && !$0.isEmpty }
    }

    /// Runs every manifest case with its tolerances; returns the failures.
    func runManifest() throws -> [String] {
        try Self.manifest().compactMap { name in
            let folder = "\(Self.root)/conformance-data/node/\(name)"
            let meta = Self.meta(folder)
            let status = run(folder: folder, rtol: max(meta.rtol ?? 1e-3, 1e-3), atol: max(meta.atol ?? 1e-5, 1e-5))
            return status == .passed ? nil : "\(name): \(status)"
        }
    }

    /// Runs one case folder with the given tolerances.
    func run(folder: String, rtol: Double, atol: Double) -> CaseStatus {
        let model: Model
        do {
            model = try ONNXImporter.load(path: "\(folder)/model.onnx")
        } catch {
            return .unsupported("import: \(error)")
        }
        let missing = ReferenceExecutor(model: model).unsupportedNodes()
        if !missing.isEmpty { return .unsupported(missing.joined(separator: ", ")) }
        do {
            for set in try TestDataSet.folders(under: folder) {
                let data = try TestDataSet.load(set)
                var inputs: [String: Tensor] = [:]
                let declared = model.graph.runtimeInputs.map(\.name)
                for (i, item) in data.inputs.enumerated() {
                    let name = declared.contains(item.name) ? item.name : (i < declared.count ? declared[i] : item.name)
                    inputs[name] = item.tensor
                }
                let outputs = try execute(model, inputs)
                guard outputs.count >= data.outputs.count else { return .failed("\(outputs.count) outputs, expected \(data.outputs.count)") }
                for (i, expected) in data.outputs.enumerated() {
                    // Low-precision outputs are compared at their own precision: the
                    // reference rounds after every step, Anvil once at the end, so they
                    // may differ by about one unit in the last place of the type.
                    let floor = Self.relativeToleranceFloor[expected.tensor.dataType] ?? 0
                    let c = Comparison.compare(actual: outputs[i].value, expected: expected.tensor, atol: atol, rtol: max(rtol, floor))
                    if !c.passed {
                        return .failed("output \(i) '\(outputs[i].name)': " + (c.structuralError ??
                            "\(c.mismatches)/\(c.count) elements off, max abs \(c.maxAbsoluteError), max rel \(c.maxRelativeError)"))
                    }
                }
            }
        } catch {
            return .failed("error: \(error)")
        }
        return .passed
    }
}
