import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilPasses
import Foundation
import XCTest

/// HardSwish written out at opset 13 (paddle2onnx's export, before the standard op
/// of opset 14) becomes ai.anvil.HardSwish, which must evaluate, export, re-import
/// and build into an engine like the standard op.
final class AnvilHardSwishTests: XCTestCase {
    /// The two decomposed forms, on x: float[batch, 8].
    static let forms: [(name: String, model: @Sendable () -> Model)] = [
        ("x·relu6(x+3)/6", {
            var b = GraphBuilder()
            let clip = b.op("Clip", [b.op("Add", ["x", b.const([3])]), b.const([0]), b.const([6])])
            let y = b.op("Div", [b.op("Mul", ["x", clip]), b.const([6])])
            return dynamicBatch(b.model(input: [1, 8], output: y, opset: 13))
        }),
        ("x·HardSigmoid(x)", {
            var b = GraphBuilder()
            let hardSigmoid = b.op("HardSigmoid", ["x"], ["alpha": .float(1.0 / 6), "beta": .float(0.5)])
            let y = b.op("Mul", ["x", hardSigmoid])
            return dynamicBatch(b.model(input: [1, 8], output: y, opset: 13))
        }),
    ]

    static func dynamicBatch(_ model: Model) -> Model {
        model.graph.inputs[0].type = TensorType(.float, [.symbol("batch"), .known(8)])
        return model
    }

    func testRecognizedAtOpset13AndEvaluated() throws {
        let passes: [any Pass] = [RecognizeActivations(), EliminateDeadCode()]
        for (name, build) in Self.forms {
            let model = build()
            _ = try PassTesting.optimized(model, passes)
            XCTAssertEqual(model.graph.nodes.map(\.qualifiedOpType), ["ai.anvil.HardSwish"], name)
            var inference = ShapeInference(model: model)
            XCTAssertEqual(try inference.run()["y"]?.type, TensorType(.float, [.symbol("batch"), .known(8)]), name)
            // Every eighth of a unit from -8 to 8: both knees (-3, 3) and the flat parts.
            let x = try Tensor(floats: (0..<128).map { Float($0) / 8 - 8 }, shape: [16, 8])
            try PassTesting.assertPreservesOutputs(build, passes, inputs: ["x": x])
        }
    }

    /// `anvil optimize` exports the op with a standard body ONNX Runtime runs; the
    /// file reads back with the op intact; `anvil build` without shapes makes an engine
    /// from the original and from the optimized model that runs batches 3 and 5.
    func testOptimizeExportsAndBuildRunsWithDynamicBatch() throws {
        for (name, build) in Self.forms {
            let folder = try TestSupport.temporaryFolder()
            let original = build()
            var rng = SeededGenerator(seed: 13)
            let batches = try [3, 5].map { batch in
                ["x": try Tensor(floats: (0..<batch * 8).map { _ in Float.random(in: -5...5, using: &rng) }, shape: [batch, 8])]
            }
            try ExportChecks.writeWithReference(original, inputs: batches, folder: folder)
            let optimized = folder + "/optimized.onnx"
            let optimize = try TestSupport.run(["optimize", folder + "/model.onnx", "-o", optimized])
            XCTAssertEqual(optimize.status, 0, "\(name): \(optimize.stderr)")
            XCTAssertEqual(try ONNXImporter.load(path: optimized).graph.nodes.map(\.qualifiedOpType), ["ai.anvil.HardSwish"], name)
            XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(optimized, reference: folder + "/reference"), 0,
                           "\(name): onnx.checker or ONNX Runtime refused the optimized model")
            for source in [folder + "/model.onnx", optimized] {
                let validate = try TestSupport.run(["validate", source, "--reference", folder + "/reference"])
                XCTAssertEqual(validate.status, 0, "\(name), \(source): \(validate.stdout)\(validate.stderr)")
                let engine = source + ".anvil"
                let built = try TestSupport.run(["build", source, "-o", engine])
                XCTAssertEqual(built.status, 0, "\(name), \(source): \(built.stderr)")
                // A fast layer (oneDNN's HardSwish), not the reference kernel.
                XCTAssertTrue(built.stdout.contains(", 0 on slow paths)"), "\(name), \(source): \(built.stdout)")
                let run = try TestSupport.run(["validate", engine, "--reference", folder + "/reference"])
                XCTAssertEqual(run.status, 0, "\(name), \(source): \(run.stdout)\(run.stderr)")
            }
        }
    }
}

