import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilRuntime
import Foundation
import XCTest

/// NaN and ±∞ through the fast kernels, against the reference kernels: the ReLU and Clip
/// family (alone and fused into convolutions and matrix products), max pooling, softmax,
/// reductions, comparisons, Max and Min, ArgMax and TopK, with special values at random
/// positions. Finite inputs take plans with oneDNN's fastest forms; these must agree too.
final class NonFiniteTests: XCTestCase {
    /// Values in [-3, 3] with about `fraction` each of NaN, +∞ and −∞ at random positions.
    func special(_ shape: [Int], _ rng: inout SeededGenerator, fraction: Double = 0.04) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in
            let u = Double.random(in: 0..<1, using: &rng)
            if u < fraction { return .nan }
            if u < 2 * fraction { return .infinity }
            if u < 3 * fraction { return -.infinity }
            return Float.random(in: -3...3, using: &rng)
        }, shape: shape)
    }

    /// The same NaN positions and infinities; finite values within the tolerance of a
    /// reordered sum (and of the shifted clip of `DNNLAttributes.clip`).
    func assertAgree(_ actual: Tensor, _ expected: Tensor, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.shape, expected.shape, message, file: file, line: line)
        XCTAssertEqual(actual.dataType, expected.dataType, message, file: file, line: line)
        guard actual.dataType.isFloatingPoint else { return XCTAssertEqual(actual, expected, message, file: file, line: line) }
        var wrong: [String] = []
        for (i, (a, e)) in zip(actual.doubles, expected.doubles).enumerated() {
            let same = a.isNaN ? e.isNaN : (!e.isNaN && (a == e || (a.isFinite && e.isFinite && abs(a - e) <= 1e-4 + 1e-4 * abs(e))))
            if !same { wrong.append("[\(i)] \(a) for \(e)") }
        }
        XCTAssertTrue(wrong.isEmpty, "\(message): \(wrong.count) of \(actual.count) differ: \(wrong.prefix(6).joined(separator: ", "))", file: file, line: line)
    }

    /// Builds `graph` with the optimizer (so activations fuse), checks that the layers in
    /// `kinds` got those kernels, and runs inputs with and without special values through
    /// one context: each against the reference executor, on the plan made for it.
    func check(_ graph: Graph, inputs: [String: [Int]], kinds: [String: KernelKind] = [:], seed: UInt64 = 1, fraction: Double = 0.04, _ message: String,
               file: StaticString = #filePath, line: UInt = #line) throws {
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 19)])
        let built = try EngineBuilder().build(model, name: message)
        for (layer, kind) in kinds {
            let decided = built.compiled.decisions.first { $0.key.contains(layer) }?.value
            XCTAssertEqual(decided?.kernel, kind, "\(message): layer \(layer) \(String(describing: decided))", file: file, line: line)
        }
        let context = ExecutionContext(engine: try Engine(file: built.file, name: message))
        let reference = try ReferenceExecutor(model: model)
        var rng = SeededGenerator(seed: seed)
        for trial in 0..<6 {
            let finite = trial % 3 == 2
            var feeds: [String: Tensor] = [:]
            for (name, shape) in inputs { feeds[name] = try special(shape, &rng, fraction: finite ? 0 : fraction) }
            let expected = try reference.run(feeds)
            let actual = try context.run(feeds)
            XCTAssertEqual(context.lastPlan?.assumesFiniteInputs, finite, "\(message) trial \(trial)", file: file, line: line)
            for (e, a) in zip(expected, actual) { assertAgree(a.value, e.value, "\(message) trial \(trial) output \(a.name)", file: file, line: line) }
        }
    }

    func unary(_ op: String, shape: [Int] = [2, 5, 6, 7], attributes: [String: Attribute] = [:], extra: [String] = [],
               initializers: [(String, Tensor)] = [], outputs: [DataType] = [.float]) -> Graph {
        let names = outputs.indices.map { "y\($0)" }
        return Graph(name: op, inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                     outputs: zip(names, outputs).map { ValueInfo(name: $0, type: TensorType($1, nil)) },
                     nodes: [Node(name: "test", opType: op, inputs: ["x"] + extra, outputs: names, attributes: attributes)],
                     initializers: initializers)
    }

    func scalar(_ v: Float) throws -> Tensor { try Tensor(floats: [v], shape: []) }

    func testActivationsKeepNaNAndTakeInfinitiesToTheirBounds() throws {
        try check(unary("Relu"), inputs: ["x": [2, 5, 6, 7]], kinds: ["test": .eltwise], "Relu")
        try check(unary("Clip", extra: ["lo", "hi"], initializers: [("lo", try scalar(0)), ("hi", try scalar(6))]), inputs: ["x": [2, 5, 6, 7]],
                  kinds: ["test": .eltwise], "Clip(0, 6)")
        try check(unary("Clip", shape: [3, 17], extra: ["lo", "hi"], initializers: [("lo", try scalar(-1)), ("hi", try scalar(2.5))]), inputs: ["x": [3, 17]],
                  kinds: ["test": .eltwise], "Clip(-1, 2.5)")
        try check(unary("Clip", shape: [3, 17], extra: ["", "hi"], initializers: [("hi", try scalar(1.5))]), inputs: ["x": [3, 17]], "Clip(max 1.5)")
        try check(unary("LeakyRelu", attributes: ["alpha": .float(0.1)]), inputs: ["x": [2, 5, 6, 7]], "LeakyRelu")
        try check(unary("HardSigmoid"), inputs: ["x": [2, 5, 6, 7]], kinds: ["test": .eltwise], "HardSigmoid")
        try check(unary("Exp"), inputs: ["x": [2, 5, 6, 7]], kinds: ["test": .eltwise], "Exp")
    }

    /// A convolution or matrix product followed by `activation`, fused by the optimizer.
    func fused(_ op: String, activation: String, extra: [String] = [], bounds: [(String, Tensor)] = [], rng: inout SeededGenerator) throws -> Graph {
        let conv = op == "Conv"
        let w = try Tensor(floats: (0..<(conv ? 8 * 5 * 9 : 12 * 9)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: conv ? [8, 5, 3, 3] : [12, 9])
        let b = try Tensor(floats: (0..<(conv ? 8 : 9)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [conv ? 8 : 9])
        let first = conv ? Node(name: "layer", opType: "Conv", inputs: ["x", "w", "b"], outputs: ["c"], attributes: ["pads": .ints([1, 1, 1, 1])])
                         : Node(name: "layer", opType: "Gemm", inputs: ["x", "w", "b"], outputs: ["c"])
        return Graph(name: op, inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: conv ? [1, 5, 9, 11] : [7, 12]))],
                     outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                     nodes: [first, Node(name: "act", opType: activation, inputs: ["c"] + extra, outputs: ["y"])],
                     initializers: [("w", w), ("b", b)] + bounds)
    }

    func testFusedActivationsKeepNaN() throws {
        var rng = SeededGenerator(seed: 7)
        let relu6 = [("lo", try scalar(0)), ("hi", try scalar(6))]
        for op in ["Conv", "Gemm"] {
            let kind: KernelKind = op == "Conv" ? .convolution : .matmul
            let shape = op == "Conv" ? [1, 5, 9, 11] : [7, 12]
            try check(try fused(op, activation: "Relu", rng: &rng), inputs: ["x": shape], kinds: ["layer": kind], "\(op) + Relu")
            try check(try fused(op, activation: "Clip", extra: ["lo", "hi"], bounds: relu6, rng: &rng), inputs: ["x": shape], kinds: ["layer": kind], "\(op) + Clip(0, 6)")
            try check(try fused(op, activation: "HardSigmoid", rng: &rng), inputs: ["x": shape], "\(op) + HardSigmoid")
        }
    }

    func testPoolingSoftmaxReductionsAndComparisons() throws {
        let x = ["x": [2, 5, 6, 7]]
        try check(unary("MaxPool", attributes: ["kernel_shape": .ints([3, 3]), "strides": .ints([2, 2]), "pads": .ints([1, 1, 1, 1])]), inputs: x,
                  kinds: ["test": .pooling], "MaxPool")
        try check(unary("GlobalMaxPool"), inputs: x, kinds: ["test": .pooling], "GlobalMaxPool")
        try check(unary("AveragePool", attributes: ["kernel_shape": .ints([2, 2])]), inputs: x, "AveragePool")
        try check(unary("Softmax", attributes: ["axis": .int(-1)]), inputs: x, kinds: ["test": .softmax], "Softmax")
        try check(unary("ReduceMax", attributes: ["keepdims": .int(0)], extra: ["axes"], initializers: [("axes", try Tensor(int64s: [3], shape: [1]))]),
                  inputs: x, "ReduceMax")
        try check(unary("ReduceMin", extra: ["axes"], initializers: [("axes", try Tensor(int64s: [1], shape: [1]))]), inputs: x, "ReduceMin")
        try check(unary("ReduceSum", extra: ["axes"], initializers: [("axes", try Tensor(int64s: [2, 3], shape: [2]))]), inputs: x, "ReduceSum")
        try check(unary("ArgMax", attributes: ["axis": .int(3)], outputs: [.int64]), inputs: x, "ArgMax")
        try check(unary("ArgMin", attributes: ["axis": .int(1), "select_last_index": .int(1)], outputs: [.int64]), inputs: x, "ArgMin")
        for largest: Int64 in [1, 0] {
            try check(unary("TopK", attributes: ["axis": .int(-1), "largest": .int(largest)], extra: ["k"],
                            initializers: [("k", try Tensor(int64s: [3], shape: [1]))], outputs: [.float, .int64]), inputs: x, "TopK largest \(largest)")
        }
        for op in ["Max", "Min", "Greater", "Less", "Equal", "Add"] {
            let g = Graph(name: op, inputs: [ValueInfo(name: "a", type: TensorType(.float, shape: [2, 5, 6, 7])),
                                             ValueInfo(name: "b", type: TensorType(.float, shape: [2, 5, 6, 7]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(op.hasSuffix("er") || op.hasSuffix("ss") || op == "Equal" ? .bool : .float, nil))],
                          nodes: [Node(name: "test", opType: op, inputs: ["a", "b"], outputs: ["y"])])
            try check(g, inputs: ["a": [2, 5, 6, 7], "b": [2, 5, 6, 7]], op)
        }
    }

    /// Scaled dot-product attention, recognized into one layer: non-finite queries or keys give
    /// rows of scores the fused kernel's softmax gets wrong, so those run on the reference.
    func testAttentionKeepsNaN() throws {
        let shape = [1, 2, 8, 16]
        let g = Graph(name: "attention", inputs: ["q", "k", "v"].map { ValueInfo(name: $0, type: TensorType(.float, shape: shape)) },
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "kt", opType: "Transpose", inputs: ["k"], outputs: ["kT"], attributes: ["perm": .ints([0, 1, 3, 2])]),
                              Node(name: "scores", opType: "MatMul", inputs: ["q", "kT"], outputs: ["s"]),
                              Node(name: "scale", opType: "Div", inputs: ["s", "four"], outputs: ["s2"]),
                              Node(name: "softmax", opType: "Softmax", inputs: ["s2"], outputs: ["p"], attributes: ["axis": .int(-1)]),
                              Node(name: "context", opType: "MatMul", inputs: ["p", "v"], outputs: ["y"])],
                      initializers: [("four", try scalar(4))])
        let built = try EngineBuilder().build(Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)]), name: "attention")
        XCTAssertTrue(built.compiled.decisions.values.contains { $0.kernel == .attention }, "\(built.compiled.decisions)")
        // Sparse enough that most rows of scores hold one special value among finite ones.
        try check(g, inputs: ["q": shape, "k": shape, "v": shape], fraction: 0.003, "attention")
    }

    /// A convolution after a Log: finite inputs of 0 make −∞ inside the graph, which the plan
    /// for finite inputs must still treat as ONNX says (the layers it reaches are exact).
    func testValuesMadeNonFiniteInsideTheGraphStayExact() throws {
        var rng = SeededGenerator(seed: 3)
        let g = try fused("Conv", activation: "Relu", rng: &rng)
        g.nodes.insert(Node(name: "log", opType: "Log", inputs: ["x0"], outputs: ["x"]), at: 0)
        g.inputs = [ValueInfo(name: "x0", type: TensorType(.float, shape: [1, 5, 9, 11]))]
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)])
        let context = ExecutionContext(engine: try Engine(file: try EngineBuilder().build(model, name: "log").file, name: "log"))
        // Zeros (log → −∞) and negatives (log → NaN) among positive values.
        let x = try Tensor(floats: (0..<(5 * 9 * 11)).map { _ in [0, -1, 0.5, 2, 3][Int.random(in: 0..<5, using: &rng)] }, shape: [1, 5, 9, 11])
        let actual = try context.run(["x0": x])
        XCTAssertEqual(context.lastPlan?.assumesFiniteInputs, true)
        assertAgree(actual[0].value, try ReferenceExecutor(model: model).run(["x0": x])[0].value, "log → conv → relu")
    }

    /// The run on caller buffers takes the plan for finite inputs; buffers holding NaN go
    /// through a plan that keeps it, and the next finite run is back on the fast plan.
    func testCallerBuffersWithNaNTakeTheExactPlan() throws {
        var rng = SeededGenerator(seed: 5)
        let model = Model(graph: try fused("Conv", activation: "Relu", rng: &rng), opsets: [OpsetImport(domain: "", version: 19)])
        let context = ExecutionContext(engine: try Engine(file: try EngineBuilder().build(model, name: "buffers").file, name: "buffers"))
        let finite = try special([1, 5, 9, 11], &rng, fraction: 0), nan = try special([1, 5, 9, 11], &rng)
        _ = try context.run(["x": finite])
        let fast = try XCTUnwrap(context.lastPlan)
        XCTAssertTrue(fast.assumesFiniteInputs)
        let expected = try ReferenceExecutor(model: model).run(["x": nan])[0].value
        var output = [Float](repeating: 0, count: expected.count)
        try nan.floats.withUnsafeBytes { input in
            try output.withUnsafeMutableBytes { out in try context.run(inputs: [input], outputs: [out]) }
        }
        assertAgree(try Tensor(floats: output, shape: expected.shape), expected, "NaN in caller buffers")
        XCTAssertTrue(context.lastPlan === fast)
    }
}
