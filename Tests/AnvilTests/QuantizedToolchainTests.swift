import AnvilBuilder
import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilRuntime
import XCTest

/// Q/DQ forms other quantizers write than ONNX Runtime's quantize_static: NNCF's transformer
/// products (DQ(a) · DQ(w) → MatMul → Add of a float bias, read as floats or quantized on),
/// PyTorch's QAT weights (DequantizeLinear(QuantizeLinear(float weights))). Each runs as one
/// INT8 matrix product, with the float bias added in real units, as the model computes it.
final class QuantizedToolchainTests: XCTestCase {
    func productModel(quantizedOutput: Bool, qatWeights: Bool, seed: UInt64) throws -> (Model, [String: Tensor]) {
        var rng = SeededGenerator(seed: seed)
        let (k, n) = (32, 24)
        func random(_ count: Int, _ range: ClosedRange<Float>) -> [Float] { (0..<count).map { _ in Float.random(in: range, using: &rng) } }
        var nodes = [Node(name: "qa", opType: "QuantizeLinear", inputs: ["x", "xs", "xz"], outputs: ["xq"]),
                     Node(name: "dqa", opType: "DequantizeLinear", inputs: ["xq", "xs", "xz"], outputs: ["xd"]),
                     Node(name: "dqw", opType: "DequantizeLinear", inputs: ["wq", "ws", "wz"], outputs: ["wd"], attributes: ["axis": .int(1)]),
                     Node(name: "mm", opType: "MatMul", inputs: ["xd", "wd"], outputs: ["m"]),
                     Node(name: "bias", opType: "Add", inputs: ["b", "m"], outputs: [quantizedOutput ? "a" : "y"])]
        if quantizedOutput {
            nodes += [Node(name: "qy", opType: "QuantizeLinear", inputs: ["a", "ys", "yz"], outputs: ["yq"]),
                      Node(name: "dqy", opType: "DequantizeLinear", inputs: ["yq", "ys", "yz"], outputs: ["y"])]
        }
        if qatWeights { nodes.insert(Node(name: "qw", opType: "QuantizeLinear", inputs: ["w", "ws", "wz"], outputs: ["wq"], attributes: ["axis": .int(1)]), at: 2) }
        let graph = Graph(name: "product", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 5, k]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [1, 5, n]))], nodes: nodes)
        let scales = random(n, 0.002...0.01)
        graph.setInitializer("xs", try Tensor(floats: [0.03], shape: []))
        graph.setInitializer("xz", try Tensor(.int8, shape: [], int64s: [7]))
        graph.setInitializer("ws", try Tensor(floats: scales, shape: [n]))
        graph.setInitializer("wz", try Tensor(.int8, shape: [n], int64s: Array(repeating: 0, count: n)))
        if qatWeights {
            graph.setInitializer("w", try Tensor(floats: random(k * n, -0.9...0.9), shape: [k, n]))
        } else {
            graph.setInitializer("wq", try Tensor(.int8, shape: [k, n], int64s: (0..<(k * n)).map { _ in Int64.random(in: -127...127, using: &rng) }))
        }
        graph.setInitializer("b", try Tensor(floats: random(n, -0.7...0.7), shape: [1, 1, n]))
        graph.setInitializer("ys", try Tensor(floats: [0.02], shape: []))
        graph.setInitializer("yz", try Tensor(.uint8, shape: [], int64s: [120]))
        let x = try Tensor(floats: random(5 * k, -3...3), shape: [1, 5, k])
        return (Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)]), ["x": x])
    }

    func testProductsWithAFloatBiasRunAsInt8MatrixProducts() throws {
        for (quantizedOutput, qatWeights) in [(false, false), (true, false), (false, true)] {
            let what = "quantized output \(quantizedOutput), QAT weights \(qatWeights)"
            let (model, feed) = try productModel(quantizedOutput: quantizedOutput, qatWeights: qatWeights, seed: quantizedOutput ? 3 : 4)
            let built = try EngineBuilder().build(model, name: "product")
            let products = built.graph.layers.filter { $0.decision?.kernel == .quantizedMatmul }
            XCTAssertEqual(products.count, 1, "\(what): \(built.graph.layers.map { "\($0.opType): \(String(describing: $0.decision?.kernel))" })")
            XCTAssertFalse(built.graph.layers.contains { $0.decision?.isSlowPath ?? true }, what)
            XCTAssertFalse(built.graph.layers.contains { ["MatMul", "Add", "FusedMatMul"].contains($0.opType) }, what)
            // The model's float arithmetic, computed exactly on the integers: equal to rounding error
            // (a quantized output: within one step of its scale, ties moved by float sums).
            let expected = try ReferenceExecutor(model: model).run(feed)[0].value.floats
            let actual = try ExecutionContext(engine: built.engine).run(feed)[0].value.floats
            let worst = zip(actual, expected).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(worst, quantizedOutput ? 0.0201 : 1e-4, what)
            // `anvil optimize` writes bodies ONNX Runtime runs with the model's results.
            let folder = try TestSupport.temporaryFolder()
            try ExportChecks.writeWithReference(model, inputs: [feed], folder: folder)
            let optimized = folder + "/optimized.onnx"
            let result = try TestSupport.run(["optimize", folder + "/model.onnx", "-o", optimized])
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertTrue(try ONNXImporter.load(path: optimized).graph.nodes.contains { $0.opType.hasSuffix("QLinearMatMul") }, what)
            if !quantizedOutput { XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(optimized, reference: folder + "/reference"), 0, what) }
        }
    }

    /// PyTorch's QAT export of a convolution with batch normalization: DQ(x) → Conv(DQ(Q(w)))
    /// → Div(per-channel) → BatchNormalization → Relu → Q. The affine steps fold into the
    /// weight scales and the bias: one INT8 convolution.
    func testQatConvolutionWithItsAffineStepsIsOneInt8Convolution() throws {
        var rng = SeededGenerator(seed: 12)
        let (c, k) = (8, 6)
        func random(_ count: Int, _ range: ClosedRange<Float>) -> [Float] { (0..<count).map { _ in Float.random(in: range, using: &rng) } }
        let graph = Graph(name: "qat", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, c, 10, 10]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [1, k, 10, 10]))],
                          nodes: [Node(name: "qx", opType: "QuantizeLinear", inputs: ["x", "xs", "xz"], outputs: ["xq"]),
                                  Node(name: "dqx", opType: "DequantizeLinear", inputs: ["xq", "xs", "xz"], outputs: ["xd"]),
                                  Node(name: "qw", opType: "QuantizeLinear", inputs: ["w", "ws", "wz"], outputs: ["wq"], attributes: ["axis": .int(0)]),
                                  Node(name: "dqw", opType: "DequantizeLinear", inputs: ["wq", "ws", "wz"], outputs: ["wd"], attributes: ["axis": .int(0)]),
                                  Node(name: "conv", opType: "Conv", inputs: ["xd", "wd", "b"], outputs: ["c"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                  Node(name: "div", opType: "Div", inputs: ["c", "k"], outputs: ["d"]),
                                  Node(name: "bn", opType: "BatchNormalization", inputs: ["d", "g", "beta", "mean", "var"], outputs: ["n"]),
                                  Node(name: "relu", opType: "Relu", inputs: ["n"], outputs: ["r"]),
                                  Node(name: "qy", opType: "QuantizeLinear", inputs: ["r", "ys", "yz"], outputs: ["yq"]),
                                  Node(name: "dqy", opType: "DequantizeLinear", inputs: ["yq", "ys", "yz"], outputs: ["y"])])
        let inits: [(String, Tensor)] = [
            ("xs", try Tensor(floats: [0.02], shape: [])), ("xz", try Tensor(.uint8, shape: [], int64s: [128])),
            ("w", try Tensor(floats: random(k * c * 9, -0.5...0.5), shape: [k, c, 3, 3])), ("ws", try Tensor(floats: random(k, 0.002...0.005), shape: [k])),
            ("wz", try Tensor(.int8, shape: [k], int64s: Array(repeating: 0, count: k))), ("b", try Tensor(floats: random(k, -0.2...0.2), shape: [k])),
            ("k", try Tensor(floats: random(k, 0.5...1.5), shape: [1, k, 1, 1])), ("g", try Tensor(floats: random(k, 0.5...1.5), shape: [k])),
            ("beta", try Tensor(floats: random(k, -0.3...0.3), shape: [k])), ("mean", try Tensor(floats: random(k, -0.2...0.2), shape: [k])),
            ("var", try Tensor(floats: random(k, 0.5...2), shape: [k])), ("ys", try Tensor(floats: [0.015], shape: [])), ("yz", try Tensor(.uint8, shape: [], int64s: [0])),
        ]
        for (name, t) in inits { graph.setInitializer(name, t) }
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
        let feed = ["x": try Tensor(floats: random(c * 100, -2...2), shape: [1, c, 10, 10])]
        let built = try EngineBuilder().build(model, name: "qat")
        XCTAssertEqual(built.graph.layers.filter { $0.decision?.kernel == .quantizedConvolution }.count, 1)
        XCTAssertFalse(built.graph.layers.contains { ["Conv", "FusedConv", "BatchNormalization", "Div"].contains($0.opType) },
                       "\(built.graph.layers.map(\.opType))")
        // Within one output step of the model's own arithmetic (the folded bias rounds to int32).
        let expected = try ReferenceExecutor(model: model).run(feed)[0].value.floats
        let actual = try ExecutionContext(engine: built.engine).run(feed)[0].value.floats
        XCTAssertLessThanOrEqual(zip(actual, expected).map { abs($0 - $1) }.max()!, 0.0151)
        XCTAssertGreaterThan(PrecisionTests.cosine(actual, expected), 0.9999)
    }

    /// NNCF's YOLO form: DQ → Conv → Sigmoid, Mul (SiLU) → Q, and DQ → Split → Conv with no Q
    /// between the split and the convolutions. The SiLU folds into the convolution; the split
    /// runs on the 8-bit tensor with a DequantizeLinear after each part, so the convolutions
    /// behind it fold too.
    func testSiluAndSplitOfDequantizedFeaturesFold() throws {
        var rng = SeededGenerator(seed: 29)
        let c = 16
        func random(_ count: Int, _ range: ClosedRange<Float>) -> [Float] { (0..<count).map { _ in Float.random(in: range, using: &rng) } }
        var nodes = [Node(name: "qx", opType: "QuantizeLinear", inputs: ["x", "s", "z"], outputs: ["xq"]),
                     Node(name: "dqx", opType: "DequantizeLinear", inputs: ["xq", "s", "z"], outputs: ["xd"]),
                     Node(name: "conv", opType: "Conv", inputs: ["xd", "w0d"], outputs: ["c"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                     Node(name: "sigmoid", opType: "Sigmoid", inputs: ["c"], outputs: ["g"]),
                     Node(name: "silu", opType: "Mul", inputs: ["c", "g"], outputs: ["a"]),
                     Node(name: "qa", opType: "QuantizeLinear", inputs: ["a", "s", "z"], outputs: ["aq"]),
                     Node(name: "dqa", opType: "DequantizeLinear", inputs: ["aq", "s", "z"], outputs: ["ad"]),
                     Node(name: "split", opType: "Split", inputs: ["ad"], outputs: ["h0", "h1"], attributes: ["axis": .int(1)]),
                     Node(name: "concat", opType: "Concat", inputs: ["y0", "y1"], outputs: ["y"], attributes: ["axis": .int(1)])]
        for i in 0..<3 {
            nodes.insert(Node(name: "dqw\(i)", opType: "DequantizeLinear", inputs: ["w\(i)", "ws\(i)"], outputs: ["w\(i)d"], attributes: ["axis": .int(0)]), at: 0)
        }
        for i in 0..<2 {
            nodes += [Node(name: "conv\(i)", opType: "Conv", inputs: ["h\(i)", "w\(i + 1)d"], outputs: ["k\(i)"]),
                      Node(name: "qk\(i)", opType: "QuantizeLinear", inputs: ["k\(i)", "s", "z"], outputs: ["kq\(i)"]),
                      Node(name: "dqk\(i)", opType: "DequantizeLinear", inputs: ["kq\(i)", "s", "z"], outputs: ["y\(i)"])]
        }
        nodes.append(nodes.remove(at: nodes.firstIndex { $0.name == "concat" }!))
        let graph = Graph(name: "c2f", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, c, 8, 8]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [1, c, 8, 8]))], nodes: nodes)
        graph.setInitializer("s", try Tensor(floats: [0.04], shape: []))
        graph.setInitializer("z", try Tensor(.int8, shape: [], int64s: [-20]))
        for (i, shape) in [[c, c, 3, 3], [c / 2, c / 2, 1, 1], [c / 2, c / 2, 1, 1]].enumerated() {
            graph.setInitializer("w\(i)", try Tensor(.int8, shape: shape, int64s: (0..<shape.reduce(1, *)).map { _ in Int64.random(in: -100...100, using: &rng) }))
            graph.setInitializer("ws\(i)", try Tensor(floats: random(shape[0], 0.001...0.003), shape: [shape[0]]))
        }
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
        let feed = ["x": try Tensor(floats: random(c * 64, -2...2), shape: [1, c, 8, 8])]
        let built = try EngineBuilder().build(model, name: "c2f")
        XCTAssertEqual(built.graph.layers.filter { $0.decision?.kernel == .quantizedConvolution }.count, 3, "\(built.graph.layers.map(\.opType))")
        XCTAssertFalse(built.graph.layers.contains { ["Conv", "FusedConv", "Sigmoid", "Mul"].contains($0.opType) || ($0.decision?.isSlowPath ?? true) })
        let expected = try ReferenceExecutor(model: model).run(feed)[0].value.floats
        let actual = try ExecutionContext(engine: built.engine).run(feed)[0].value.floats
        // Equal but where float sums move a value across a rounding tie (one step, 0.04).
        XCTAssertLessThanOrEqual(zip(actual, expected).filter { abs($0 - $1) > 1e-5 }.count, 4)
        XCTAssertLessThanOrEqual(zip(actual, expected).map { abs($0 - $1) }.max()!, 0.0401)
    }

    /// ReLU6 quantized on its own (PyTorch's FX export): Conv → Q → DQ → Clip(0, 6) → Q. The
    /// clamp becomes the convolution's activation; results equal the chain's.
    func testClampingAfterAQuantizedConvolutionIsItsActivation() throws {
        var rng = SeededGenerator(seed: 31)
        let c = 8
        let graph = Graph(name: "relu6", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, c, 6, 6]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, shape: [1, c, 6, 6]))],
                          nodes: [Node(name: "qx", opType: "QuantizeLinear", inputs: ["x", "s", "z"], outputs: ["xq"]),
                                  Node(name: "dqx", opType: "DequantizeLinear", inputs: ["xq", "s", "z"], outputs: ["xd"]),
                                  Node(name: "dqw", opType: "DequantizeLinear", inputs: ["w", "ws"], outputs: ["wd"], attributes: ["axis": .int(0)]),
                                  Node(name: "conv", opType: "Conv", inputs: ["xd", "wd"], outputs: ["c"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                  Node(name: "qc", opType: "QuantizeLinear", inputs: ["c", "s", "z"], outputs: ["cq"]),
                                  Node(name: "dqc", opType: "DequantizeLinear", inputs: ["cq", "s", "z"], outputs: ["cd"]),
                                  Node(name: "clip", opType: "Clip", inputs: ["cd", "lo", "hi"], outputs: ["r"]),
                                  Node(name: "qr", opType: "QuantizeLinear", inputs: ["r", "s", "z"], outputs: ["rq"]),
                                  Node(name: "dqr", opType: "DequantizeLinear", inputs: ["rq", "s", "z"], outputs: ["y"])])
        graph.setInitializer("s", try Tensor(floats: [0.05], shape: []))
        graph.setInitializer("z", try Tensor(.uint8, shape: [], int64s: [100]))
        graph.setInitializer("w", try Tensor(.int8, shape: [c, c, 3, 3], int64s: (0..<(c * c * 9)).map { _ in Int64.random(in: -120...120, using: &rng) }))
        graph.setInitializer("ws", try Tensor(floats: (0..<c).map { _ in Float.random(in: 0.002...0.004, using: &rng) }, shape: [c]))
        graph.setInitializer("lo", try Tensor(floats: [0], shape: []))
        graph.setInitializer("hi", try Tensor(floats: [6], shape: []))
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
        let feed = ["x": try Tensor(floats: (0..<(c * 36)).map { _ in Float.random(in: -4...4, using: &rng) }, shape: [1, c, 6, 6])]
        let built = try EngineBuilder().build(model, name: "relu6")
        XCTAssertEqual(built.graph.layers.filter { $0.decision?.kernel == .quantizedConvolution }.count, 1)
        XCTAssertFalse(built.graph.layers.contains { $0.opType == "QuantizedLookup" || $0.opType == "Clip" }, "\(built.graph.layers.map(\.opType))")
        let expected = try ReferenceExecutor(model: model).run(feed)[0].value.floats
        let actual = try ExecutionContext(engine: built.engine).run(feed)[0].value.floats
        XCTAssertLessThanOrEqual(zip(actual, expected).filter { abs($0 - $1) > 1e-6 }.count, 2)
        XCTAssertTrue(actual.allSatisfy { $0 >= -1e-6 && $0 <= 6.0001 })
    }

    /// --int8 on a model that quantizes itself says so: it quantizes the float layers left on top.
    func testInt8OnAQuantizedModelWarns() throws {
        let (model, feed) = try productModel(quantizedOutput: false, qatWeights: false, seed: 5)
        var builder = EngineBuilder()
        builder.precision.int8 = true
        builder.calibration = [feed]
        let result = try builder.build(model, name: "product")
        XCTAssertTrue(result.warnings.contains { $0.contains("quantizes itself") && $0.contains("QuantizeLinear") }, "\(result.warnings)")
        XCTAssertFalse(try EngineBuilder().build(model, name: "product").warnings.contains { $0.contains("quantizes itself") })
    }
}
