import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilOps
import AnvilPasses
import AnvilRuntime
import XCTest

/// If branches and Loop bodies: optimized like graphs of their own, inlined when the
/// condition is a constant, planned at run time like any graph.
final class ControlFlowTests: XCTestCase {
    func random(_ shape: [Int], _ rng: inout SeededGenerator) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
    }

    /// y = If(cond) then Relu(Conv(x, w1) + b1) else Sigmoid(Conv(x, w2)); each branch's
    /// weights are the main graph's initializers, read only by that branch.
    func branchyModel(_ rng: inout SeededGenerator, cond: Tensor? = nil) throws -> Model {
        let then = Graph(name: "then", outputs: [ValueInfo(name: "t", type: TensorType(.float, nil))], nodes: [
            Node(name: "conv", opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["c"], attributes: ["pads": .ints([1, 1, 1, 1])]),
            Node(name: "relu", opType: "Relu", inputs: ["c"], outputs: ["t"]),
        ])
        // The same node and value names as the main graph's and the other branch's.
        let otherwise = Graph(name: "else", outputs: [ValueInfo(name: "e", type: TensorType(.float, nil))], nodes: [
            Node(name: "conv", opType: "Conv", inputs: ["x", "w2"], outputs: ["c"]),
            Node(name: "sigmoid", opType: "Sigmoid", inputs: ["c"], outputs: ["e"]),
        ])
        var inputs = [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 8, 6, 6]))]
        var initializers = [("w1", try random([16, 8, 3, 3], &rng)), ("b1", try random([16], &rng)), ("w2", try random([16, 8, 1, 1], &rng))]
        if let cond { initializers.append(("cond", cond)) } else { inputs.append(ValueInfo(name: "cond", type: TensorType(.bool, shape: []))) }
        let g = Graph(name: "branchy", inputs: inputs, outputs: [ValueInfo(name: "y", type: TensorType(.float, nil)), ValueInfo(name: "c", type: TensorType(.float, nil))],
                      nodes: [
                          Node(name: "if", opType: "If", inputs: ["cond"], outputs: ["y"], attributes: ["then_branch": .graph(then), "else_branch": .graph(otherwise)]),
                          Node(name: "conv", opType: "Conv", inputs: ["y", "w3"], outputs: ["c"]),
                      ],
                      initializers: initializers + [("w3", try random([4, 16, 1, 1], &rng))])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
    }

    func testBranchesAreOptimizedAndPlannedAtRunTime() throws {
        var rng = SeededGenerator(seed: 3)
        let model = try branchyModel(&rng)
        let built = try EngineBuilder().build(model, name: "branchy")
        // Each branch took its weights and fused its activation (and bias) into the convolution.
        let ifLayer = try XCTUnwrap(built.graph.layers.first { $0.opType == "If" })
        for key in ["then_branch", "else_branch"] {
            guard case .graph(let s)? = ifLayer.attributes[key], let branch = s as? EngineGraph else { return XCTFail("no \(key)") }
            XCTAssertEqual(branch.layers.map(\.opType), ["FusedConv"], key)
            XCTAssertEqual(branch.constants.count, key == "then_branch" ? 2 : 1, key)
        }
        XCTAssertEqual(Set(built.graph.constants.names), ["w3"])
        let engine = try Engine(file: built.file, name: "branchy.anvil")
        let context = ExecutionContext(engine: engine)
        for trial in 0..<6 {
            let x = try random([1, 8, 6, 6], &rng)
            let feed = ["x": x, "cond": try Tensor(bools: [trial % 2 == 0], shape: [])]
            let expected = try ReferenceExecutor(model: model).run(feed)
            let actual = try context.run(feed)
            for (e, a) in zip(expected, actual) {
                XCTAssertEqual(a.value.shape, e.value.shape, "trial \(trial) \(e.name)")
                let c = Comparison.compare(actual: a.value, expected: e.value, atol: 1e-5, rtol: 1e-4)
                XCTAssertTrue(c.passed, "trial \(trial) \(e.name): \(c)")
            }
        }
        // Both branches ran more than once with the same shapes: both are planned.
        XCTAssertEqual(context.bodies.run, 2)
        XCTAssertEqual(context.bodies.planned, 2)
        // A profile shows the branch's layers under the If, on their own kernels.
        context.profiling = true
        for taken in [true, false, true] {
            _ = try context.run(["x": try random([1, 8, 6, 6], &rng), "cond": try Tensor(bools: [taken], shape: [])])
        }
        let entries = Dictionary(context.profile.map { ($0.layer, $0) }, uniquingKeysWith: { a, _ in a })
        XCTAssertEqual(entries["if"]?.kernels, "control flow")
        XCTAssertEqual(entries["if"]?.milliseconds.count, 3)
        let inner = context.profile.filter { $0.layer.hasPrefix("if" + ExecutionContext.nestedLayerSeparator) }
        let convolutions = inner.filter { $0.layer.hasSuffix(ExecutionContext.nestedLayerSeparator + "conv") }
        XCTAssertEqual(convolutions.map(\.layer).sorted(), ["if ▸ else ▸ conv", "if ▸ then ▸ conv"])
        XCTAssertEqual(convolutions.map(\.milliseconds.count).sorted(), [1, 2])
        XCTAssertTrue(inner.allSatisfy { $0.kernels != "reference" }, "\(inner.map { ($0.layer, $0.kernels) })")
    }

    func testConstantConditionInlinesTheBranchTaken() throws {
        for taken in [true, false] {
            let load = {
                var rng = SeededGenerator(seed: 5)
                return try self.branchyModel(&rng, cond: try Tensor(bools: [taken], shape: []))
            }
            let passes: [any Pass] = [FoldConstants(), InlineConstantIf(), EliminateNoOps(), EliminateDeadCode()]
            try PassTesting.assertPreservesOutputs(load, passes)
            let model = try load()
            let (_, context) = try PassTesting.optimized(model, passes)
            XCTAssertEqual(context.statistics["inline-constant-if"]?["branches inlined"], 1)
            XCTAssertFalse(model.graph.nodes.contains { $0.opType == "If" })
            // The branch's "conv" and "c" were renamed: the main graph has its own.
            XCTAssertEqual(model.graph.nodes.filter { $0.name == "conv" }.count, 1)
            XCTAssertEqual(model.graph.nodes.filter { $0.outputs.contains("c") }.count, 1)
            XCTAssertEqual(Set(model.graph.initializers.keys), taken ? ["w1", "b1", "w3"] : ["w2", "w3"])
        }
    }

    /// y = MatMul(If(cond) then Relu(x) else Neg(x), w) on x [n, 8] with a dynamic n; the
    /// condition is n == 1 (`shapeCondition`), or a value of the data: NonZero(x > 0)'s count == 1.
    func conditionedModel(shapeCondition: Bool) throws -> Model {
        var rng = SeededGenerator(seed: 12)
        let then = Graph(name: "then", outputs: [ValueInfo(name: "t", type: TensorType(.float, nil))],
                         nodes: [Node(name: "relu", opType: "Relu", inputs: ["x"], outputs: ["t"])])
        let otherwise = Graph(name: "else", outputs: [ValueInfo(name: "e", type: TensorType(.float, nil))],
                              nodes: [Node(name: "neg", opType: "Neg", inputs: ["x"], outputs: ["e"])])
        var nodes: [Node]
        if shapeCondition {
            nodes = [Node(name: "shape", opType: "Shape", inputs: ["x"], outputs: ["s"]),
                     Node(name: "rows", opType: "Gather", inputs: ["s", "zero"], outputs: ["n"], attributes: ["axis": .int(0)])]
        } else {
            nodes = [Node(name: "positive", opType: "Greater", inputs: ["x", "zerof"], outputs: ["p"]),
                     Node(name: "nonzero", opType: "NonZero", inputs: ["p"], outputs: ["nz"]),
                     Node(name: "shape", opType: "Shape", inputs: ["nz"], outputs: ["s"]),
                     Node(name: "rows", opType: "Gather", inputs: ["s", "one"], outputs: ["n"], attributes: ["axis": .int(0)])]
        }
        nodes += [Node(name: "equal", opType: "Equal", inputs: ["n", "one"], outputs: ["cond"]),
                  Node(name: "if", opType: "If", inputs: ["cond"], outputs: ["chosen"], attributes: ["then_branch": .graph(then), "else_branch": .graph(otherwise)]),
                  Node(name: "matmul", opType: "MatMul", inputs: ["chosen", "w"], outputs: ["y"])]
        let g = Graph(name: "conditioned", inputs: [ValueInfo(name: "x", type: TensorType(.float, [.symbol("n"), .known(8)]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))], nodes: nodes,
                      initializers: [("w", try random([8, 4], &rng)), ("zero", try Tensor(int64s: [0], shape: [])), ("one", try Tensor(int64s: [1], shape: [])),
                                     ("zerof", try Tensor(floats: [0], shape: []))])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
    }

    func testIfsOnShapesAreInlinedForEachPlan() throws {
        var rng = SeededGenerator(seed: 14)
        for shapeCondition in [true, false] {
            let model = try conditionedModel(shapeCondition: shapeCondition)
            let context = ExecutionContext(engine: try Engine(file: try EngineBuilder().build(model, name: "conditioned").file, name: "conditioned.anvil"))
            for trial in 0..<8 {
                // Rows 1 and 3 (then and else by shape); by data, one positive element or several.
                let rows = trial % 2 == 0 ? 1 : 3
                var x = try random([rows, 8], &rng)
                if !shapeCondition, trial % 4 < 2 { x = try Tensor(floats: (0..<(rows * 8)).map { $0 == 5 ? 1 : -1 }, shape: [rows, 8]) }
                let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
                let actual = try context.run(["x": x])[0].value
                let c = Comparison.compare(actual: actual, expected: expected, atol: 1e-5, rtol: 1e-4)
                XCTAssertTrue(c.passed, "shape condition \(shapeCondition) trial \(trial): \(c)")
                if trial >= 2 {
                    // From the second run of a shape on: planned whole (the If inlined) only when the shapes decide it.
                    XCTAssertNotNil(context.lastPlan, "trial \(trial)")
                    XCTAssertEqual(context.interpretedLayers.isEmpty, shapeCondition, "shape condition \(shapeCondition) trial \(trial): \(context.interpretedLayers)")
                }
            }
            XCTAssertEqual(context.plannedShapeCount, 2)
            if shapeCondition {
                // Caller memory needs a plan that assumes nothing.
                XCTAssertThrowsError(try context.run(inputs: [], outputs: []))
            }
        }
    }

    /// Two Ifs on the same shape condition whose then-branches hold different constants of
    /// one name ("w", as two ONNX scopes may): the second is not inlined over the first's.
    func testInlinedBranchesKeepTheirOwnConstants() throws {
        var rng = SeededGenerator(seed: 16)
        func branch(_ scale: Float, _ output: String) throws -> (Graph, Graph) {
            (Graph(name: "then", outputs: [ValueInfo(name: output, type: TensorType(.float, nil))],
                   nodes: [Node(name: "scale", opType: "Mul", inputs: ["x", "w"], outputs: [output])],
                   initializers: [("w", try Tensor(floats: [scale, scale, scale, scale], shape: [4]))]),
             Graph(name: "else", outputs: [ValueInfo(name: output + "_e", type: TensorType(.float, nil))],
                   nodes: [Node(name: "same", opType: "Identity", inputs: ["x"], outputs: [output + "_e"])]))
        }
        let (then1, else1) = try branch(2, "t1"), (then2, else2) = try branch(3, "t2")
        let g = Graph(name: "two", inputs: [ValueInfo(name: "x", type: TensorType(.float, [.symbol("n"), .known(4)]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "shape", opType: "Shape", inputs: ["x"], outputs: ["s"]),
                              Node(name: "rows", opType: "Gather", inputs: ["s", "zero"], outputs: ["n"], attributes: ["axis": .int(0)]),
                              Node(name: "equal", opType: "Equal", inputs: ["n", "one"], outputs: ["cond"]),
                              Node(name: "if1", opType: "If", inputs: ["cond"], outputs: ["a"], attributes: ["then_branch": .graph(then1), "else_branch": .graph(else1)]),
                              Node(name: "if2", opType: "If", inputs: ["cond"], outputs: ["b"], attributes: ["then_branch": .graph(then2), "else_branch": .graph(else2)]),
                              Node(name: "sum", opType: "Add", inputs: ["a", "b"], outputs: ["y"])],
                      initializers: [("zero", try Tensor(int64s: [0], shape: [])), ("one", try Tensor(int64s: [1], shape: []))])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let context = ExecutionContext(engine: try Engine(file: try EngineBuilder().build(model, name: "two").file, name: "two.anvil"))
        for trial in 0..<4 {
            let x = try random([trial % 2 == 0 ? 1 : 2, 4], &rng)
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
            let c = Comparison.compare(actual: try context.run(["x": x])[0].value, expected: expected, atol: 1e-6, rtol: 1e-6)
            XCTAssertTrue(c.passed, "trial \(trial): \(c)")
        }
    }

    /// sum = Loop(n) { acc + x }: a body whose shapes stay the same is planned after its
    /// second iteration; grown = Loop(n) { Concat(acc, x) }: one whose shapes grow every
    /// iteration keeps running on the interpreter once its plans keep being evicted.
    func loopModel(growing: Bool) -> Model {
        let body = Graph(name: "body",
                         inputs: [ValueInfo(name: "i", type: TensorType(.int64, shape: [])), ValueInfo(name: "keep", type: TensorType(.bool, shape: [])),
                                  // Declared with the first iteration's shape, as exporters write it (the growing loop outgrows it).
                                  ValueInfo(name: "acc", type: TensorType(.float, shape: [2, 3]))],
                         outputs: [ValueInfo(name: "keep_out", type: TensorType(.bool, shape: [])), ValueInfo(name: "acc_out", type: TensorType(.float, nil))],
                         nodes: [
                            Node(name: "keep", opType: "Identity", inputs: ["keep"], outputs: ["keep_out"]),
                            growing ? Node(name: "grow", opType: "Concat", inputs: ["acc", "x"], outputs: ["acc_out"], attributes: ["axis": .int(0)])
                                    : Node(name: "add", opType: "Add", inputs: ["acc", "x"], outputs: ["acc_out"]),
                         ])
        let g = Graph(name: "looped", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [2, 3])), ValueInfo(name: "n", type: TensorType(.int64, shape: []))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "loop", opType: "Loop", inputs: ["n", "", "x"], outputs: ["y"], attributes: ["body": .graph(body)])])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
    }

    func testLoopBodiesArePlannedUnlessTheirShapesKeepChanging() throws {
        var rng = SeededGenerator(seed: 9)
        for growing in [false, true] {
            let model = loopModel(growing: growing)
            let engine = try Engine(file: try EngineBuilder().build(model, name: "loop").file, name: "loop.anvil")
            let context = ExecutionContext(engine: engine)
            for trial in 0..<4 {
                let feed = ["x": try random([2, 3], &rng), "n": Tensor.scalar(Int64(20 + trial))]
                let expected = try ReferenceExecutor(model: model).run(feed)
                let actual = try context.run(feed)
                XCTAssertEqual(actual[0].value.shape, expected[0].value.shape, "growing \(growing) trial \(trial)")
                XCTAssertTrue(Comparison.compare(actual: actual[0].value, expected: expected[0].value, atol: 1e-5, rtol: 1e-5).passed, "growing \(growing) trial \(trial)")
            }
            XCTAssertEqual(context.bodies.run, 1)
            XCTAssertEqual(context.bodies.planned, growing ? 0 : 1, "growing \(growing)")
        }
    }
}
