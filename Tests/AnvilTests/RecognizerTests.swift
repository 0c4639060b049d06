import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilPasses
import XCTest

/// Small graph builder for pattern tests.
struct GraphBuilder {
    var nodes: [Node] = []
    var initializers: [(String, Tensor)] = []
    var counter = 0

    mutating func const(_ values: [Float], _ shape: [Int] = []) -> String {
        counter += 1
        let name = "c\(counter)"
        initializers.append((name, try! Tensor(floats: values, shape: shape)))
        return name
    }

    mutating func ints(_ values: [Int64], _ shape: [Int]? = nil) -> String {
        counter += 1
        let name = "i\(counter)"
        initializers.append((name, try! Tensor(int64s: values, shape: shape ?? [values.count])))
        return name
    }

    mutating func op(_ type: String, _ inputs: [String], _ attributes: [String: Attribute] = [:]) -> String {
        counter += 1
        let out = "v\(counter)"
        nodes.append(Node(name: "\(type.lowercased())\(counter)", opType: type, inputs: inputs, outputs: [out], attributes: attributes))
        return out
    }

    func model(input shape: [Int], output: String, opset: Int = 17) -> Model {
        let nodes = self.nodes
        nodes.last!.outputs = ["y"]
        for n in nodes { n.inputs = n.inputs.map { $0 == output ? "y" : $0 } }
        let g = Graph(name: "g", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                      outputs: [ValueInfo(name: "y", type: .unknown)], nodes: nodes, initializers: initializers)
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: opset)])
    }
}

final class RecognizerTests: XCTestCase {
    func check(_ build: @escaping () -> Model, passes: [any Pass] = [RecognizeActivations(), EliminateDeadCode()],
               expect ops: [String], golden: String? = nil, file: StaticString = #filePath, line: UInt = #line) throws {
        let m = build()
        let (text, _) = try PassTesting.optimized(m, passes)
        XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), ops, file: file, line: line)
        if let golden { try PassTesting.assertGolden(text, golden, file: file, line: line) }
        try PassTesting.assertPreservesOutputs(build, passes, file: file, line: line)
    }

    func testGeluErfInEveryOrder() throws {
        // PyTorch: ((x * 0.5) * (erf(x / √2) + 1))
        try check({
            var b = GraphBuilder()
            let half = b.op("Mul", ["x", b.const([0.5])])
            let erf = b.op("Erf", [b.op("Div", ["x", b.const([1.4142135])])])
            let y = b.op("Mul", [half, b.op("Add", [erf, b.const([1])])])
            return b.model(input: [2, 8], output: y)
        }, expect: ["ai.anvil.Gelu"], golden: "gelu-erf")
        // x * (1 + erf(x * (1/√2))) * 0.5, opset 20: the standard op.
        try check({
            var b = GraphBuilder()
            let erf = b.op("Erf", [b.op("Mul", ["x", b.const([0.70710677])])])
            let y = b.op("Mul", [b.op("Mul", ["x", b.op("Add", [b.const([1]), erf])]), b.const([0.5])])
            return b.model(input: [3, 4], output: y, opset: 20)
        }, expect: ["Gelu"])
    }

    func testGeluTanhWithPowAndWithProducts() throws {
        for cubeWithPow in [true, false] {
            try check({
                var b = GraphBuilder()
                let cube = cubeWithPow ? b.op("Pow", ["x", b.const([3])]) : b.op("Mul", ["x", b.op("Mul", ["x", "x"])])
                let inner = b.op("Add", ["x", b.op("Mul", [cube, b.const([0.044715])])])
                let t = b.op("Tanh", [b.op("Mul", [inner, b.const([0.7978846])])])
                let y = b.op("Mul", [b.op("Mul", ["x", b.const([0.5])]), b.op("Add", [t, b.const([1])])])
                return b.model(input: [2, 5], output: y)
            }, expect: ["ai.anvil.Gelu"])
        }
    }

    func testHardSwishForms() throws {
        try check({
            var b = GraphBuilder()
            let clip = b.op("Clip", [b.op("Add", ["x", b.const([3])]), b.const([0]), b.const([6])])
            let y = b.op("Div", [b.op("Mul", ["x", clip]), b.const([6])])
            return b.model(input: [4, 4], output: y)
        }, expect: ["HardSwish"], golden: "hardswish")
        try check({
            var b = GraphBuilder()
            let y = b.op("Mul", ["x", b.op("HardSigmoid", ["x"], ["alpha": .float(1.0 / 6), "beta": .float(0.5)])])
            return b.model(input: [4, 4], output: y)
        }, expect: ["HardSwish"])
    }

    func testSiLU() throws {
        try check({
            var b = GraphBuilder()
            let y = b.op("Mul", [b.op("Sigmoid", ["x"]), "x"])
            return b.model(input: [2, 3], output: y)
        }, expect: ["ai.anvil.SiLU"], golden: "silu")
    }

    /// CLIP's quick GELU, x · sigmoid(1.702 · x): Swish with α = 1.702 (the standard op from
    /// opset 24, Anvil's SiLU with an alpha before), fused into the matrix product before it,
    /// run by oneDNN's swish and exported with a body ONNX Runtime runs.
    func testQuickGeluIsSwishWithAlpha() throws {
        for (opset, op) in [(17, "ai.anvil.SiLU"), (24, "Swish")] {
            try check({
                var b = GraphBuilder()
                let y = b.op("Mul", ["x", b.op("Sigmoid", [b.op("Mul", [b.const([1.702]), "x"])])])
                return b.model(input: [2, 6], output: y, opset: opset)
            }, expect: [op])
        }
        let build = { () -> Model in
            var b = GraphBuilder()
            let h = b.op("MatMul", ["x", b.const((0..<24).map { Float($0 % 7) / 7 - 0.4 }, [6, 4])])
            let y = b.op("Mul", [h, b.op("Sigmoid", [b.op("Mul", [h, b.const([1.702])])])])
            return b.model(input: [3, 6], output: y)
        }
        let model = build()
        _ = try PassTesting.optimized(model, Pipelines.standard)
        XCTAssertEqual(model.graph.nodes.map(\.qualifiedOpType), ["ai.anvil.FusedMatMul"])
        XCTAssertEqual(Activation(name: "Swish", alpha: 1.702, beta: nil), .swish(alpha: 1.702))
        try PassTesting.assertPreservesOutputs(build, Pipelines.standard)
        let x = try Tensor(floats: (0..<18).map { Float($0) / 3 - 3 }, shape: [3, 6])
        let folder = try TestSupport.temporaryFolder()
        try ExportChecks.writeWithReference(model, inputs: [["x": x]], folder: folder)
        XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(folder + "/model.onnx", reference: folder + "/reference"), 0)
        let built = try TestSupport.run(["build", folder + "/model.onnx", "-o", folder + "/e.anvil"])
        XCTAssertTrue(built.stdout.contains(", 0 on slow paths)"), built.stdout + built.stderr)
        let run = try TestSupport.run(["validate", folder + "/e.anvil", "--reference", folder + "/reference"])
        XCTAssertEqual(run.status, 0, run.stdout + run.stderr)
    }

    /// A pattern whose interior value is read elsewhere must not be rewritten.
    func testSharedInteriorValuesBlockRecognition() throws {
        var b = GraphBuilder()
        let s = b.op("Sigmoid", ["x"])
        let silu = b.op("Mul", ["x", s])
        let y = b.op("Add", [silu, s])
        let m = b.model(input: [2], output: y)
        _ = try PassTesting.optimized(m, [RecognizeActivations()])
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Sigmoid", "Mul", "Add"])
    }
}