/// Every Anvil op with a standard op's semantics exports, below that op's opset,
/// a body that ONNX Runtime runs with the results of Anvil's kernel.
final class AnvilStandardOpsExportTests: XCTestCase {
    func testEveryOpOfTheTableHasAnExportBodyBeforeItsStandardOpset() throws {
        // op → (inputs with shapes, attributes, output shape)
        let samples: [String: (inputs: [(String, [Int])], attributes: [String: Attribute], output: [Int])] = [
            "Gelu": ([("x", [2, 6])], ["approximate": .string("tanh")], [2, 6]),
            "HardSwish": ([("x", [2, 6])], [:], [2, 6]),
            "LayerNormalization": ([("x", [2, 3, 4]), ("scale", [4]), ("bias", [4])], ["axis": .int(-1), "epsilon": .float(1e-5)], [2, 3, 4]),
            "RMSNormalization": ([("x", [2, 3, 4]), ("scale", [4])], ["axis": .int(-1), "epsilon": .float(1e-5)], [2, 3, 4]),
            "Attention": ([("q", [1, 2, 3, 4]), ("k", [1, 2, 5, 4]), ("v", [1, 2, 5, 4])], ["scale": .float(0.5)], [1, 2, 3, 4]),
        ]
        for (op, standardSince) in anvilStandardOps.sorted(by: { $0.key < $1.key }) {
            guard let sample = samples[op] else { XCTFail("add an export sample for ai.anvil.\(op)"); continue }
            let inputs = sample.inputs.map { name, dims in ValueInfo(name: name, type: TensorType(.float, shape: dims)) }
            let output = ValueInfo(name: "y", type: TensorType(.float, shape: sample.output))
            let node = Node(name: "n", opType: op, domain: anvilDomain, inputs: inputs.map(\.name), outputs: ["y"], attributes: sample.attributes)
            let model = Model(graph: Graph(name: "g", inputs: inputs, outputs: [output], nodes: [node]),
                              opsets: [OpsetImport(domain: "", version: standardSince - 1), OpsetImport(domain: anvilDomain, version: 1)])
            var rng = SeededGenerator(seed: 7)
            var feed: [String: Tensor] = [:]
            for (name, dims) in sample.inputs {
                feed[name] = try Tensor(floats: (0..<dims.reduce(1, *)).map { _ in Float.random(in: -3...3, using: &rng) }, shape: dims)
            }
            let folder = try TestSupport.temporaryFolder()
            try ExportChecks.writeWithReference(model, inputs: [feed], folder: folder)
            XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(folder + "/model.onnx", reference: folder + "/reference"), 0,
                           "ai.anvil.\(op) at opset \(standardSince - 1): onnx.checker or ONNX Runtime refused the export or disagreed")
        }
    }
}

/// A fused op whose optional middle input is absent (a FusedMatMul with a residual and no
/// bias, as T5's attention output projection fuses) exports a function that declares every
/// position, so ONNX Runtime binds the residual where it belongs.
final class FusedOpExportTests: XCTestCase {
    func testAbsentMiddleInputKeepsTheLaterOnesInPlace() throws {
        let inputs = [ValueInfo(name: "x", type: TensorType(.float, shape: [2, 4])), ValueInfo(name: "w", type: TensorType(.float, shape: [4, 3])),
                      ValueInfo(name: "r", type: TensorType(.float, shape: [2, 3]))]
        let node = Node(name: "n", opType: "FusedMatMul", domain: anvilDomain, inputs: ["x", "w", "", "r"], outputs: ["y"],
                        attributes: ["activation": .string("Relu")])
        let model = Model(graph: Graph(name: "g", inputs: inputs, outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [2, 3]))], nodes: [node]),
                          opsets: [OpsetImport(domain: "", version: 17), OpsetImport(domain: anvilDomain, version: 1)])
        var rng = SeededGenerator(seed: 9)
        var feed: [String: Tensor] = [:]
        for input in inputs {
            let dims = input.type.concreteShape!
            feed[input.name] = try Tensor(floats: (0..<dims.reduce(1, *)).map { _ in Float.random(in: -2...2, using: &rng) }, shape: dims)
        }
        let folder = try TestSupport.temporaryFolder()
        try ExportChecks.writeWithReference(model, inputs: [feed], folder: folder)
        XCTAssertEqual(try ONNXImporter.load(path: folder + "/model.onnx").graph.nodes.map(\.inputs), [["x", "w", "", "r"]])
        XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(folder + "/model.onnx", reference: folder + "/reference"), 0,
                       "onnx.checker or ONNX Runtime refused the export or disagreed")
    }
}

/// Writes models with reference data and checks them with ONNX Runtime.
enum ExportChecks {
    /// Writes `model` to folder/model.onnx and, under folder/reference, one
    /// test_data_set per input set with the reference executor's outputs.
    static func writeWithReference(_ model: Model, inputs: [[String: Tensor]], folder: String) throws {
        try ONNXExporter.write(model, to: folder + "/model.onnx")
        for (k, feed) in inputs.enumerated() {
            let set = folder + "/reference/test_data_set_\(k)"
            try FileManager.default.createDirectory(atPath: set, withIntermediateDirectories: true)
            var files: [(path: String, bytes: [UInt8])] = []
            for (i, input) in model.graph.runtimeInputs.enumerated() {
                guard let value = feed[input.name] else { continue }
                let path = set + "/input_\(i).pb"
                files.append((path, try TensorFiles.encode(value, name: input.name, forPath: path)))
            }
            for (i, output) in try ReferenceExecutor(model: model).run(feed).enumerated() {
                let path = set + "/output_\(i).pb"
                files.append((path, try TensorFiles.encode(output.value, name: output.name, forPath: path)))
            }
            try OutputFiles.write(files)
        }
    }

    /// The exit status of tools/check-onnx-export (onnx.checker, then ONNX Runtime against the reference).
    static func onnxRuntimeStatus(_ model: String, reference: String) throws -> Int32 {
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "\(TestSupport.root)/tools/check-onnx-export", model, reference]
        try check.run()
        check.waitUntilExit()
        return check.terminationStatus
    }
}
