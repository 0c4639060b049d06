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

/// Kernels of the lowering table against the reference executor on random shapes and
/// values, each asserting that the builder decided the kernel under test: slices,
/// casts, logical ops, Where, constant-first subtraction, and the per-channel Swift
/// kernel in every channel layout.
final class LoweringTests: XCTestCase {
    func random(_ shape: [Int], _ rng: inout SeededGenerator) throws -> Tensor {
        try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -3...3, using: &rng) }, shape: shape)
    }

    /// Builds `graph` (unoptimized, so the layer under test stays), checks that layer
    /// `test` got `kind`, runs the engine read back from its file and compares with the reference.
    func check(_ graph: Graph, _ feeds: [String: Tensor], kind: KernelKind, exact: Bool = true, opset: Int = 19,
               _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let model = Model(graph: graph, opsets: [OpsetImport(domain: "", version: opset)])
        let expected = try ReferenceExecutor(model: model).run(feeds)
        let built = try TestSupport.unoptimized(model, name: message)
        XCTAssertEqual(built.compiled.decisions["test"]?.kernel, kind, "\(message): \(String(describing: built.compiled.decisions["test"]))", file: file, line: line)
        let context = ExecutionContext(engine: try Engine(file: built.file, name: message))
        for run in 0..<2 {
            let actual = try context.run(feeds)
            if run == 1 { XCTAssertNotNil(context.lastPlan, message, file: file, line: line) }
            for (e, a) in zip(expected, actual) {
                if exact {
                    XCTAssertEqual(a.value, e.value, "\(message) run \(run)", file: file, line: line)
                } else {
                    let c = Comparison.compare(actual: a.value, expected: e.value, atol: 1e-4, rtol: 1e-3)
                    XCTAssertTrue(c.passed, "\(message) run \(run): \(c)", file: file, line: line)
                }
            }
        }
    }

    /// `model` built unoptimized with its layer "conv" decided for `layout` and its layer
    /// "test" for `test` (nil: undecided, the planner's choice), compiled again.
    func engine(_ model: Model, convLayout layout: Layout, test: LayerDecision?, _ name: String) throws -> (Engine, CompiledEngine) {
        var builder = EngineBuilder()
        builder.optimize = false
        builder.timeTactics = false
        let built = try builder.build(model, name: name)
        for i in built.graph.layers.indices {
            if built.graph.layers[i].name == "conv" { built.graph.layers[i].decision?.layout = layout }
            if built.graph.layers[i].name == "test" { built.graph.layers[i].decision = test }
        }
        let engine = try Engine(graph: built.graph, producer: "test", requiredFeatures: [], profile: ShapeProfile(), name: name)
        return (engine, try engine.compile())
    }

    func testSlicesAreStridedReorders() throws {
        var rng = SeededGenerator(seed: 11)
        for trial in 0..<24 {
            let shape = (0..<Int.random(in: 1...4, using: &rng)).map { _ in Int.random(in: 1...9, using: &rng) }
            var starts: [Int64] = [], ends: [Int64] = [], axes: [Int64] = [], steps: [Int64] = []
            for axis in shape.indices.shuffled(using: &rng).prefix(Int.random(in: 1...shape.count, using: &rng)) {
                let size = Int64(shape[axis])
                // Negative and out-of-range bounds are clamped as ONNX says; every slice keeps an element.
                let start = Int64.random(in: 0..<size, using: &rng)
                starts.append(Bool.random(using: &rng) ? start : start - size)
                ends.append(trial % 3 == 0 ? Int64.max : Int64.random(in: (start + 1)...(size + 2), using: &rng))
                axes.append(Bool.random(using: &rng) ? Int64(axis) : Int64(axis - shape.count))
                steps.append(Int64.random(in: 1...3, using: &rng))
            }
            let g = Graph(name: "slice", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "relu", opType: "Relu", inputs: ["x"], outputs: ["r"]),
                                  Node(name: "test", opType: "Slice", inputs: ["r", "s", "e", "a", "t"], outputs: ["y"])],
                          initializers: [("s", try Tensor(int64s: starts, shape: [starts.count])), ("e", try Tensor(int64s: ends, shape: [ends.count])),
                                         ("a", try Tensor(int64s: axes, shape: [axes.count])), ("t", try Tensor(int64s: steps, shape: [steps.count]))])
            try check(g, ["x": try random(shape, &rng)], kind: .slice, "trial \(trial): \(shape) starts \(starts) ends \(ends) axes \(axes) steps \(steps)")
        }
    }

    func testCastsBetweenBooleansIntegersAndFloats() throws {
        var rng = SeededGenerator(seed: 12)
        let types: [DataType] = [.bool, .uint8, .int8, .int32, .int64, .float]
        for from in types {
            for to in types where to != from {
                let shape = [Int.random(in: 1...4, using: &rng), Int.random(in: 1...40, using: &rng)]
                let n = shape.reduce(1, *)
                let x: Tensor
                switch from {
                case .float:
                    // Fractions, large values, infinities and NaN: truncation and saturation as the reference does.
                    let special: [Float] = [.nan, .infinity, -.infinity, 3e9, -3e9, 0.5, -0.5, 0, 255.7, -128.9]
                    x = try Tensor(floats: (0..<n).map { _ in Bool.random(using: &rng) ? special.randomElement(using: &rng)! : Float.random(in: -300...300, using: &rng) }, shape: shape)
                case .bool: x = try Tensor(bools: (0..<n).map { _ in Bool.random(using: &rng) }, shape: shape)
                default: x = try Tensor(from, shape: shape, int64s: (0..<n).map { _ in Int64.random(in: -300...300, using: &rng) })
                }
                let g = Graph(name: "cast", inputs: [ValueInfo(name: "x", type: TensorType(from, shape: shape))],
                              outputs: [ValueInfo(name: "y", type: TensorType(to, nil))],
                              nodes: [Node(name: "test", opType: "Cast", inputs: ["x"], outputs: ["y"], attributes: ["to": .int(Int64(to.rawValue))])])
                try check(g, ["x": x], kind: .cast, "\(from) → \(to)")
            }
        }
    }

    func testLogicalOpsAndWhereBroadcast() throws {
        var rng = SeededGenerator(seed: 13)
        for trial in 0..<12 {
            let out = [Int.random(in: 1...3, using: &rng), Int.random(in: 1...5, using: &rng), Int.random(in: 1...17, using: &rng)]
            // Each operand drops leading dimensions or has size 1 in some.
            func operand() -> [Int] {
                let kept = Array(out.suffix(Int.random(in: 0...3, using: &rng)))
                return kept.map { Bool.random(using: &rng) ? $0 : 1 }
            }
            func bools(_ shape: [Int]) throws -> Tensor { try Tensor(bools: (0..<shape.reduce(1, *)).map { _ in Bool.random(using: &rng) }, shape: shape) }
            var a = operand(), b = operand()
            if trial % 2 == 0 { a = out }
            let op = ["And", "Or", "Xor"][trial % 3]
            let logical = Graph(name: "logical", inputs: [ValueInfo(name: "a", type: TensorType(.bool, shape: a)), ValueInfo(name: "b", type: TensorType(.bool, shape: b))],
                                outputs: [ValueInfo(name: "y", type: TensorType(.bool, nil))],
                                nodes: [Node(name: "test", opType: op, inputs: ["a", "b"], outputs: ["y"])])
            try check(logical, ["a": try bools(a), "b": try bools(b)], kind: .logical, "\(op) \(a) \(b)")
            let c = operand(), x = trial % 4 == 1 ? out : operand()
            let whereGraph = Graph(name: "where", inputs: [ValueInfo(name: "c", type: TensorType(.bool, shape: c)), ValueInfo(name: "x", type: TensorType(.float, shape: x))],
                                   outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                                   nodes: [Node(name: "test", opType: "Where", inputs: ["c", "x", "k"], outputs: ["y"])],
                                   initializers: [("k", try random(out, &rng))])
            try check(whereGraph, ["c": try bools(c), "x": try random(x, &rng)], kind: .select, "Where \(c) \(x) \(out)")
        }
    }

    func testSubtractionsWithAConstantFirst() throws {
        var rng = SeededGenerator(seed: 14)
        let shape = [1, 2, 37]
        let scalar = Graph(name: "rsub", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                           outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                           nodes: [Node(name: "test", opType: "Sub", inputs: ["one", "x"], outputs: ["y"])],
                           initializers: [("one", try Tensor(floats: [1], shape: []))])
        try check(scalar, ["x": try random(shape, &rng)], kind: .eltwise, "1 − x")
        // YOLO's anchor points − distances: a full-size constant first.
        let anchors = Graph(name: "anchors", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                            outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                            nodes: [Node(name: "test", opType: "Sub", inputs: ["anchors", "x"], outputs: ["y"])],
                            initializers: [("anchors", try random(shape, &rng))])
        try check(anchors, ["x": try random(shape, &rng)], kind: .binary, "anchors − x")
    }

    /// Paddle's batch normalization as per-channel Mul / Add / Sub after a convolution,
    /// with the convolution forced into every channel layout and the layers decided for
    /// the Swift kernel: the same values as the reference (one rounding each, as it does).
    func testChannelAffineInEveryChannelLayout() throws {
        var rng = SeededGenerator(seed: 15)
        for (trial, layout) in [Layout.plain, .channelsLast, .blocked8, .blocked16, .plain, .blocked16].enumerated() {
            let c = [5, 16, 19, 32, 7, 40][trial], n = trial % 3 == 0 ? 2 : 1
            let shape = [n, 3, Int.random(in: 4...9, using: &rng), Int.random(in: 4...9, using: &rng)]
            let op = ["Mul", "Add", "Sub"][trial % 3]
            let constantShape = trial % 2 == 0 ? [c, 1, 1] : [1, c, 1, 1]
            let g = Graph(name: "affine", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                  Node(name: "relu", opType: "Relu", inputs: ["a"], outputs: ["r"]),
                                  Node(name: "test", opType: op, inputs: op != "Sub" && trial % 2 == 1 ? ["k", "r"] : ["r", "k"], outputs: ["y"])],
                          initializers: [("w", try random([c, 3, 3, 3], &rng)), ("k", try random(constantShape, &rng))])
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)])
            let x = try random(shape, &rng)
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
            let (engine, compiled) = try self.engine(model, convLayout: layout, test: LayerDecision(kernel: .channelAffine), "affine")
            XCTAssertEqual(compiled.decisions["test"]?.kernel, .channelAffine, "\(layout) \(op): \(String(describing: compiled.decisions["test"]))")
            let context = ExecutionContext(engine: engine)
            let actual = try context.run(["x": x])[0].value
            let c2 = Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3)
            XCTAssertTrue(c2.passed, "\(layout) \(op) c\(c) n\(n): \(c2)")
            XCTAssertEqual(context.lastPlan?.implementation(of: "test"), "swift")
        }
    }

    /// HardSwish (opset 14 on) and HardSigmoid (every opset) run on oneDNN's eltwise
    /// kernels, with a dynamic batch as paddle2onnx exports them.
    func testHardSwishAndHardSigmoidAreEltwiseAtEveryOpset() throws {
        var rng = SeededGenerator(seed: 16)
        for (op, opset) in [("HardSigmoid", 6), ("HardSigmoid", 22), ("HardSwish", 14), ("HardSwish", 22)] {
            let attributes: [String: Attribute] = op == "HardSigmoid" ? ["alpha": .float(0.3), "beta": .float(0.4)] : [:]
            let g = Graph(name: op, inputs: [ValueInfo(name: "x", type: TensorType(.float, [.symbol("batch"), .known(3), .known(5), .known(7)]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: op, inputs: ["x"], outputs: ["y"], attributes: attributes)])
            // Values around the knees (−3, 3 and where α·x + β crosses 0 and 1) and beyond.
            let x = try Tensor(floats: (0..<(2 * 105)).map { _ in Float.random(in: -6...6, using: &rng) }, shape: [2, 3, 5, 7])
            try check(g, ["x": x], kind: .eltwise, exact: false, opset: opset, "\(op) at opset \(opset)")
        }
    }

    /// Broadcast binary ops after a convolution forced into every channel layout: where
    /// oneDNN has only its reference implementation for the layout and broadcast (a
    /// per-width constant on nChw16c), the planner runs the op in plain layout instead;
    /// where it has none for any layout (along the height), the Swift kernel runs it.
    func testBroadcastBinaryOpsInEveryLayoutStayOnOneDNN() throws {
        var rng = SeededGenerator(seed: 17)
        for (trial, layout) in [Layout.plain, .channelsLast, .blocked8, .blocked16, .preferred].enumerated() {
            let c = [16, 24, 5, 32, 40][trial], shape = [1, 3, 6 + trial, 9]
            for (op, constantShape) in [("Sub", [shape[3]]), ("Mul", [c, 1, 1]), ("Add", [1, 1, shape[2], 1]), ("Div", [1])] {
                let g = Graph(name: "binary", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                              outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                              nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                      Node(name: "test", opType: op, inputs: ["a", "k"], outputs: ["y"])],
                              initializers: [("w", try random([c, 3, 3, 3], &rng)),
                                             ("k", try Tensor(floats: (0..<constantShape.reduce(1, *)).map { _ in Float.random(in: 0.5...2, using: &rng) }, shape: constantShape))])
                let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)])
                let x = try random(shape, &rng)
                let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
                let (engine, compiled) = try self.engine(model, convLayout: layout, test: nil, "binary")
                let expectedKind: KernelKind = constantShape == [1, 1, shape[2], 1] ? .broadcastArithmetic : .binary
                XCTAssertEqual(compiled.decisions["test"]?.kernel, expectedKind, "\(layout) \(op) \(constantShape): \(String(describing: compiled.decisions["test"]))")
                let actual = try ExecutionContext(engine: engine).run(["x": x])[0].value
                let c2 = Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3)
                XCTAssertTrue(c2.passed, "\(layout) \(op) \(constantShape): \(c2)")
                XCTAssertFalse(compiled.implementations["test"]?.hasPrefix("ref") ?? true, "\(layout) \(op): \(compiled.implementations["test"] ?? "-")")
            }
        }
    }

    /// Squeeze-and-excitation: a computed per-channel scale [1, C, 1, 1] times a blocked
    /// feature map runs on oneDNN in the map's blocked layout, with no reorder of the map.
    func testChannelScaleOfABlockedMapStaysBlocked() throws {
        var rng = SeededGenerator(seed: 23)
        for layout in [Layout.blocked16] {
            let c = 32, shape = [1, 8, 7, 9]
            let g = Graph(name: "se", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                  Node(name: "pool", opType: "GlobalAveragePool", inputs: ["a"], outputs: ["p"]),
                                  Node(name: "fc", opType: "Conv", inputs: ["p", "wf"], outputs: ["q"]),
                                  Node(name: "gate", opType: "Sigmoid", inputs: ["q"], outputs: ["s"]),
                                  Node(name: "test", opType: "Mul", inputs: ["s", "a"], outputs: ["y"])],
                          initializers: [("w", try random([c, 8, 3, 3], &rng)), ("wf", try random([c, c, 1, 1], &rng))])
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)])
            let x = try random(shape, &rng)
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
            let (engine, compiled) = try self.engine(model, convLayout: layout, test: nil, "se")
            let context = ExecutionContext(engine: engine)
            let actual = try context.run(["x": x])[0].value
            XCTAssertTrue(Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3).passed, "\(layout)")
            XCTAssertEqual(compiled.decisions["test"]?.kernel, .binary)
            XCTAssertFalse(compiled.implementations["test"]?.hasPrefix("ref") ?? true, "\(layout): \(compiled.implementations["test"] ?? "-")")
            let steps = try XCTUnwrap(context.lastPlan).stepSummary
            XCTAssertFalse(steps.contains { $0.layer == "reorder a" }, "\(layout): the map is reordered: \(steps)")
        }
    }

    /// InstanceNormalization on oneDNN's batch normalization computing its statistics: a
    /// batch of one in the convolution's layout (a 1-D signal as wav2vec2's feature encoder
    /// has it, or an image), a larger batch as [1, N·C, …] in plain layout.
    func testInstanceNormalizationOnOneDNN() throws {
        var rng = SeededGenerator(seed: 29)
        for (trial, layout) in [Layout.plain, .channelsLast, .blocked16, .preferred, .plain, .blocked16].enumerated() {
            let n = trial >= 4 ? 2 : 1, c = 16 + 8 * (trial % 3), spatial = trial < 3 ? [37] : [9, 11]
            let shape = [n, 4] + spatial, kernel = spatial.map { _ in 3 }
            let g = Graph(name: "instance", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints(Array(repeating: 1, count: 2 * spatial.count))]),
                                  Node(name: "test", opType: "InstanceNormalization", inputs: ["a", "s", "b"], outputs: ["y"], attributes: ["epsilon": .float(1e-3)])],
                          initializers: [("w", try random([c, 4] + kernel, &rng)), ("s", try random([c], &rng)), ("b", try random([c], &rng))])
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
            let x = try random(shape, &rng)
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
            let (engine, compiled) = try self.engine(model, convLayout: layout, test: nil, "instance")
            XCTAssertEqual(compiled.decisions["test"]?.kernel, .instanceNormalization, "trial \(trial)")
            XCTAssertFalse(compiled.implementations["test"]?.contains("ref") ?? true, "trial \(trial) \(layout): \(compiled.implementations["test"] ?? "-")")
            let actual = try ExecutionContext(engine: engine).run(["x": x])[0].value
            let comparison = Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3)
            XCTAssertTrue(comparison.passed, "trial \(trial) \(layout) \(shape): \(comparison)")
        }
    }

    /// A context keeps at most `planCacheCapacity` per-shape plans (least recently used
    /// dropped), and shapes that come back after being dropped are planned again.
    func testPerShapePlansAreBounded() throws {
        let model = try ONNXImporter.load(path: TestSupport.fixture("dynamic_batch/model.onnx"))
        let engine = try EngineBuilder().build(model, name: "dynamic_batch").engine
        let context = ExecutionContext(engine: engine)
        var rng = SeededGenerator(seed: 18)
        for (i, batch) in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 1, 2].enumerated() {
            let x = try random([batch, 1, 28, 28], &rng)
            let expected = try ReferenceExecutor(model: model).run(["image": x])[0].value
            for _ in 0..<2 {
                let actual = try context.run(["image": x])[0].value
                XCTAssertTrue(Comparison.compare(actual: actual, expected: expected, atol: 1e-5, rtol: 1e-3).passed, "batch \(batch)")
            }
            XCTAssertLessThanOrEqual(context.plannedShapeCount, 8, "after \(i + 1) shapes")
        }
        XCTAssertEqual(context.plannedShapeCount, 8)
        context.planCacheCapacity = 2
        XCTAssertEqual(context.plannedShapeCount, 2)
        XCTAssertNotNil(context.lastPlan, "the most recent plan is kept")
    }

    /// Reductions over constant axes (attribute or input, by opset) on oneDNN or the Swift
    /// kernel, with and without keepdims, against the reference.
    func testReductionsOnOneDNN() throws {
        var rng = SeededGenerator(seed: 19)
        for (trial, op) in ["ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceProd", "ReduceMean", "ReduceSum"].enumerated() {
            let shape = (0..<Int.random(in: 2...4, using: &rng)).map { _ in Int.random(in: 1...6, using: &rng) }
            let axes = Array(shape.indices.shuffled(using: &rng).prefix(Int.random(in: 1...shape.count, using: &rng))).map { Int64($0 - (trial % 2) * shape.count) }
            let keep: Int64 = trial % 3 == 0 ? 0 : 1, opset = trial % 2 == 0 ? 13 : 18
            let axesInput = opset >= (op == "ReduceSum" ? 13 : 18)
            var attributes: [String: Attribute] = ["keepdims": .int(keep)]
            if !axesInput { attributes["axes"] = .ints(axes) }
            let g = Graph(name: "reduce", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: op, inputs: axesInput ? ["x", "axes"] : ["x"], outputs: ["y"], attributes: attributes)],
                          initializers: axesInput ? [("axes", try Tensor(int64s: axes, shape: [axes.count]))] : [])
            let x = try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: (op == "ReduceProd" ? 0.5 : -2)...2, using: &rng) }, shape: shape)
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: opset)])
            let kind = try TestSupport.unoptimized(model, name: "reduce").compiled.decisions["test"]?.kernel
            // oneDNN's kernel, or where oneDNN has only its reference one, the Swift kernel (contiguous axes).
            let normalized = axes.map { Int($0) < 0 ? Int($0) + shape.count : Int($0) }
            let contiguous = Set(normalized) == Set(normalized.min()!...normalized.max()!)
            XCTAssertTrue(kind == .reduction || (kind == .swiftReduction && contiguous), "\(op) \(shape) axes \(axes): \(String(describing: kind))")
            try check(g, ["x": x], kind: kind ?? .reference, exact: false, opset: opset, "\(op) \(shape) axes \(axes) keepdims \(keep) opset \(opset)")
        }
    }

    /// Casts of tensors large enough to split between threads, each typed pair against the reference.
    func testLargeCastsMatchTheReference() throws {
        var rng = SeededGenerator(seed: 41)
        let count = 70_001
        let pairs: [(DataType, DataType)] = [(.bool, .float), (.uint8, .float), (.int8, .float), (.float, .int32), (.float, .bool),
                                             (.int64, .float), (.int32, .int64), (.int64, .int32), (.bool, .int32)]
        for (from, to) in pairs {
            let values: [Int64] = (0..<count).map { _ in from == .bool ? Int64.random(in: 0...1, using: &rng) : Int64.random(in: -128...127, using: &rng) }
            let x = from == .float ? try Tensor(floats: values.map { Float($0) * 1.37 }, shape: [count])
                                   : try Tensor(from, shape: [count], int64s: from == .uint8 ? values.map { $0 & 255 } : values)
            let g = Graph(name: "cast", inputs: [ValueInfo(name: "x", type: TensorType(from, shape: [count]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(to, nil))],
                          nodes: [Node(name: "test", opType: "Cast", inputs: ["x"], outputs: ["y"], attributes: ["to": .int(Int64(to.rawValue))])])
            let m = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
            let expected = try ReferenceExecutor(model: m).run(["x": x])[0].value
            let context = try TestSupport.unoptimizedContext(m, name: "cast")
            let actual = try context.run(["x": x])[0].value
            XCTAssertEqual(context.lastPlan?.stepSummary.first { $0.layer == "test" }?.implementation, "swift", "\(from) → \(to)")
            XCTAssertEqual(actual.dataType, to)
            XCTAssertEqual(actual.floats, expected.floats, "\(from) → \(to)")
        }
    }

    /// ReduceMax and ReduceMin (NaN and -inf/+inf included) and the other reductions on the
    /// Swift kernel, over the last axis and over a middle one, large enough to split
    /// between threads: against the reference, NaN where the reference has NaN.
    func testExtremaAndLargeReductionsOnTheSwiftKernel() throws {
        var rng = SeededGenerator(seed: 23)
        let ops = ["ReduceMax", "ReduceMin", "ReduceMean", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"]
        for (trial, (op, shape, axis)) in ops.flatMap({ op in [(op, [3, 170, 300], 2), (op, [2, 300, 121], 1), (op, [1, 7, 5], 1)] }).enumerated() {
            let g = Graph(name: "reduce", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: op, inputs: ["x", "axes"], outputs: ["y"], attributes: ["keepdims": .int(Int64(trial % 2))])],
                          initializers: [("axes", try Tensor(int64s: [Int64(axis)], shape: [1]))])
            var values = (0..<shape.reduce(1, *)).map { _ in Float.random(in: -2...2, using: &rng) }
            for _ in 0..<5 { values[Int.random(in: 0..<values.count, using: &rng)] = [Float.nan, -.infinity, .infinity][trial % 3] }
            let x = try Tensor(floats: values, shape: shape)
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 18)])
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value.floats
            let built = try TestSupport.unoptimized(model, name: "reduce")
            if op == "ReduceMax" || op == "ReduceMin" { XCTAssertEqual(built.compiled.decisions["test"]?.kernel, .swiftReduction, op) }
            let actual = try ExecutionContext(engine: try Engine(file: built.file, name: "reduce")).run(["x": x])[0].value.floats
            XCTAssertEqual(actual.count, expected.count)
            for (i, (a, e)) in zip(actual, expected).enumerated() {
                if e.isNaN || e.isInfinite {
                    XCTAssertTrue(a.isNaN == e.isNaN && (e.isNaN || a == e), "\(op) \(shape) axis \(axis) [\(i)]: \(a), expected \(e)")
                } else {
                    XCTAssertEqual(a, e, accuracy: 1e-4 + 1e-4 * abs(e), "\(op) \(shape) axis \(axis) [\(i)]")
                }
            }
        }
    }

    /// T5's relative position buckets: Cast(Log(n / 8) / Log(16) · 8) to int64 must land
    /// in the same bucket as the reference (and ONNX Runtime) for every n, which oneDNN's
    /// approximate log does not guarantee at exact powers: Log, Pow, Reciprocal, Floor,
    /// Ceil and Erf use the C library.
    func testLogBeforeAnIntegerCastIsExact() throws {
        let n = 512
        let g = Graph(name: "buckets", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, n]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.int64, nil))],
                      nodes: [Node(name: "div", opType: "Div", inputs: ["x", "eight"], outputs: ["a"]),
                              Node(name: "test", opType: "Log", inputs: ["a"], outputs: ["b"]),
                              Node(name: "scale", opType: "Div", inputs: ["b", "logMax"], outputs: ["c"]),
                              Node(name: "buckets", opType: "Mul", inputs: ["c", "eight"], outputs: ["d"]),
                              Node(name: "cast", opType: "Cast", inputs: ["d"], outputs: ["y"], attributes: ["to": .int(7)])],
                      initializers: [("eight", try Tensor(floats: [8], shape: [])), ("logMax", try Tensor(floats: [Float(Foundation.log(16.0))], shape: []))])
        try check(g, ["x": try Tensor(floats: (1...n).map(Float.init), shape: [1, n])], kind: .exactMath, "relative position buckets")
    }

    /// Constant-mode Pad with constant pads (inputs from opset 11, attributes before,
    /// axes from opset 18) in the Swift kernel, against the reference.
    func testConstantModePad() throws {
        var rng = SeededGenerator(seed: 20)
        for (trial, opset) in [2, 11, 13, 18, 19, 11].enumerated() {
            let shape = (0..<Int.random(in: 1...4, using: &rng)).map { _ in Int.random(in: 1...5, using: &rng) }
            let pads = (0..<(2 * shape.count)).map { _ in Int64.random(in: 0...2, using: &rng) }
            var inputs = ["x"], initializers: [(String, Tensor)] = [], attributes: [String: Attribute] = [:]
            if opset < 11 {
                attributes = ["pads": .ints(pads), "value": .float(1.5)]
            } else {
                inputs += ["pads", "value"]
                initializers = [("pads", try Tensor(int64s: pads, shape: [pads.count])), ("value", try Tensor(floats: [-2], shape: []))]
                if opset >= 18, trial % 2 == 1 {
                    // Only the last axis, through `axes`.
                    inputs.append("axes")
                    initializers[0] = ("pads", try Tensor(int64s: [1, 2], shape: [2]))
                    initializers.append(("axes", try Tensor(int64s: [-1], shape: [1])))
                }
            }
            let g = Graph(name: "pad", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: "Pad", inputs: inputs, outputs: ["y"], attributes: attributes)], initializers: initializers)
            try check(g, ["x": try random(shape, &rng)], kind: .pad, opset: opset, "Pad \(shape) \(pads) opset \(opset)")
        }
    }

    /// Reflect, edge and wrap Pad (cropping too) in the Swift kernel, against the reference.
    func testBorderModePad() throws {
        var rng = SeededGenerator(seed: 24)
        for trial in 0..<18 {
            let mode = ["reflect", "edge", "wrap"][trial % 3], opset = mode == "wrap" ? 19 : [11, 13, 18][trial % 3]
            let shape = (0..<Int.random(in: 1...4, using: &rng)).map { _ in Int.random(in: 1...5, using: &rng) }
            // Amounts up to 3 beyond a side (more than the size: repeated reflections) and crops of one.
            let pads = (0..<(2 * shape.count)).map { i in Int64(max(Int.random(in: -1...3, using: &rng), 1 - shape[i % shape.count])) }
            let g = Graph(name: "pad", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: "Pad", inputs: ["x", "pads"], outputs: ["y"], attributes: ["mode": .string(mode)])],
                          initializers: [("pads", try Tensor(int64s: pads, shape: [pads.count]))])
            try check(g, ["x": try random(shape, &rng)], kind: .pad, opset: opset, "Pad \(mode) \(shape) \(pads) opset \(opset)")
        }
    }

    /// Linear Resize with half-pixel centres on oneDNN where the given scales are the
    /// ratio of sizes (or sizes are given), against the reference.
    func testLinearResizeOnOneDNN() throws {
        var rng = SeededGenerator(seed: 21)
        for (trial, transform) in ["half_pixel", "pytorch_half_pixel", "half_pixel", "half_pixel"].enumerated() {
            let shape = [1, 3, 4, 6 + 2 * trial], factors: [Float] = [[2, 2], [1.5, 0.5], [0.5, 3], [2.5, 1]][trial]
            let out = zip(shape[2...], factors).map { Int(Float($0) * $1) }
            var inputs = ["x", "", "scales"], initializers = [("scales", try Tensor(floats: [1, 1] + zip(out, shape[2...]).map { Float($0) / Float($1) }, shape: [4]))]
            if trial == 3 {
                inputs = ["x", "", "", "sizes"]
                initializers = [("sizes", try Tensor(int64s: ([1, 3] + out).map(Int64.init), shape: [4]))]
            }
            let g = Graph(name: "resize", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: "Resize", inputs: inputs, outputs: ["y"],
                                       attributes: ["mode": .string("linear"), "coordinate_transformation_mode": .string(transform)])],
                          initializers: initializers)
            try check(g, ["x": try random(shape, &rng)], kind: .resize, exact: false, "linear resize \(shape) → \(out) \(transform)")
        }
    }
}

