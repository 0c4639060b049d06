import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilOps
import AnvilRuntime
import XCTest

/// The planned LSTM (`SwiftLSTM`) against the reference kernel, over the attributes and
/// optional inputs ONNX allows.
final class RecurrentKernelTests: XCTestCase {
    struct Case {
        var direction = "forward", layout = 0, seq = 5, batch = 3, input = 6, hidden = 4
        var bias = true, peepholes = false, states = false, lengths = false, clip: Float? = nil, inputForget = false
        var outputs = ["y", "yh", "yc"]
    }

    func random(_ shape: [Int], _ rng: inout SeededGenerator, scale: Float = 1) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -scale...scale, using: &rng) }, shape: shape)
    }

    func model(_ c: Case, _ rng: inout SeededGenerator) throws -> (Model, [String: Tensor]) {
        let dirs = c.direction == "bidirectional" ? 2 : 1, g = 4 * c.hidden
        let xShape = c.layout == 1 ? [c.batch, c.seq, c.input] : [c.seq, c.batch, c.input]
        let stateShape = c.layout == 1 ? [c.batch, dirs, c.hidden] : [dirs, c.batch, c.hidden]
        var inputs = [ValueInfo(name: "x", type: TensorType(.float, shape: xShape))]
        var feed = ["x": try random(xShape, &rng, scale: 2)]
        var initializers = [("w", try random([dirs, g, c.input], &rng)), ("r", try random([dirs, g, c.hidden], &rng))]
        var names = ["x", "w", "r", "", "", "", "", ""]
        if c.bias { initializers.append(("b", try random([dirs, 2 * g], &rng))); names[3] = "b" }
        if c.lengths {
            inputs.append(ValueInfo(name: "lens", type: TensorType(.int32, shape: [c.batch])))
            feed["lens"] = try Tensor(.int32, shape: [c.batch], int64s: (0..<c.batch).map { Int64([c.seq, 0, 2, 1][$0 % 4]) })
            names[4] = "lens"
        }
        if c.states {
            for (i, name) in [(5, "h0"), (6, "c0")] {
                inputs.append(ValueInfo(name: name, type: TensorType(.float, shape: stateShape)))
                feed[name] = try random(stateShape, &rng)
                names[i] = name
            }
        }
        if c.peepholes { initializers.append(("p", try random([dirs, 3 * c.hidden], &rng))); names[7] = "p" }
        while names.last == "" { names.removeLast() }
        var attributes: [String: Attribute] = ["hidden_size": .int(Int64(c.hidden)), "direction": .string(c.direction), "layout": .int(Int64(c.layout))]
        if let clip = c.clip { attributes["clip"] = .float(clip) }
        if c.inputForget { attributes["input_forget"] = .int(1) }
        let node = Node(name: "lstm", opType: "LSTM", inputs: names, outputs: c.outputs, attributes: attributes)
        let g2 = Graph(name: "lstm", inputs: inputs, outputs: c.outputs.filter { !$0.isEmpty }.map { ValueInfo(name: $0, type: TensorType(.float, nil)) },
                       nodes: [node], initializers: initializers)
        return (Model(graph: g2, opsets: [OpsetImport(domain: "", version: 14)]), feed)
    }

    func testPlannedLSTMMatchesTheReference() throws {
        var cases: [Case] = []
        for direction in ["forward", "reverse", "bidirectional"] {
            for layout in [0, 1] {
                cases.append(Case(direction: direction, layout: layout))
                cases.append(Case(direction: direction, layout: layout, bias: false, peepholes: true, states: true, lengths: true))
            }
        }
        cases.append(Case(clip: 0.5, inputForget: true))
        cases.append(Case(direction: "bidirectional", lengths: true, outputs: ["", "yh"]))
        cases.append(Case(states: true, outputs: ["y", "", "yc"]))
        // An empty sequence: Y empty, the final states the initial ones.
        cases.append(Case(direction: "bidirectional", seq: 0, states: true))
        // Large enough that one direction splits its hidden units between threads.
        cases.append(Case(seq: 3, batch: 8, input: 16, hidden: 128, states: true, lengths: true))
        var rng = SeededGenerator(seed: 21)
        for (n, c) in cases.enumerated() {
            let (model, feed) = try model(c, &rng)
            let expected = try ReferenceExecutor(model: model).run(feed)
            let context = try TestSupport.unoptimizedContext(model)
            for run in 0..<2 {
                let actual = try context.run(feed)
                for (e, a) in zip(expected, actual) {
                    XCTAssertEqual(a.value.shape, e.value.shape, "case \(n) \(c) run \(run) \(e.name)")
                    let comparison = Comparison.compare(actual: a.value, expected: e.value, atol: 1e-5, rtol: 1e-4)
                    XCTAssertTrue(comparison.passed, "case \(n) \(c) run \(run) \(e.name): \(comparison)")
                }
            }
            let plan = try XCTUnwrap(context.lastPlan, "case \(n): \(context.planFailure ?? "")")
            XCTAssertEqual(plan.stepSummary.first { $0.layer == "lstm" }?.implementation, "swift", "case \(n)")
        }
    }

    func testSequenceLengthsOutsideTheSequenceAreRefused() throws {
        var rng = SeededGenerator(seed: 4)
        var (model, feed) = try model(Case(lengths: true), &rng)
        let context = try TestSupport.unoptimizedContext(model)
        _ = try context.run(feed)
        feed["lens"] = try Tensor(.int32, shape: [3], int64s: [5, 6, 1])
        XCTAssertThrowsError(try context.run(feed)) { error in
            XCTAssertTrue("\(error)".contains("sequence_lens[1] is 6, outside [0, 5]"), "\(error)")
        }
        _ = model
    }
}
