import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilOps
import AnvilRuntime
import XCTest

/// Graphs the planner cannot take whole (an If, shapes the data decides) keep their
/// backbone on the plan; the layer interpreter runs only the rest.
final class PartialPlanTests: XCTestCase {
    func f(_ dims: [Int]) -> TensorType { TensorType(.float, shape: dims) }

    func random(_ shape: [Int], _ rng: inout SeededGenerator) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
    }

    /// x → conv → relu → a (an output); a → conv2 → b; NonZero(b > 0.5) → indices
    /// (shape decided by the data) → Gather from the flattened b → picked; and an If on
    /// mean(a) > 0 choosing 2·b or b (subgraphs read b from the enclosing graph).
    func detectorLike(_ rng: inout SeededGenerator) throws -> Model {
        let thenBranch = Graph(name: "then", inputs: [], outputs: [ValueInfo(name: "t", type: TensorType(.float, nil))],
                               nodes: [Node(name: "double", opType: "Add", inputs: ["b", "b"], outputs: ["t"])])
        let elseBranch = Graph(name: "else", inputs: [], outputs: [ValueInfo(name: "e", type: TensorType(.float, nil))],
                               nodes: [Node(name: "same", opType: "Identity", inputs: ["b"], outputs: ["e"])])
        let nodes = [
            Node(name: "conv", opType: "Conv", inputs: ["x", "w1", "b1"], outputs: ["c"], attributes: ["pads": .ints([1, 1, 1, 1])]),
            Node(name: "relu", opType: "Relu", inputs: ["c"], outputs: ["a"]),
            Node(name: "conv2", opType: "Conv", inputs: ["a", "w2"], outputs: ["b"]),
            Node(name: "flat", opType: "Reshape", inputs: ["b", "minus1"], outputs: ["flatb"]),
            Node(name: "greater", opType: "Greater", inputs: ["flatb", "half"], outputs: ["mask"]),
            Node(name: "nonzero", opType: "NonZero", inputs: ["mask"], outputs: ["nz"]),
            Node(name: "squeeze", opType: "Squeeze", inputs: ["nz", "zero"], outputs: ["indices"]),
            Node(name: "gather", opType: "Gather", inputs: ["flatb", "indices"], outputs: ["picked"]),
            Node(name: "mean", opType: "ReduceMean", inputs: ["a"], outputs: ["m"], attributes: ["keepdims": .int(0)]),
            Node(name: "positive", opType: "Greater", inputs: ["m", "zerof"], outputs: ["cond"]),
            Node(name: "if", opType: "If", inputs: ["cond"], outputs: ["chosen"], attributes: ["then_branch": .graph(thenBranch), "else_branch": .graph(elseBranch)]),
        ]
        let g = Graph(name: "detector", inputs: [ValueInfo(name: "x", type: f([1, 16, 6, 5]))],
                      outputs: ["a", "picked", "chosen"].map { ValueInfo(name: $0, type: TensorType(.float, nil)) }, nodes: nodes,
                      initializers: [("w1", try random([16, 16, 3, 3], &rng)), ("b1", try random([16], &rng)), ("w2", try random([8, 16, 1, 1], &rng)),
                                     ("minus1", try Tensor(int64s: [-1], shape: [1])), ("half", try Tensor(floats: [0.5], shape: [])),
                                     ("zero", try Tensor(int64s: [0], shape: [1])), ("zerof", try Tensor(floats: [0], shape: []))])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
    }

    func testBackbonePlannedAroundDataDependentShapesAndControlFlow() throws {
        var rng = SeededGenerator(seed: 8)
        let model = try detectorLike(&rng)
        let built = try EngineBuilder().build(model, name: "detector")
        let engine = try Engine(file: built.file, name: "detector.anvil")
        let context = ExecutionContext(engine: engine)
        for trial in 0..<4 {
            // Inputs of one shape whose data picks different numbers of elements and both branches.
            var x = try random([1, 16, 6, 5], &rng)
            if trial % 2 == 1 { x = try Tensor(floats: x.floats.map { -$0 }, shape: x.shape) }
            let expected = try ReferenceExecutor(model: model).run(["x": x])
            // The first run with new shapes observes them on the interpreter; the second runs on the plan.
            for run in 0..<2 {
                let actual = try context.run(["x": x])
                for (e, a) in zip(expected, actual) {
                    XCTAssertEqual(a.value.shape, e.value.shape, "trial \(trial) run \(run) \(e.name)")
                    XCTAssertTrue(Comparison.compare(actual: a.value, expected: e.value, atol: 1e-4, rtol: 1e-3).passed, "trial \(trial) run \(run) \(e.name)")
                }
            }
            let plan = try XCTUnwrap(context.lastPlan, "trial \(trial): the backbone runs on a plan (\(context.planFailure ?? ""))")
            let planned = Set(plan.stepSummary.map(\.layer))
            XCTAssertTrue(planned.isSuperset(of: ["conv", "conv2"]), "trial \(trial): \(plan.stepSummary)")
            XCTAssertFalse(plan.stepSummary.contains { $0.implementation == "reference" })
            XCTAssertEqual(Set(context.interpretedLayers.keys), ["nonzero", "squeeze", "gather", "if"], "trial \(trial)")
            XCTAssertEqual(context.interpretedLayers["if"], "layer has subgraphs")
            XCTAssertTrue(context.interpretedLayers["nonzero"]?.contains("depends on the data") ?? false)
        }
        XCTAssertEqual(context.plannedShapeCount, 1)
        // The build decided the backbone's kernels and says why the rest is interpreted.
        let decisions = Dictionary(uniqueKeysWithValues: built.graph.layers.map { ($0.name, $0.decision) })
        XCTAssertEqual(decisions["conv"]??.kernel, .convolution)
        XCTAssertEqual(decisions["if"]??.kernel, .reference)
        // Running on caller memory needs the whole graph planned.
        XCTAssertThrowsError(try context.run(inputs: [], outputs: []))
    }
}