final class NormalizationRecognizerTests: XCTestCase {
    /// x − mean, squared mean, ε, √, divide, then γ and β: PyTorch's LayerNorm before opset 17.
    func layerNorm(reciprocal: Bool, opset: Int) -> Model {
        var b = GraphBuilder()
        let axes: [String: Attribute] = opset < 18 ? ["axes": .ints([-1])] : [:]
        var meanInputs = ["x"]
        if opset >= 18 {
            b.initializers.append(("axes", try! Tensor(int64s: [-1], shape: [1])))
            meanInputs.append("axes")
        }
        let mean = b.op("ReduceMean", meanInputs, axes)
        let d = b.op("Sub", ["x", mean])
        let sq = b.op("Pow", [d, b.const([2])])
        let variance = b.op("ReduceMean", opset >= 18 ? [sq, "axes"] : [sq], axes)
        let s = b.op("Sqrt", [b.op("Add", [variance, b.const([1e-5])])])
        let n = reciprocal ? b.op("Mul", [d, b.op("Reciprocal", [s])]) : b.op("Div", [d, s])
        let scaled = b.op("Mul", [n, b.const([1, 2, 3, 4, 5, 6, 7, 8], [8])])
        let y = b.op("Add", [scaled, b.const([0.5, -0.5, 0, 1, 0, 0, 2, 0], [8])])
        return b.model(input: [2, 3, 8], output: y, opset: opset)
    }

