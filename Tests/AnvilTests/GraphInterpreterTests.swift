import AnvilBuilder
import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps
import AnvilRuntime
import XCTest

/// The one graph interpreter, over IR graphs (the reference executor) and engine
/// graphs (the engine's interpreter): scopes, freeing, hooks and errors.
final class GraphInterpreterTests: XCTestCase {
    static let k: [Float] = [1, 2, 3], k2: [Float] = [-1, 0.5, 4]

    /// a = Relu(x), b = Neg(a), y = If(c) { a + k } else { b · k2 }: the then branch
    /// reads `a` after its last direct use (Neg) and the main graph's constant k; the
    /// else branch has its own constant k2.
    static func model() throws -> Model {
        let row = TensorType(.float, shape: [2, 3])
        let thenBranch = Graph(name: "then", outputs: [ValueInfo(name: "t", type: row)],
                               nodes: [Node(name: "add", opType: "Add", inputs: ["a", "k"], outputs: ["t"])])
        let elseBranch = Graph(name: "else", outputs: [ValueInfo(name: "e", type: row)],
                               nodes: [Node(name: "mul", opType: "Mul", inputs: ["b", "k2"], outputs: ["e"])],
                               initializers: [("k2", try Tensor(floats: k2, shape: [3]))])
        let graph = Graph(name: "main", inputs: [ValueInfo(name: "x", type: row), ValueInfo(name: "c", type: TensorType(.bool, shape: []))],
                          outputs: [ValueInfo(name: "y", type: row)],
                          nodes: [Node(name: "relu", opType: "Relu", inputs: ["x"], outputs: ["a"]),
                                  Node(name: "neg", opType: "Neg", inputs: ["a"], outputs: ["b"]),
                                  Node(name: "if", opType: "If", inputs: ["c"], outputs: ["y"],
                                       attributes: ["then_branch": .graph(thenBranch), "else_branch": .graph(elseBranch)])],
                          initializers: [("k", try Tensor(floats: k, shape: [3]))])
        return Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
    }

    static let x: [Float] = [-1, 2, -3, 4, -5, 6]

    static func inputs(_ condition: Bool) throws -> [String: Tensor] {
        ["x": try Tensor(floats: x, shape: [2, 3]), "c": try Tensor(bools: [condition], shape: [])]
    }

    /// What the model computes, written out.
    static func expected(_ condition: Bool) -> [Float] {
        x.enumerated().map { i, v in condition ? max(v, 0) + k[i % 3] : -max(v, 0) * k2[i % 3] }
    }

    func testReferenceExecutorKeepsValuesSubgraphsReadAndSeesOuterConstants() throws {
        var executor = ReferenceExecutor(model: try Self.model())
        var seen: [String] = []
        executor.observe = { name, _ in seen.append(name) }
        for condition in [true, false] {
            XCTAssertEqual(try executor.run(Self.inputs(condition))[0].value.floats, Self.expected(condition))
        }
        XCTAssertEqual(seen, ["a", "b", "t", "y", "a", "b", "e", "y"], "values of subgraphs are observed too")
    }

    func testEngineInterpreterMatchesAndProfilesLayersAndTheirBodies() throws {
        let model = try Self.model()
        let engine = try Engine(file: try EngineBuilder().build(model, name: "if").file, name: "if.anvil")
        // All on the interpreter; then (the default) Relu and Neg on a partial plan, the If on the interpreter.
        for usePlan in [false, true] {
            let context = ExecutionContext(engine: engine)
            context.usePlan = usePlan
            context.profiling = true
            for condition in [true, false, true] {
                XCTAssertEqual(try context.run(Self.inputs(condition))[0].value.floats, Self.expected(condition))
                if !usePlan {
                    XCTAssertNil(context.lastPlan, "the interpreter runs everything")
                } else {
                    XCTAssertEqual(Set(try XCTUnwrap(context.lastPlan).stepSummary.map(\.layer)), ["relu", "neg"])
                    XCTAssertEqual(context.interpretedLayers, ["if": "layer has subgraphs"])
                }
            }
            // Top-level layers once per run; with plans, the If's branches' layers under it, per run of theirs.
            let separator = ExecutionContext.nestedLayerSeparator
            let outer = context.profile.filter { !$0.layer.contains(separator) }, nested = context.profile.filter { $0.layer.contains(separator) }
            XCTAssertEqual(Set(outer.map(\.layer)), Set(engine.graph.layers.map(\.name)))
            XCTAssertTrue(outer.allSatisfy { $0.milliseconds.count == 3 }, "\(context.profile)")
            XCTAssertEqual(nested.map(\.milliseconds.count).reduce(0, +), usePlan ? 3 : 0, "\(nested)")
            XCTAssertTrue(nested.allSatisfy { $0.layer.hasPrefix("if" + separator) }, "\(nested)")
        }
    }