extension PartialPlanTests {
    /// A dynamic model whose types cannot be inferred is run once on zeros at build time;
    /// when the default sample (64) is too short for it (here a window of 64 from offset 100
    /// is empty), larger samples are tried so its layers still get fast kernels.
    func testTooShortSamplesAreRetriedLarger() throws {
        var rng = SeededGenerator(seed: 12)
        let g = Graph(name: "window", inputs: [ValueInfo(name: "x", type: TensorType(.float, [.known(1), .symbol("L")]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil)), ValueInfo(name: "nz", type: TensorType(.int64, nil))],
                      nodes: [Node(name: "window", opType: "Slice", inputs: ["x", "starts", "ends", "axes"], outputs: ["s"]),
                              Node(name: "frame", opType: "Reshape", inputs: ["s", "shape"], outputs: ["f"]),
                              Node(name: "conv", opType: "Conv", inputs: ["f", "w"], outputs: ["y"]),
                              Node(name: "nonzero", opType: "NonZero", inputs: ["x"], outputs: ["nz"])],
                      initializers: [("starts", try Tensor(int64s: [100], shape: [1])), ("ends", try Tensor(int64s: [164], shape: [1])),
                                     ("axes", try Tensor(int64s: [1], shape: [1])), ("shape", try Tensor(int64s: [1, 1, 64], shape: [3])),
                                     ("w", try random([4, 1, 3], &rng))])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let built = try EngineBuilder().build(model, name: "window")
        XCTAssertEqual(built.graph.layers.first { $0.name == "conv" }?.decision?.kernel, .convolution, "\(built.compiled.planFailure ?? "")")
        XCTAssertTrue(built.warnings.contains { $0.contains("1x256") }, "\(built.warnings)")
        let x = try random([1, 300], &rng)
        let context = ExecutionContext(engine: try Engine(file: built.file, name: "window.anvil"))
        let expected = try ReferenceExecutor(model: model).run(["x": x])
        for _ in 0..<2 {
            for (e, a) in zip(expected, try context.run(["x": x])) { XCTAssertTrue(Comparison.compare(actual: a.value, expected: e.value, atol: 1e-5, rtol: 1e-4).passed) }
        }
    }
}