extension LoweringTests {
    /// Random rois (inside, across the border of, beyond, smaller than a cell of, and
    /// inverted on an h × w map at `scale`) with random batch indices below `n`.
    func randomRois(_ count: Int, n: Int, h: Int, w: Int, scale: Float, _ rng: inout SeededGenerator) throws -> (Tensor, Tensor) {
        let (ih, iw) = (Float(h) / scale, Float(w) / scale)
        let boxes: [Float] = (0..<count).flatMap { _ -> [Float] in
            let x1 = Float.random(in: -0.4 * iw...iw, using: &rng), y1 = Float.random(in: -0.4 * ih...ih, using: &rng)
            return [x1, y1, x1 + Float.random(in: -0.2 * iw...0.9 * iw, using: &rng), y1 + Float.random(in: -0.2 * ih...0.9 * ih, using: &rng)]
        }
        return (try Tensor(floats: boxes, shape: [count, 4]), try Tensor(int64s: (0..<count).map { _ in Int64.random(in: 0..<Int64(n), using: &rng) }, shape: [count]))
    }

    func randomRoiAlignAttributes(_ rng: inout SeededGenerator, opset: Int) -> ([String: Attribute], Float) {
        let scale: Float = [1, 0.5, 0.25, 0.125].randomElement(using: &rng)!
        var attributes: [String: Attribute] = ["mode": .string(Bool.random(using: &rng) ? "avg" : "max"),
                                               "output_height": .int(Int64.random(in: 1...5, using: &rng)), "output_width": .int(Int64.random(in: 1...5, using: &rng)),
                                               "sampling_ratio": .int(Int64.random(in: 0...3, using: &rng)), "spatial_scale": .float(scale)]
        if opset >= 16, Bool.random(using: &rng) { attributes["coordinate_transformation_mode"] = .string("output_half_pixel") }
        return (attributes, scale)
    }