    func testLayerNormalizationIsRecognizedWithScaleAndBias() throws {
        for (reciprocal, opset, op) in [(false, 13, "ai.anvil.LayerNormalization"), (true, 18, "LayerNormalization")] {
            let passes: [any Pass] = [RecognizeNormalizations(), EliminateDeadCode()]
            let m = layerNorm(reciprocal: reciprocal, opset: opset)
            let (text, _) = try PassTesting.optimized(m, passes)
            XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), [op])
            if opset == 13 { try PassTesting.assertGolden(text, "layernorm") }
            try PassTesting.assertPreservesOutputs({ self.layerNorm(reciprocal: reciprocal, opset: opset) }, passes)
        }
    }

    func testRMSNormalizationIsRecognized() throws {
        let build = { () -> Model in
            var b = GraphBuilder()
            let sq = b.op("Mul", ["x", "x"])
            let variance = b.op("ReduceMean", [sq], ["axes": .ints([2])])
            let s = b.op("Sqrt", [b.op("Add", [b.const([1e-6]), variance])])
            let y = b.op("Mul", [b.op("Div", ["x", s]), b.const([0.5, 1, 2, 4], [4])])
            return b.model(input: [1, 2, 4], output: y)
        }
        let passes: [any Pass] = [RecognizeNormalizations(), EliminateDeadCode()]
        let m = build()
        let (text, _) = try PassTesting.optimized(m, passes)
        try PassTesting.assertGolden(text, "rmsnorm")
        XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), ["ai.anvil.RMSNormalization"])
        try PassTesting.assertPreservesOutputs(build, passes)
    }

    /// Reductions over a middle axis are not a LayerNormalization.
    func testNonTrailingAxesAreLeftAlone() throws {
        var b = GraphBuilder()
        let mean = b.op("ReduceMean", ["x"], ["axes": .ints([1])])
        let d = b.op("Sub", ["x", mean])
        let variance = b.op("ReduceMean", [b.op("Pow", [d, b.const([2])])], ["axes": .ints([1])])
        let y = b.op("Div", [d, b.op("Sqrt", [b.op("Add", [variance, b.const([1e-5])])])])
        let m = b.model(input: [2, 3, 4], output: y)
        _ = try PassTesting.optimized(m, [RecognizeNormalizations()])
        XCTAssertEqual(m.graph.nodes.count, 7)
    }
}

final class AttentionRecognizerTests: XCTestCase {
    func testTransformerFixtureAttentionBecomesOneNode() throws {
        let load = { try ONNXImporter.load(path: TestSupport.fixture("transformer/model.onnx")) }
        let m = try load()
        _ = try PassTesting.optimized(m, Pipelines.standard)
        let ops = m.graph.nodes.map(\.qualifiedOpType)
        XCTAssertEqual(ops.filter { $0 == "ai.anvil.Attention" }.count, 1, "\(ops)")
        XCTAssertFalse(ops.contains("Softmax"), "\(ops)")
        try PassTesting.assertPreservesOutputs(load, Pipelines.standard)
    }

    /// 4-D Q, K, V with Kᵀ as Transpose(0,1,3,2) and the scale as a Div of the scores.
    func fourDimensional() -> Model {
        var b = GraphBuilder()
        let kT = b.op("Transpose", ["k"], ["perm": .ints([0, 1, 3, 2])])
        let scores = b.op("Div", [b.op("MatMul", ["x", kT]), b.const([4])])
        let probabilities = b.op("Softmax", [b.op("Add", [scores, "mask"])], ["axis": .int(-1)])
        let y = b.op("MatMul", [probabilities, "v"])
        let m = b.model(input: [1, 2, 5, 8], output: y, opset: 17)
        m.graph.inputs += [ValueInfo(name: "k", type: TensorType(.float, shape: [1, 2, 6, 8])),
                           ValueInfo(name: "v", type: TensorType(.float, shape: [1, 2, 6, 4])),
                           ValueInfo(name: "mask", type: TensorType(.float, shape: [1, 1, 5, 6]))]
        return m
    }