    /// The interpreter's oneDNN path never takes oneDNN's reference implementation: Silero
    /// VAD's decoder convolution (128 channels to 1, length 1, inside an If's graph) gets
    /// the Swift reference kernel instead of "ref:any".
    func testInterpreterLayersNeverRunOnOneDNNReferenceImplementations() throws {
        var rng = SeededGenerator(seed: 3)
        let weights = try Tensor(floats: (0..<128).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [1, 128, 1])
        let row = TensorType(.float, shape: [1, 1, 1])
        let branch = Graph(name: "same", outputs: [ValueInfo(name: "t", type: row)], nodes: [Node(name: "id", opType: "Identity", inputs: ["y0"], outputs: ["t"])])
        let graph = Graph(name: "decoder", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 128, 1])), ValueInfo(name: "c", type: TensorType(.bool, shape: []))],
                          outputs: [ValueInfo(name: "y", type: row)],
                          nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w", "b"], outputs: ["y0"], attributes: ["kernel_shape": .ints([1])]),
                                  Node(name: "if", opType: "If", inputs: ["c"], outputs: ["y"], attributes: ["then_branch": .graph(branch), "else_branch": .graph(branch)])],
                          initializers: [("w", weights), ("b", try Tensor(floats: [0.5], shape: [1]))])
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: 17)])
        let context = ExecutionContext(engine: try EngineBuilder().build(model, name: "decoder").engine)
        context.usePlan = false
        context.profiling = true
        let feeds = ["x": try Tensor(floats: (0..<128).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [1, 128, 1]), "c": try Tensor(bools: [true], shape: [])]
        XCTAssertEqual(try context.run(feeds)[0].value.floats, try ReferenceExecutor(model: model).run(feeds)[0].value.floats)
        let kernels = try XCTUnwrap(context.profile.first { $0.layer == "conv" }?.kernels)
        XCTAssertFalse(kernels.contains("ref:") || kernels.contains("_ref"), kernels)
    }

    func testHooksSeeDepthsAndMayReplaceKernels() throws {
        let graph = try Self.model().graph
        var interpreter = GraphInterpreter<Graph> { _ in 17 }
        var observed: [String] = [], timed: [String] = []
        interpreter.observe = { name, _, depth in observed.append("\(name)@\(depth)") }
        interpreter.time = { node, depth, ms in
            XCTAssertGreaterThanOrEqual(ms, 0)
            timed.append("\(node.name)@\(depth)")
        }
        interpreter.evaluateFast = { node, _, context in
            node.opType == "Neg" ? [try Tensor.zeros(.float, shape: context.input(0).shape)] : nil
        }
        XCTAssertEqual(try interpreter.run(graph, inputs: Self.inputs(false))[0].floats, [Float](repeating: 0, count: 6))
        XCTAssertEqual(observed, ["a@0", "b@0", "e@1", "y@0"])
        XCTAssertEqual(timed, ["relu@0", "neg@0", "mul@1", "if@0"])
    }

    func testErrorsNameTheNode() throws {
        let graph = try Self.model().graph
        func message(_ hook: ((Node, Int, EvalContext) throws -> [Tensor]?)? = nil, inputs: [String: Tensor]) -> String {
            var interpreter = GraphInterpreter<Graph> { _ in 17 }
            interpreter.evaluateFast = hook
            do {
                _ = try interpreter.run(graph, inputs: inputs)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        let good = try Self.inputs(true)
        XCTAssertEqual(message(inputs: ["c": good["c"]!]), "node 'relu' (Relu): input 'x' has no value (missing graph input or initializer?)")
        XCTAssertEqual(message({ node, _, _ in node.name == "neg" ? [] : nil }, inputs: good), "node 'neg' (Neg): produced 0 outputs, the node names 1")
        XCTAssertEqual(message({ node, _, _ in
            if node.name == "add" { throw AnvilError.invalidTensor(name: "", reason: "values out of range") }
            return nil
        }, inputs: good), "node 'add' (Add): values out of range")
    }
}

/// The memory policy counts what the interpreter holds: the values still alive when a node
/// runs, and every buffer a kernel holds at once (a 1000 × 512 MiniLM under `ulimit -v`
/// aborted in Where's index arrays, each under the limit, together above it).
final class InterpreterMemoryTests: XCTestCase {
    func withLimit(_ bytes: Int, _ body: () throws -> Void) rethrows {
        let previous = MemoryPolicy.limit
        MemoryPolicy.limit = bytes
        defer { MemoryPolicy.limit = previous }
        try body()
    }

    func testAKernelsBuffersTogetherMustFit() throws {
        let g = Graph(name: "where", inputs: [ValueInfo(name: "c", type: TensorType(.bool, shape: [4096, 1])),
                                              ValueInfo(name: "x", type: TensorType(.float, shape: [1, 4096]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "select", opType: "Where", inputs: ["c", "x", "zero"], outputs: ["y"])],
                      initializers: [("zero", try Tensor(floats: [0], shape: [1]))])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let feeds = ["c": try Tensor(bools: (0..<4096).map { $0 % 2 == 0 }, shape: [4096, 1]), "x": try Tensor(floats: [Float](repeating: 1, count: 4096), shape: [1, 4096])]
        // Each index array (128 MiB) fits under 400 MiB; all of Where's buffers (about 470 MiB) do not.
        try withLimit(400 << 20) {
            XCTAssertThrowsError(try ReferenceExecutor(model: model).run(feeds)) { error in
                XCTAssertTrue("\(error)".contains("node 'select'") && "\(error)".contains("Where over [4096, 4096]"), "\(error)")
            }
        }
    }

    func testConvolutionAndPoolingBuffersTogetherMustFit() throws {
        // A 5×5 convolution of 16 channels over 256×256 with 64 outputs: its output (16 MiB), im2col
        // columns (100 MiB) and table (13 MiB) each fit under 120 MiB; together they do not.
        let x = try Tensor(floats: [Float](repeating: 1, count: 16 * 256 * 256), shape: [1, 16, 256, 256])
        let w = try Tensor(floats: [Float](repeating: 0.5, count: 64 * 16 * 25), shape: [64, 16, 5, 5])
        let g = try WindowGeometry(input: [256, 256], kernel: [5, 5], strides: nil, dilations: nil, pads: [2, 2, 2, 2], autoPad: .notSet)
        try withLimit(120 << 20) {
            XCTAssertThrowsError(try Linear.conv(x, w, nil, geometry: g, group: 1)) { error in
                XCTAssertTrue("\(error)".contains("Conv's output, im2col columns and table together"), "\(error)")
            }
        }
        // Max pooling with a 9×9 window: its table (42 MiB) fits under 60 MiB; with the input widened
        // to Double (8 MiB), the results and indices (16 MiB) and the output (4 MiB) it does not.
        let pool = try WindowGeometry(input: [256, 256], kernel: [9, 9], strides: nil, dilations: nil, pads: [4, 4, 4, 4], autoPad: .notSet)
        try withLimit(60 << 20) {
            XCTAssertThrowsError(try Pooling.maxPool(x, geometry: pool)) { error in
                XCTAssertTrue("\(error)".contains("the pooling's buffers together"), "\(error)")
            }
        }
        try withLimit(1 << 30) { XCTAssertNoThrow(try Linear.conv(x, w, nil, geometry: g, group: 1)) }
    }

    func testValuesAliveCountAgainstEachAllocation() throws {
        // Three 16 MiB values alive at once under a 40 MiB limit: the third is refused, naming what is held.
        let g = Graph(name: "chain", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 2048]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "expand", opType: "Expand", inputs: ["x", "shape"], outputs: ["a"]),
                              Node(name: "neg1", opType: "Neg", inputs: ["a"], outputs: ["b"]),
                              Node(name: "neg2", opType: "Neg", inputs: ["b"], outputs: ["c"]),
                              Node(name: "sum", opType: "Sum", inputs: ["a", "b", "c"], outputs: ["y"])],
                      initializers: [("shape", try Tensor(int64s: [2048, 2048], shape: [2]))])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let feeds = ["x": try Tensor(floats: [Float](repeating: 1, count: 2048), shape: [1, 2048])]
        try withLimit(40 << 20) {
            XCTAssertThrowsError(try ReferenceExecutor(model: model).run(feeds)) { error in
                XCTAssertTrue("\(error)".contains("live values") || "\(error)".contains("values alive"), "\(error)")
            }
        }
        XCTAssertEqual(try ReferenceExecutor(model: model).run(feeds)[0].value.shape, [2048, 2048])
    }
}