    /// RoiAlign in the Swift kernel equals the reference kernel exactly (the same Float
    /// operations in the same order) over random maps, rois and attributes at opsets 10 and 16.
    func testRoiAlignEqualsTheReference() throws {
        var rng = SeededGenerator(seed: 22)
        for trial in 0..<30 {
            let opset = trial % 3 == 0 ? 10 : 16
            let (attributes, scale) = randomRoiAlignAttributes(&rng, opset: opset)
            let shape = [Int.random(in: 1...3, using: &rng), Int.random(in: 1...6, using: &rng), Int.random(in: 1...12, using: &rng), Int.random(in: 1...12, using: &rng)]
            let count = Int.random(in: 0...9, using: &rng)
            let (rois, batch) = try randomRois(count, n: shape[0], h: shape[2], w: shape[3], scale: scale, &rng)
            let g = Graph(name: "roi", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape)), ValueInfo(name: "rois", type: TensorType(.float, shape: [count, 4])),
                                                ValueInfo(name: "batch", type: TensorType(.int64, shape: [count]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: "RoiAlign", inputs: ["x", "rois", "batch"], outputs: ["y"], attributes: attributes)])
            try check(g, ["x": try random(shape, &rng), "rois": rois, "batch": batch], kind: .roiAlign, opset: opset, "trial \(trial): \(shape) \(count) rois \(attributes)")
        }
    }

    /// RoiAlign reading a convolution's output in every channel layout, against the reference.
    func testRoiAlignInEveryChannelLayout() throws {
        var rng = SeededGenerator(seed: 23)
        for (trial, layout) in [Layout.plain, .channelsLast, .blocked8, .blocked16, .preferred, .blocked16].enumerated() {
            let c = [5, 16, 19, 32, 24, 40][trial], shape = [trial % 2 + 1, 3, Int.random(in: 4...10, using: &rng), Int.random(in: 4...10, using: &rng)]
            let (attributes, scale) = randomRoiAlignAttributes(&rng, opset: 16)
            let (rois, batch) = try randomRois(6, n: shape[0], h: shape[2], w: shape[3], scale: scale, &rng)
            let g = Graph(name: "roi", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "conv", opType: "Conv", inputs: ["x", "w"], outputs: ["a"], attributes: ["pads": .ints([1, 1, 1, 1])]),
                                  Node(name: "test", opType: "RoiAlign", inputs: ["a", "rois", "batch"], outputs: ["y"], attributes: attributes)],
                          initializers: [("w", try random([c, 3, 3, 3], &rng)), ("rois", rois), ("batch", batch)])
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 16)])
            let x = try random(shape, &rng)
            let expected = try ReferenceExecutor(model: model).run(["x": x])[0].value
            let (engine, compiled) = try self.engine(model, convLayout: layout, test: nil, "roi")
            XCTAssertEqual(compiled.decisions["test"]?.kernel, .roiAlign, "\(layout): \(String(describing: compiled.decisions["test"]))")
            let context = ExecutionContext(engine: engine)
            let actual = try context.run(["x": x])[0].value
            let comparison = Comparison.compare(actual: actual, expected: expected, atol: 1e-4, rtol: 1e-3)
            XCTAssertTrue(comparison.passed, "\(layout) c\(c) \(attributes): \(comparison)")
            XCTAssertEqual(context.lastPlan?.implementation(of: "test"), "swift", "\(layout)")
        }
    }

    /// RoiAlign on the layer interpreter (its rois picked by NonZero, as a detector's are)
    /// runs on the Swift kernel over a channels-last copy of the map, equal to the reference.
    func testInterpretedRoiAlignEqualsTheReference() throws {
        var rng = SeededGenerator(seed: 27)
        for trial in 0..<12 {
            let (attributes, scale) = randomRoiAlignAttributes(&rng, opset: 16)
            let shape = [Int.random(in: 1...2, using: &rng), Int.random(in: 1...40, using: &rng), Int.random(in: 1...9, using: &rng), Int.random(in: 1...9, using: &rng)]
            let (rois, batch) = try randomRois(8, n: shape[0], h: shape[2], w: shape[3], scale: scale, &rng)
            let g = Graph(name: "roi", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape)), ValueInfo(name: "keep", type: TensorType(.bool, shape: [8]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "nonzero", opType: "NonZero", inputs: ["keep"], outputs: ["nz"]),
                                  Node(name: "squeeze", opType: "Squeeze", inputs: ["nz", "zero"], outputs: ["picked"]),
                                  Node(name: "boxes", opType: "Gather", inputs: ["rois", "picked"], outputs: ["r"]),
                                  Node(name: "images", opType: "Gather", inputs: ["batch", "picked"], outputs: ["b"]),
                                  Node(name: "test", opType: "RoiAlign", inputs: ["x", "r", "b"], outputs: ["y"], attributes: attributes)],
                          initializers: [("rois", rois), ("batch", batch), ("zero", try Tensor(int64s: [0], shape: [1]))])
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 16)])
            let feed = ["x": try random(shape, &rng), "keep": try Tensor(bools: (0..<8).map { _ in Bool.random(using: &rng) }, shape: [8])]
            let expected = try ReferenceExecutor(model: model).run(feed)[0].value
            let context = try TestSupport.unoptimizedContext(model)
            context.profiling = true
            for run in 0..<2 {
                let actual = try context.run(feed)[0].value
                let comparison = Comparison.compare(actual: actual, expected: expected, atol: 1e-6, rtol: 1e-5)
                XCTAssertTrue(comparison.passed, "trial \(trial) run \(run) \(shape) \(attributes): \(comparison)")
            }
            XCTAssertEqual(context.profile.first { $0.layer == "test" }?.kernels, "swift", "trial \(trial)")
        }
    }
}