    /// The dynamo exporter's attention on x: float[batch, sequence, 16]: heads split by
    /// Reshapes to computed shapes, Kᵀ as Reshape([B·H, S, D]) → Transpose(0,2,1) →
    /// Reshape([B, H, D, S]), √scale on Q and on Kᵀ, a NaN guard after the Softmax, and
    /// the heads merged back by a Reshape to a computed shape.
    func dynamoAttention() -> Model {
        var b = GraphBuilder()
        let shape = b.op("Shape", ["x"])
        let leading = b.op("Slice", [shape, b.ints([0]), b.ints([2])])
        let headsShape = b.op("Concat", [leading, b.ints([2, 8])], ["axis": .int(0)])
        var heads: [String] = []
        for seed in 0..<3 {
            let w = b.const((0..<256).map { Float(($0 * 7 + seed * 13) % 17) / 17 - 0.5 }, [16, 16])
            heads.append(b.op("Transpose", [b.op("Reshape", [b.op("MatMul", ["x", w]), headsShape])], ["perm": .ints([0, 2, 1, 3])]))
        }
        let kShape = b.op("Shape", [heads[1]])
        let merged = b.op("Reshape", [heads[1], b.op("Concat", [b.ints([-1]), b.op("Slice", [kShape, b.ints([2]), b.ints([4])])], ["axis": .int(0)])])
        let split = b.op("Concat", [b.op("Slice", [kShape, b.ints([0]), b.ints([2])]), b.ints([8]), b.op("Slice", [kShape, b.ints([2]), b.ints([3])])], ["axis": .int(0)])
        let kT = b.op("Reshape", [b.op("Transpose", [merged], ["perm": .ints([0, 2, 1])]), split])
        let root = b.const([Float(1 / 8.0.squareRoot()).squareRoot()])
        let scores = b.op("MatMul", [b.op("Mul", [heads[0], root]), b.op("Mul", [kT, root])])
        let p = b.op("Softmax", [scores], ["axis": .int(-1)])
        let guarded = b.op("Where", [b.op("IsNaN", [p]), b.const([0]), p])
        let o = b.op("Transpose", [b.op("MatMul", [guarded, heads[2]])], ["perm": .ints([0, 2, 1, 3])])
        let y = b.op("Reshape", [o, b.op("Concat", [leading, b.ints([16])], ["axis": .int(0)])])
        let m = b.model(input: [1, 1, 16], output: y, opset: 18)
        m.graph.inputs[0].type = TensorType(.float, [.symbol("batch"), .symbol("sequence"), .known(16)])
        return m
    }

    func testDynamoAttentionOnSymbolicShapesTakesTheThreeDimensionalForm() throws {
        let m = dynamoAttention()
        _ = try PassTesting.optimized(m, Pipelines.standard)
        XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), ["MatMul", "MatMul", "MatMul", "ai.anvil.Attention"])
        XCTAssertEqual(try AttributeReader(node: m.graph.nodes.last!).int("q_num_heads"), 2)
        for size in [2, 5] {
            var rng = SeededGenerator(seed: UInt64(size))
            let x = try Tensor(floats: (0..<(size * (size + 1) * 16)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [size, size + 1, 16])
            try PassTesting.assertPreservesOutputs(dynamoAttention, Pipelines.standard, inputs: ["x": x])
        }
    }

    /// An Attention on head-split [B, H, S, D] tensors (recognized before the head
    /// reshapes' shapes were known, or written so by an exporter) takes the 3-D form.
    func testAttentionAbsorbsHeadSplitsAndMerge() throws {
        let build = { () -> Model in
            var b = GraphBuilder()
            let split = b.ints([1, 3, 2, 8])
            var heads: [String] = []
            for seed in 0..<3 {
                let w = b.const((0..<256).map { Float(($0 * 5 + seed * 11) % 19) / 19 - 0.5 }, [16, 16])
                heads.append(b.op("Transpose", [b.op("Reshape", [b.op("MatMul", ["x", w]), split])], ["perm": .ints([0, 2, 1, 3])]))
            }
            let o = b.op("Attention", heads, ["scale": .float(0.3)])
            let y = b.op("Reshape", [b.op("Transpose", [o], ["perm": .ints([0, 2, 1, 3])]), b.ints([1, 3, 16])])
            return b.model(input: [1, 3, 16], output: y, opset: 23)
        }
        let passes: [any Pass] = [RecognizeAttention(), EliminateDeadCode()]
        let m = build()
        _ = try PassTesting.optimized(m, passes)
        XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), ["MatMul", "MatMul", "MatMul", "Attention"])
        XCTAssertEqual(try AttributeReader(node: m.graph.nodes.last!).int("kv_num_heads"), 2)
        XCTAssertEqual(try AttributeReader(node: m.graph.nodes.last!).float("scale"), 0.3)
        try PassTesting.assertPreservesOutputs(build, passes)
    }

    func testFourDimensionalAttention() throws {
        let passes: [any Pass] = [RecognizeAttention(), EliminateDeadCode()]
        let m = fourDimensional()
        let (text, _) = try PassTesting.optimized(m, passes)
        XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), ["ai.anvil.Attention"])
        try PassTesting.assertGolden(text, "attention-4d")
        try PassTesting.assertPreservesOutputs(fourDimensional, passes)
    }
}
