import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilPasses
import AnvilRuntime
import Foundation
import XCTest

/// Explicit quantization (fixtures/quantized, tools/make-quantized-fixtures: a small residual
/// CNN quantized by ONNX Runtime's quantize_static): the Q/DQ pairs fold into INT8
/// convolutions and matrix products on oneDNN, nothing runs on a reference kernel, and the
/// outputs are ONNX Runtime's exactly (both honour every rounding the model asks for).
final class QuantizedModelTests: XCTestCase {
    func model(_ name: String) throws -> Model { try ONNXImporter.load(path: TestSupport.fixture("quantized/\(name)/model.onnx")) }

    /// Feeds and ONNX Runtime's outputs of a fixture's data sets.
    func dataSets(_ name: String, _ model: Model) throws -> [(feeds: [String: Tensor], expected: [Tensor])] {
        try TestDataSet.folders(under: TestSupport.fixture("quantized/\(name)")).map { folder in
            let data = try TestDataSet.load(folder)
            var feeds: [String: Tensor] = [:]
            for (input, value) in zip(model.graph.inputs, data.inputs) { feeds[input.name] = value.tensor }
            return (feeds, data.outputs.map(\.tensor))
        }
    }

    func testQDQModelsRunOnINT8KernelsAndMatchOnnxRuntime() throws {
        // Unsigned and signed activations, per-channel and per-tensor weight scales, and ONNX
        // Runtime's QOperator form (QLinearConv with com.microsoft QLinearAdd, QLinearGlobalAveragePool, QGemm).
        for name in ["qdq_resnet", "qdq_resnet_s8", "qdq_tensor_scales", "qoperator_resnet"] {
            let model = try model(name)
            let built = try EngineBuilder().build(model, name: name)
            let layers = built.graph.layers
            XCTAssertTrue(layers.allSatisfy { $0.decision?.isSlowPath == false }, "\(name): \(layers.filter { $0.decision?.isSlowPath != false }.map(\.name))")
            let convolutions = layers.filter { $0.decision?.kernel == .quantizedConvolution }
            XCTAssertEqual(convolutions.count, 8, name)
            XCTAssertTrue(convolutions.allSatisfy { $0.decision?.precision == .int8 }, name)
            // Both residual additions fold into the convolution before them.
            XCTAssertEqual(convolutions.filter { $0.decision?.postOps.residual == true }.count, 2, name)
            XCTAssertEqual(layers.filter { $0.decision?.kernel == .quantizedMatmul }.count, 1, "\(name): the classifier's Gemm")
            XCTAssertEqual(layers.filter { $0.opType == "MaxPool" }.first?.decision?.precision, .int8, "\(name): max pooling on 8-bit values")
            // Read back from the file's bytes, as from disk.
            let loaded = try Engine(file: try built.file.encoded().withUnsafeBytes { try EngineFile.decode($0, file: name) }, name: name)
            let context = ExecutionContext(engine: loaded)
            for (feeds, expected) in try dataSets(name, model) {
                for _ in 0..<2 {
                    let actual = try context.run(feeds)
                    XCTAssertEqual(actual[0].value.floats, expected[0].floats, "\(name): ONNX Runtime's output exactly")
                }
                // The reference executor on the model as written agrees as well.
                XCTAssertEqual(try ReferenceExecutor(model: model).run(feeds)[0].value.floats, expected[0].floats, name)
            }
        }
    }

    func testFoldedGraphMatchesTheModelOnTheReferenceExecutor() throws {
        // The optimized graph (QLinearConv, FusedQLinearConv with residual and inner
        // quantization, FusedQLinearMatMul) computes what the Q/DQ model does: the fused ops'
        // reference kernels are checked against ONNX Runtime's numbers, kernel by kernel.
        let model = try model("qdq_resnet")
        let optimized = model.copy()
        let context = try PipelineRunner().run(optimized)
        let ops = Set(optimized.graph.nodes.map(\.opType))
        XCTAssertTrue(ops.isSuperset(of: ["QLinearConv", "FusedQLinearConv", "FusedQLinearMatMul"]), "\(ops)")
        XCTAssertFalse(ops.contains("Conv"), "\(ops)")
        XCTAssertNotNil(context.statistics["fold-quantized-layers"])
        for (feeds, expected) in try dataSets("qdq_resnet", model) {
            XCTAssertEqual(try ReferenceExecutor(model: optimized).run(feeds)[0].value.floats, expected[0].floats)
        }
    }