extension LoweringTests {
    /// A pooling window larger than its padded input has no output: the lowering declines
    /// it (the reference kernel runs it) instead of failing in oneDNN.
    func testPoolingOfNothingDeclines() throws {
        var rng = SeededGenerator(seed: 26)
        for op in ["MaxPool", "AveragePool"] {
            let g = Graph(name: "pool", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 3, 2, 2]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "test", opType: op, inputs: ["x"], outputs: ["y"], attributes: ["kernel_shape": .ints([3, 3]), "strides": .ints([2, 2])])])
            try check(g, ["x": try random([1, 3, 2, 2], &rng)], kind: .reference, op)
            var builder = EngineBuilder()
            builder.optimize = false
            let reason = try builder.build(Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)]), name: op).compiled.decisions["test"]?.slowPathReason
            XCTAssertEqual(reason, "pooling does not fit its shapes or attributes", op)
        }
    }

    /// Dynamic image sizes sampled so small that layers see empty tensors (six stride-2
    /// poolings take 64 pixels to none) are sampled larger, so every layer is decided for
    /// a real shape.
    func testDynamicSamplesLeaveNoLayerEmpty() throws {
        let image = TensorType(.float, [.known(1), .known(3), .symbol("h"), .symbol("w")])
        let nodes = (0..<6).map { i in
            Node(name: "pool\(i)", opType: "MaxPool", inputs: [i == 0 ? "x" : "p\(i - 1)"], outputs: [i == 5 ? "y" : "p\(i)"],
                 attributes: ["kernel_shape": .ints([3, 3]), "strides": .ints([2, 2])])
        }
        let g = Graph(name: "pools", inputs: [ValueInfo(name: "x", type: image)], outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))], nodes: nodes)
        let built = try EngineBuilder().build(Model(graph: g, opsets: [OpsetImport(domain: "", version: 19)]), name: "pools")
        for node in nodes { XCTAssertEqual(built.compiled.decisions[node.name]?.kernel, .pooling, node.name) }
        XCTAssertTrue(built.warnings.contains { $0.contains("1x3x256x256") }, "\(built.warnings)")
    }
}