    func testOptimizedModelExportsBodiesOnnxRuntimeRuns() throws {
        // Anvil's quantized ops leave `anvil optimize` as functions of standard ops
        // (DequantizeLinear, Conv, QuantizeLinear …): ONNX Runtime runs the export and gets its own numbers.
        let folder = try TestSupport.temporaryFolder(), optimized = folder + "/optimized.onnx"
        let result = try TestSupport.run(["optimize", TestSupport.fixture("quantized/qdq_resnet/model.onnx"), "-o", optimized])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(try ONNXImporter.load(path: optimized).graph.nodes.contains { $0.opType == "FusedQLinearConv" })
        XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(optimized, reference: TestSupport.fixture("quantized/qdq_resnet")), 0)
    }

    func testQuantizeLinearDividesAsTheSpecificationSays() throws {
        // x / scale rounds differently from x · (1 / scale) at ties, which inputs on a grid
        // (images: pixel / 255) hit often; QuantizeLinear's kernel must divide.
        let scale: Float = 0.01960784, values: [Float] = (0..<256).map { Float($0) / 255 * 5 - 2.5 } + [.nan, .infinity, -.infinity, 1e9, -1e9]
        let graph = Graph(name: "q", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [values.count]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [values.count]))],
                          nodes: [Node(name: "q", opType: "QuantizeLinear", inputs: ["x", "s", "z"], outputs: ["q"]),
                                  Node(name: "dq", opType: "DequantizeLinear", inputs: ["q", "s", "z"], outputs: ["y"])])
        graph.setInitializer("s", try Tensor(floats: [scale], shape: []))
        graph.setInitializer("z", try Tensor(.uint8, shape: [], int64s: [128]))
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
        let built = try TestSupport.unoptimized(model)
        XCTAssertEqual(built.graph.layers.map { $0.decision?.kernel }, [.quantize, .dequantize])
        let actual = try ExecutionContext(engine: built.engine).run(["x": try Tensor(floats: values, shape: [values.count])])[0].value.floats
        let expected = values.map { v -> Float in
            let q = v.isNaN ? 0 : min(max((v / scale).rounded(.toNearestOrEven) + 128, 0), 255)
            return (q - 128) * scale
        }
        XCTAssertEqual(actual, expected)
        // The reference kernel (per-channel QuantizeLinear, --reference-executor, folding the Q of
        // constant weights) divides in float32 too: a float32 quotient on .5 that double division
        // puts just above it (0.4307545 / 0.017581817 = 24.5 in float32) rounds to 24, as ONNX Runtime's.
        let reference = try ReferenceExecutor(model: model).run(["x": try Tensor(floats: values, shape: [values.count])])[0].value.floats
        XCTAssertEqual(reference, expected)
        let tie = Graph(name: "tie", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1]))], outputs: [ValueInfo(name: "q", type: TensorType(.uint8, shape: [1]))],
                        nodes: [Node(name: "q", opType: "QuantizeLinear", inputs: ["x", "s", "z"], outputs: ["q"])])
        tie.setInitializer("s", try Tensor(floats: [0.017581817], shape: []))
        tie.setInitializer("z", try Tensor(.uint8, shape: [], int64s: [0]))
        let q = try ReferenceExecutor(model: Model(graph: tie, opsets: [OpsetImport(domain: "", version: 17)])).run(["x": try Tensor(floats: [0.4307545], shape: [1])])
        XCTAssertEqual(q[0].value.int64s, [24])
    }

    /// Per-channel activation quantization (NNCF's form before depthwise convolutions: one scale
    /// per channel, axis 1) runs on the fast kernels, equal to the reference, after a
    /// convolution (whatever layout it writes) and on a plain input.
    func testPerChannelQuantizationRunsOnFastKernels() throws {
        var rng = SeededGenerator(seed: 33)
        let c = 24
        for (signed, afterConv) in [(false, false), (true, true)] {
            let type: DataType = signed ? .int8 : .uint8
            let graph = Graph(name: "pc", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, c, 9, 7]))],
                              outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [1, c, 9, 7]))],
                              nodes: (afterConv ? [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints([1, 1, 1, 1])])] : [])
                                + [Node(name: "q", opType: "QuantizeLinear", inputs: [afterConv ? "a" : "x", "s", "z"], outputs: ["q"], attributes: ["axis": .int(1)]),
                                   Node(name: "dq", opType: "DequantizeLinear", inputs: ["q", "s", "z"], outputs: ["y"], attributes: ["axis": .int(1)])])
            graph.setInitializer("w", try Tensor(floats: (0..<(c * c * 9)).map { _ in Float.random(in: -0.2...0.2, using: &rng) }, shape: [c, c, 3, 3]))
            graph.setInitializer("s", try Tensor(floats: (0..<c).map { Float($0 + 1) / 97 }, shape: [c]))
            graph.setInitializer("z", try Tensor(type, shape: [c], int64s: Array(repeating: signed ? 0 : 3, count: c)))
            let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
            let x = try Tensor(floats: (0..<(c * 63)).map { _ in Float.random(in: -3...3, using: &rng) }, shape: [1, c, 9, 7])
            let built = try TestSupport.unoptimized(model)
            XCTAssertEqual(built.graph.layers.suffix(2).map { $0.decision?.kernel }, [.quantize, .dequantize])
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value.floats
            let actual = try ExecutionContext(engine: built.engine).run(["x": x])[0].value.floats
            if afterConv {
                // The convolution's float sums may differ in the last bit, moving a value across a rounding tie.
                XCTAssertLessThanOrEqual(zip(actual, expected).filter { $0 != $1 }.count, 2)
            } else {
                XCTAssertEqual(actual, expected)
            }
        }
    }

    func testMicrosoftQuantizedOpsDequantizeComputeAndQuantize() throws {
        // Each com.microsoft QLinear op equals dequantize → the float op → quantize, computed here by hand.
        let x: [Float] = [0, 3, 17, 128, 200, 255, 90, 40], zx: Float = 100, sx: Float = 0.05, sy: Float = 0.03, zy: Float = 20
        func quantize(_ v: Float) -> Float { min(max((v / sy).rounded(.toNearestOrEven) + zy, 0), 255) }
        func run(_ op: String, _ attributes: [String: Attribute] = [:], extra: [(String, Tensor)] = [], inputs: [String], shape: [Int] = [1, 2, 2, 2]) throws -> [Float] {
            let graph = Graph(name: op, inputs: [ValueInfo(name: "x", type: TensorType(.uint8, shape: [1, 2, 2, 2]))],
                              outputs: [ValueInfo(name: "y", type: TensorType(.uint8, shape: shape))],
                              nodes: [Node(name: "n", opType: op, domain: microsoftDomain, inputs: inputs, outputs: ["y"], attributes: attributes)])
            for (name, t) in [("sx", try Tensor(floats: [sx], shape: [])), ("zx", try Tensor(.uint8, shape: [], int64s: [Int64(zx)])),
                              ("sy", try Tensor(floats: [sy], shape: [])), ("zy", try Tensor(.uint8, shape: [], int64s: [Int64(zy)]))] + extra {
                graph.setInitializer(name, t)
            }
            let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17), OpsetImport(domain: microsoftDomain, version: 1)])
            let feed = ["x": try Tensor(.uint8, shape: [1, 2, 2, 2], int64s: x.map { Int64($0) })]
            return try ReferenceExecutor(model: model).run(feed)[0].value.floats
        }
        let real = x.map { ($0 - zx) * sx }
        XCTAssertEqual(try run("QLinearMul", inputs: ["x", "sx", "zx", "x", "sx", "zx", "sy", "zy"]), real.map { quantize($0 * $0) })
        XCTAssertEqual(try run("QLinearSigmoid", inputs: ["x", "sx", "zx", "sy", "zy"]), real.map { quantize(1 / (1 + exp(-$0))) })
        XCTAssertEqual(try run("QLinearLeakyRelu", ["alpha": .float(0.1)], inputs: ["x", "sx", "zx", "sy", "zy"]), real.map { quantize($0 < 0 ? 0.1 * $0 : $0) })
        XCTAssertEqual(try run("QLinearConcat", ["axis": .int(1)], inputs: ["sy", "zy", "x", "sx", "zx", "x", "sx", "zx"], shape: [1, 4, 2, 2]),
                       (real + real).map(quantize))
        let pooled = try run("QLinearAveragePool", ["kernel_shape": .ints([2, 2])], inputs: ["x", "sx", "zx", "sy", "zy"], shape: [1, 2, 1, 1])
        XCTAssertEqual(pooled, [quantize(real[0..<4].reduce(0, +) / 4), quantize(real[4..<8].reduce(0, +) / 4)])
    }

    func testQuantizedConvolutionsInsideControlFlowRunOnINT8Kernels() throws {
        // The Q/DQ network as both branches of an If on a runtime flag: the layer interpreter runs
        // the branch, its quantized convolutions on oneDNN's INT8 kernels (channels-last), not the reference.
        let inner = try model("qdq_resnet")
        func branch() -> Graph {
            let g = inner.graph.copy()
            g.inputs = []
            return g
        }
        let graph = Graph(name: "if", inputs: inner.graph.inputs + [ValueInfo(name: "flag", type: TensorType(.bool, shape: []))],
                          outputs: inner.graph.outputs,
                          nodes: [Node(name: "if", opType: "If", inputs: ["flag"], outputs: inner.graph.outputs.map(\.name),
                                       attributes: ["then_branch": .graph(branch()), "else_branch": .graph(branch())])])
        let model = Model(graph: graph, opsets: inner.opsets)
        let context = ExecutionContext(engine: try EngineBuilder().build(model, name: "if").engine)
        context.profiling = true
        for (feeds, expected) in try dataSets("qdq_resnet", inner) {
            var f = feeds
            f["flag"] = try Tensor(.bool, shape: [], int64s: [1])
            XCTAssertEqual(try context.run(f)[0].value.floats, expected[0].floats)
        }
        let kernels = context.profile.map(\.kernels)
        XCTAssertTrue(kernels.contains { $0.contains("vnni") }, "\(kernels)")
    }

    func testQuantizedElementwiseChainsBecomeOneLookup() throws {
        // QDQ SiLU as ONNX Runtime writes it: DQ(x) → Sigmoid → Q → DQ, Mul(DQ(x), ·) → Q, and a
        // HardSwish on an int8 tensor: each a QuantizedLookup whose result is the model's exactly.
        for type in [DataType.uint8, .int8] {
            let graph = Graph(name: "silu", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [2, 300]))],
                              outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [2, 300])), ValueInfo(name: "h", type: TensorType(.float, shape: [2, 300]))],
                              nodes: [Node(name: "qx", opType: "QuantizeLinear", inputs: ["x", "sx", "zx"], outputs: ["xq"]),
                                      Node(name: "dqx", opType: "DequantizeLinear", inputs: ["xq", "sx", "zx"], outputs: ["xf"]),
                                      Node(name: "sig", opType: "Sigmoid", inputs: ["xf"], outputs: ["s"]),
                                      Node(name: "qs", opType: "QuantizeLinear", inputs: ["s", "ss", "zs"], outputs: ["sq"]),
                                      Node(name: "dqs", opType: "DequantizeLinear", inputs: ["sq", "ss", "zs"], outputs: ["sf"]),
                                      Node(name: "mul", opType: "Mul", inputs: ["xf", "sf"], outputs: ["m"]),
                                      Node(name: "qm", opType: "QuantizeLinear", inputs: ["m", "sm", "zm"], outputs: ["mq"]),
                                      Node(name: "dqm", opType: "DequantizeLinear", inputs: ["mq", "sm", "zm"], outputs: ["y"]),
                                      Node(name: "hs", opType: "HardSwish", inputs: ["xf"], outputs: ["hf"]),
                                      Node(name: "qh", opType: "QuantizeLinear", inputs: ["hf", "sm", "zm"], outputs: ["hq"]),
                                      Node(name: "dqh", opType: "DequantizeLinear", inputs: ["hq", "sm", "zm"], outputs: ["h"])])
            let zero: Int64 = type == .uint8 ? 128 : 0
            for (name, t) in [("sx", try Tensor(floats: [0.04], shape: [])), ("zx", try Tensor(type, shape: [], int64s: [zero])),
                              ("ss", try Tensor(floats: [1.0 / 255], shape: [])), ("zs", try Tensor(.uint8, shape: [], int64s: [0])),
                              ("sm", try Tensor(floats: [0.03], shape: [])), ("zm", try Tensor(type, shape: [], int64s: [zero / 4]))] {
                graph.setInitializer(name, t)
            }
            let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
            let built = try EngineBuilder().build(model, name: "silu")
            XCTAssertEqual(built.graph.layers.filter { $0.opType == "QuantizedLookup" }.count, 2, "\(type): \(built.graph.layers.map(\.opType))")
            XCTAssertFalse(built.graph.layers.contains { $0.opType == "Sigmoid" || $0.opType == "Mul" || $0.opType == "HardSwish" })
            var rng = SeededGenerator(seed: 3)
            let feed = ["x": try Tensor(floats: (0..<600).map { _ in Float.random(in: -6...6, using: &rng) }, shape: [2, 300])]
            let expected = try ReferenceExecutor(model: model).run(feed)
            let actual = try ExecutionContext(engine: built.engine).run(feed)
            for (a, e) in zip(actual, expected) { XCTAssertEqual(a.value.floats, e.value.floats, "\(type) \(a.name)") }
            // The optimized model's export (Gather from the table) runs in ONNX Runtime to the same numbers.
            let folder = try TestSupport.temporaryFolder()
            defer { try? FileManager.default.removeItem(atPath: folder) }
            try ExportChecks.writeWithReference(model, inputs: [feed], folder: folder)
            let optimize = try TestSupport.run(["optimize", folder + "/model.onnx", "-o", folder + "/optimized.onnx"])
            XCTAssertEqual(optimize.status, 0, optimize.stderr)
            XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(folder + "/optimized.onnx", reference: folder + "/reference"), 0, "\(type)")
        }
    }
}