extension LoweringTests {
    /// GatherND (batch_dims 0 and 1, negative and int32 indices), GatherElements along every
    /// axis and CumSum (float and int64, exclusive, reversed) on their Swift kernels, against
    /// the reference; an index out of range is refused with the layer named.
    func testIndexingKernels() throws {
        var rng = SeededGenerator(seed: 29)
        func indices(_ shape: [Int], bound: Int, wide: Bool) throws -> Tensor {
            let v = (0..<shape.reduce(1, *)).map { _ in Int64.random(in: -Int64(bound)..<Int64(bound), using: &rng) }
            return try Tensor(wide ? .int64 : .int32, shape: shape, int64s: v)
        }
        func graph(_ op: String, _ x: [Int], _ xType: DataType, attributes: [String: Attribute], second: (String, Tensor)) -> Graph {
            Graph(name: op, inputs: [ValueInfo(name: "x", type: TensorType(xType, shape: x))], outputs: [ValueInfo(name: "y", type: TensorType(xType, nil))],
                  nodes: [Node(name: "test", opType: op, inputs: ["x", second.0], outputs: ["y"], attributes: attributes)], initializers: [second])
        }
        for trial in 0..<8 {
            // GatherND: data [2, 3, 4, 5]; index tuples of depth 1...2 after batch_dims 0 or 1.
            let batchDims = trial % 2, depth = 1 + trial % 3 / 2, data = [2, 3, 4, 5]
            let idxShape = (batchDims == 1 ? [2] : []) + [Int.random(in: 1...3, using: &rng), depth]
            var tuples = try indices(idxShape, bound: 3, wide: trial % 4 < 2)
            tuples = try Tensor(tuples.dataType, shape: tuples.shape, int64s: tuples.int64s.enumerated().map { i, v in
                let bound = Int64(data[batchDims + i % depth]); return ((v % bound) + bound) % bound - (i % 3 == 0 ? bound : 0)
            })
            try check(graph("GatherND", data, .float, attributes: ["batch_dims": .int(Int64(batchDims))], second: ("i", tuples)),
                      ["x": try random(data, &rng)], kind: .gatherND, "GatherND trial \(trial) \(idxShape)")
            // GatherElements along a random axis, indices no larger than the data off the axis.
            let axis = trial % 3, shape = [3, 4, 2]
            var idx = shape
            idx[axis] = Int.random(in: 1...5, using: &rng)
            try check(graph("GatherElements", shape, .float, attributes: ["axis": .int(Int64(axis))], second: ("i", try indices(idx, bound: shape[axis], wide: trial % 2 == 0))),
                      ["x": try random(shape, &rng)], kind: .gatherElements, "GatherElements trial \(trial) axis \(axis)")
            // CumSum of floats and int64s along a constant axis.
            let type: DataType = trial % 2 == 0 ? .float : .int64
            let values: Tensor = type == .float ? try random(shape, &rng) : try Tensor(int64s: (0..<24).map { _ in Int64.random(in: -9...9, using: &rng) }, shape: shape)
            try check(graph("CumSum", shape, type, attributes: ["exclusive": .int(Int64(trial / 2 % 2)), "reverse": .int(Int64(trial / 4))],
                            second: ("axis", try Tensor(int64s: [Int64(axis - 3 * (trial % 2))], shape: []))),
                      ["x": values], kind: .cumulativeSum, "CumSum trial \(trial) \(type) axis \(axis)")
        }
        // TopK along every axis, largest and smallest, with ties (they go to the lower index).
        for trial in 0..<6 {
            let shape = [3, 7, 4], axis = trial % 3, k = [2, 5, 1][trial % 3], opset = trial == 5 ? 9 : 11
            let values = try Tensor(floats: (0..<84).map { _ in Float(Int.random(in: -3...3, using: &rng)) }, shape: shape)
            var attributes: [String: Attribute] = ["axis": .int(Int64(axis - 3 * (trial % 2))), "largest": .int(Int64(trial / 2 % 2))]
            var inputs = ["x", "k"]
            if opset < 10 { attributes["k"] = .int(Int64(k)); attributes["largest"] = nil; inputs = ["x"] }
            let g = Graph(name: "topk", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: shape))],
                          outputs: [ValueInfo(name: "v", type: TensorType(.float, nil)), ValueInfo(name: "i", type: TensorType(.int64, nil))],
                          nodes: [Node(name: "test", opType: "TopK", inputs: inputs, outputs: ["v", "i"], attributes: attributes)],
                          initializers: opset < 10 ? [] : [("k", try Tensor(int64s: [Int64(k)], shape: [1]))])
            try check(g, ["x": values], kind: .topK, opset: opset, "TopK trial \(trial) axis \(axis) k \(k)")
        }
        // Expand of a constant (a class token) to a shape computed from an input.
        let expand = Graph(name: "expand", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [2, 3]))],
                           outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                           nodes: [Node(name: "shape", opType: "Shape", inputs: ["x"], outputs: ["s"]),
                                   Node(name: "test", opType: "Expand", inputs: ["token", "s"], outputs: ["y"])],
                           initializers: [("token", try Tensor(floats: [1, 2, 3], shape: [1, 3]))])
        try check(expand, ["x": try random([2, 3], &rng)], kind: .expand, "Expand of a constant")
        // A float Range from a computed limit (a detector's grid): [0.5, 1.5, …] up to the width.
        let range = Graph(name: "range", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [2, 7]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "shape", opType: "Shape", inputs: ["x"], outputs: ["s"]),
                                  Node(name: "width", opType: "Gather", inputs: ["s", "one"], outputs: ["w"], attributes: ["axis": .int(0)]),
                                  Node(name: "cast", opType: "Cast", inputs: ["w"], outputs: ["limit"], attributes: ["to": .int(1)]),
                                  Node(name: "test", opType: "Range", inputs: ["start", "limit", "step"], outputs: ["y"])],
                          initializers: [("one", try Tensor(int64s: [1], shape: [])), ("start", try Tensor(floats: [0.5], shape: [])),
                                         ("step", try Tensor(floats: [0.75], shape: []))])
        try check(range, ["x": try random([2, 7], &rng)], kind: .range, "float Range")
        // Linear Resize to sizes computed at run time (a segmentation head back to the input's size).
        let resize = Graph(name: "resize", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 3, 4, 6])),
                                                    ValueInfo(name: "image", type: TensorType(.float, shape: [1, 3, 9, 14]))],
                           outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                           nodes: [Node(name: "shape", opType: "Shape", inputs: ["image"], outputs: ["sizes"]),
                                   Node(name: "test", opType: "Resize", inputs: ["x", "", "", "sizes"], outputs: ["y"], attributes: ["mode": .string("linear")])])
        try check(resize, ["x": try random([1, 3, 4, 6], &rng), "image": try random([1, 3, 9, 14], &rng)], kind: .resize, exact: false, "Resize to computed sizes")
        // Abs, Neg, Sign and Relu of int64 and int32, the most negative value included.
        for (op, type) in [("Abs", DataType.int64), ("Neg", .int32), ("Sign", .int64), ("Relu", .int32)] {
            let extreme: Int64 = type == .int64 ? .min : Int64(Int32.min)
            let values = try Tensor(type, shape: [2, 4], int64s: [extreme, -7, -1, 0, 1, 5, 9, -3])
            let unary = Graph(name: op, inputs: [ValueInfo(name: "x", type: TensorType(type, shape: [2, 4]))], outputs: [ValueInfo(name: "y", type: TensorType(type, nil))],
                              nodes: [Node(name: "test", opType: op, inputs: ["x"], outputs: ["y"])])
            try check(unary, ["x": values], kind: .integerArithmetic, "\(op) of \(type)")
        }
        // An index out of range, only known when the layer runs.
        let g = Graph(name: "gather", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [3, 2])), ValueInfo(name: "i", type: TensorType(.int64, shape: [2, 1]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "test", opType: "GatherND", inputs: ["x", "i"], outputs: ["y"])])
        let context = try TestSupport.unoptimizedContext(Model(graph: g, opsets: [OpsetImport(domain: "", version: 13)]))
        XCTAssertThrowsError(try context.run(["x": try random([3, 2], &rng), "i": try Tensor(int64s: [1, 3], shape: [2, 1])])) { error in
            XCTAssertTrue("\(error)".contains("index 3 is outside [-3, 2]"), "\(error)")
        }
    }
}
