import AnvilBuilder
import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilPasses
import AnvilRuntime
import XCTest

final class PassTests: XCTestCase {
    func f(_ dims: [Int]) -> TensorType { TensorType(.float, shape: dims) }

    /// x → Identity → Cast(float) → Reshape(same) → Add 0 → Transpose → Transpose⁻¹ → Dropout → Relu → y
    func noOpChain() throws -> Model {
        let g = Graph(name: "noops", inputs: [ValueInfo(name: "x", type: f([2, 3]))], outputs: [ValueInfo(name: "y", type: f([2, 3]))],
                      nodes: [
                        Node(name: "id", opType: "Identity", inputs: ["x"], outputs: ["a"]),
                        Node(name: "cast", opType: "Cast", inputs: ["a"], outputs: ["b"], attributes: ["to": .int(1)]),
                        Node(name: "reshape", opType: "Reshape", inputs: ["b", "shape"], outputs: ["c"]),
                        Node(name: "add0", opType: "Add", inputs: ["c", "zero"], outputs: ["d"]),
                        Node(name: "t1", opType: "Transpose", inputs: ["d"], outputs: ["e"], attributes: ["perm": .ints([1, 0])]),
                        Node(name: "t2", opType: "Transpose", inputs: ["e"], outputs: ["g"], attributes: ["perm": .ints([1, 0])]),
                        Node(name: "drop", opType: "Dropout", inputs: ["g"], outputs: ["h"]),
                        Node(name: "relu", opType: "Relu", inputs: ["h"], outputs: ["y"]),
                      ],
                      initializers: [("shape", try Tensor(int64s: [2, 3], shape: [2])), ("zero", try Tensor(floats: [0], shape: [1]))])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
    }

    func testNoOpsAreEliminated() throws {
        let (text, context) = try PassTesting.optimized(noOpChain(), [EliminateNoOps(), EliminateDeadCode()])
        try PassTesting.assertGolden(text, "no-op-chain")
        XCTAssertEqual(try noOpChainOptimizedNodeCount(), 1)
        XCTAssertEqual(context.statistics["eliminate-no-ops"]?["Transpose pair cancelled"], 1)
        try PassTesting.assertPreservesOutputs(noOpChain, [EliminateNoOps(), EliminateDeadCode()])
    }

    func noOpChainOptimizedNodeCount() throws -> Int {
        let m = try noOpChain()
        _ = try PassTesting.optimized(m, [EliminateNoOps(), EliminateDeadCode()])
        return m.graph.nodes.count
    }

    /// A Transpose that moves only axes of size 1 becomes a Reshape (a view); one that
    /// reorders two larger axes stays.
    func testTransposesOfUnitAxesBecomeReshapes() throws {
        for (shape, perm, becomesReshape) in [([1, 5, 4], [1, 0, 2], true), ([2, 1, 3, 4], [0, 2, 1, 3], true),
                                              ([1, 5, 4], [0, 2, 1], false), ([5, 1, 4], [2, 1, 0], false),
                                              ([1, 0, 5], [1, 0, 2], false)] {
            let build = { () -> Model in
                var b = GraphBuilder()
                let y = b.op("Relu", [b.op("Transpose", ["x"], ["perm": .ints(perm.map { Int64($0) })])])
                return b.model(input: shape, output: y)
            }
            let m = build()
            _ = try PassTesting.optimized(m, [EliminateNoOps(), EliminateDeadCode()])
            XCTAssertEqual(m.graph.nodes.map(\.opType), [becomesReshape ? "Reshape" : "Transpose", "Relu"], "\(shape) \(perm)")
            try PassTesting.assertPreservesOutputs(build, [EliminateNoOps(), EliminateDeadCode()])
        }
    }

    /// When the no-op's output is a graph output, its input's producer takes the name.
    func testNoOpFeedingAGraphOutputKeepsTheOutputName() throws {
        let g = Graph(name: "g", inputs: [ValueInfo(name: "x", type: f([4]))], outputs: [ValueInfo(name: "y", type: f([4]))],
                      nodes: [Node(name: "relu", opType: "Relu", inputs: ["x"], outputs: ["r"]),
                              Node(name: "id", opType: "Identity", inputs: ["r"], outputs: ["y"])])
        let m = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        _ = try PassTesting.optimized(m, [EliminateNoOps()])
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Relu"])
        XCTAssertEqual(m.graph.nodes[0].outputs, ["y"])
        // An Identity from a graph input to a graph output must stay.
        let h = Graph(name: "h", inputs: [ValueInfo(name: "x", type: f([4]))], outputs: [ValueInfo(name: "y", type: f([4]))],
                      nodes: [Node(name: "id", opType: "Identity", inputs: ["x"], outputs: ["y"])])
        let n = Model(graph: h, opsets: [OpsetImport(domain: "", version: 17)])
        _ = try PassTesting.optimized(n, [EliminateNoOps()])
        XCTAssertEqual(n.graph.nodes.count, 1)
    }

    func testConstantsFoldIncludingShapeChains() throws {
        // Reshape(x, Concat(Gather(Shape(x), 0), [-1])) becomes Reshape(x, [2, -1]).
        let g = Graph(name: "shapes", inputs: [ValueInfo(name: "x", type: f([2, 3, 4]))], outputs: [ValueInfo(name: "y", type: .unknown)],
                      nodes: [
                        Node(name: "shape", opType: "Shape", inputs: ["x"], outputs: ["s"]),
                        Node(name: "gather", opType: "Gather", inputs: ["s", "zero"], outputs: ["n"]),
                        Node(name: "unsq", opType: "Unsqueeze", inputs: ["n", "axes"], outputs: ["n1"]),
                        Node(name: "concat", opType: "Concat", inputs: ["n1", "minus1"], outputs: ["target"], attributes: ["axis": .int(0)]),
                        Node(name: "reshape", opType: "Reshape", inputs: ["x", "target"], outputs: ["y"]),
                      ],
                      initializers: [("zero", .scalar(Int64(0))), ("axes", try Tensor(int64s: [0], shape: [1])), ("minus1", try Tensor(int64s: [-1], shape: [1]))])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let (text, _) = try PassTesting.optimized(model, [FoldConstants(), EliminateDeadCode()])
        try PassTesting.assertGolden(text, "shape-chain")
        XCTAssertEqual(model.graph.nodes.map(\.opType), ["Reshape"])
        XCTAssertEqual(model.graph.initializers[model.graph.nodes[0].inputs[1]]?.int64s, [2, -1])
    }

    func testCommonSubexpressionsAndDuplicateConstantsMerge() throws {
        let g = Graph(name: "cse", inputs: [ValueInfo(name: "x", type: f([3]))], outputs: [ValueInfo(name: "y", type: f([3]))],
                      nodes: [
                        Node(name: "m1", opType: "Mul", inputs: ["x", "c1"], outputs: ["a"]),
                        Node(name: "m2", opType: "Mul", inputs: ["x", "c2"], outputs: ["b"]),
                        Node(name: "add", opType: "Add", inputs: ["a", "b"], outputs: ["y"]),
                      ],
                      initializers: [("c1", try Tensor(floats: [1, 2, 3], shape: [3])), ("c2", try Tensor(floats: [1, 2, 3], shape: [3]))])
        let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        let (text, context) = try PassTesting.optimized(model, [DeduplicateConstants(), EliminateCommonSubexpressions(), EliminateDeadCode()])
        try PassTesting.assertGolden(text, "cse-dedup")
        XCTAssertEqual(model.graph.nodes.map(\.name), ["m1", "add"])
        XCTAssertEqual(model.graph.nodes[1].inputs, ["a", "a"])
        XCTAssertEqual(model.graph.initializerOrder, ["c1"])
        XCTAssertEqual(context.statistics["eliminate-common-subexpressions"]?["nodes merged"], 1)
    }

    /// The whole pipeline keeps outputs (reference executor, random inputs) on real models,
    /// and a second run changes nothing.
    func testPipelineOnFixturesPreservesOutputsAndIsIdempotent() throws {
        for name in ["cnn", "transformer", "dynamic_batch", "if_branch"] {
            let load = { try ONNXImporter.load(path: TestSupport.fixture("\(name)/model.onnx")) }
            try PassTesting.assertPreservesOutputs(load, Pipelines.standard)
            let model = try load()
            let (once, _) = try PassTesting.optimized(model, Pipelines.standard)
            let (twice, context) = try PassTesting.optimized(model, Pipelines.standard)
            XCTAssertEqual(once, twice, "\(name): second run changed the graph")
            XCTAssertTrue(context.statistics.filter { $0.key != "normalize" }.isEmpty, "\(name): second run did \(context.statistics)")
        }
    }

    func testPipelineOptionsAreChecked() {
        var options = PipelineOptions()
        options.skip = ["no-such-pass"]
        XCTAssertThrowsError(try PipelineRunner(options: options)) { XCTAssertTrue("\($0)".contains("unknown pass 'no-such-pass'"), "\($0)") }
    }

    func testExportedModelsReimportIdentically() throws {
        for name in ["cnn", "transformer", "dynamic_batch", "if_branch"] {
            let model = try ONNXImporter.load(path: TestSupport.fixture("\(name)/model.onnx"))
            let bytes = try ONNXExporter.encode(model)
            let again = try ONNXImporter.decodeModel(bytes, file: "\(name)-export.onnx", folder: nil)
            XCTAssertEqual(Printer.print(again.graph), Printer.print(model.graph), name)
            XCTAssertEqual(again.opsets, model.opsets)
        }
    }
}

final class FoldScaleTests: XCTestCase {
    func matmulChain(_ tail: String) -> Model {
        var b = GraphBuilder()
        let mm = b.op("MatMul", ["x", b.const((0..<12).map { Float($0) / 10 }, [4, 3])])
        let y = b.op(tail, [mm, b.const([2, -1, 0.5], [3])])
        return b.model(input: [2, 4], output: y)
    }

    /// A shift after a MatMul has nowhere to go: the pass must leave it (it used to loop).
    func testShiftAfterMatMulIsLeftForBiasFusion() throws {
        let m = matmulChain("Add")
        let (_, context) = try PassTesting.optimized(m, [FoldBatchNormAndScales()])
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["MatMul", "Add"])
        XCTAssertNil(context.statistics["fold-batchnorm-and-scales"])
    }

    func testScaleAfterMatMulFoldsIntoWeights() throws {
        let m = matmulChain("Mul")
        _ = try PassTesting.optimized(m, [FoldBatchNormAndScales(), EliminateDeadCode()])
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["MatMul"])
        try PassTesting.assertPreservesOutputs({ self.matmulChain("Mul") }, [FoldBatchNormAndScales(), EliminateDeadCode()])
    }

    func testBatchNormFoldsIntoConvWithGolden() throws {
        let build = { () -> Model in
            var b = GraphBuilder()
            let conv = b.op("Conv", ["x", b.const((0..<24).map { Float($0 % 5) - 2 }, [2, 3, 2, 2]), b.const([0.1, -0.2], [2])])
            let y = b.op("BatchNormalization", [conv, b.const([1.5, 0.5], [2]), b.const([0.1, 0.2], [2]), b.const([0.3, -0.3], [2]), b.const([2, 0.5], [2])])
            return b.model(input: [1, 3, 4, 4], output: y)
        }
        let m = build()
        let (text, _) = try PassTesting.optimized(m, [FoldBatchNormAndScales(), EliminateDeadCode()])
        try PassTesting.assertGolden(text, "batchnorm-into-conv")
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Conv"])
        try PassTesting.assertPreservesOutputs(build, [FoldBatchNormAndScales(), EliminateDeadCode()])
    }

    /// Conv(Pad(x)) with the pads TensorFlow's SAME padding writes (bottom/right only before
    /// a stride-2 convolution): the pad joins the convolution's own, asymmetric pads.
    func padConv(opset: Int = 17, pads: [Int64] = [0, 0, 0, 0, 0, 0, 1, 1], value: Float? = nil, mode: String? = nil,
                 axes: [Int64]? = nil) -> Model {
        var b = GraphBuilder()
        var padInputs = ["x"]
        var attributes: [String: Attribute] = mode.map { ["mode": .string($0)] } ?? [:]
        if opset < 11 {
            attributes["pads"] = .ints(pads)
            if let value { attributes["value"] = .float(value) }
        } else {
            b.initializers.append(("pads", try! Tensor(int64s: pads, shape: [pads.count])))
            padInputs.append("pads")
            if let value { padInputs.append(b.const([value], [])) } else if axes != nil { padInputs.append("") }
            if let axes { b.initializers.append(("axes", try! Tensor(int64s: axes, shape: [axes.count]))); padInputs.append("axes") }
        }
        let padded = b.op("Pad", padInputs, attributes)
        let w = b.const((0..<54).map { Float(($0 * 7) % 11) / 10 - 0.5 }, [2, 3, 3, 3])
        let y = b.op("Conv", [padded, w, b.const([0.1, -0.1], [2])], ["strides": .ints([2, 2]), "pads": .ints([1, 0, 0, 0])])
        return b.model(input: [1, 3, 7, 6], output: y, opset: opset)
    }

    func testZeroPadFoldsIntoConvPads() throws {
        let passes: [any Pass] = [FoldPadIntoConv(), EliminateDeadCode()]
        let cases: [(String, () -> Model)] = [
            ("opset 17", { self.padConv() }),
            ("opset 10 attributes", { self.padConv(opset: 10) }),
            ("explicit zero value", { self.padConv(value: 0) }),
            ("opset 18 axes", { self.padConv(opset: 18, pads: [2, 0, 1, 3], axes: [2, -1]) }),
        ]
        for (label, build) in cases {
            let m = build()
            _ = try PassTesting.optimized(m, passes)
            XCTAssertEqual(m.graph.nodes.map(\.opType), ["Conv"], label)
            try PassTesting.assertPreservesOutputs(build, passes)
        }
        let m = padConv(opset: 18, pads: [2, 0, 1, 3], axes: [2, -1])
        _ = try PassTesting.optimized(m, passes)
        XCTAssertEqual(try AttributeReader(node: m.graph.nodes[0]).ints("pads"), [3, 0, 1, 3])
    }

    func testPadsThatAreNotConvPaddingStay() throws {
        let cases: [(String, Model)] = [
            ("non-zero value", padConv(value: 1)),
            ("reflect mode", padConv(mode: "reflect")),
            ("batch axis padded", padConv(pads: [1, 0, 0, 0, 0, 0, 1, 1])),
            ("negative pad crops", padConv(pads: [0, 0, 0, 0, 0, 0, -1, 1])),
        ]
        for (label, m) in cases {
            _ = try PassTesting.optimized(m, [FoldPadIntoConv(), EliminateDeadCode()])
            XCTAssertEqual(m.graph.nodes.map(\.opType), ["Pad", "Conv"], label)
        }
    }
}

final class PruningTests: XCTestCase {
    /// conv1 (4 channels, channels 1 and 3 all zero) → Relu → conv2 → y.
    func zeroChannelModel() -> Model {
        var b = GraphBuilder()
        var w1 = (0..<108).map { (i: Int) -> Float in Float((i * 7) % 11) / 10 - 0.5 }
        for c in [1, 3] { for i in 0..<27 { w1[c * 27 + i] = 0 } }
        let conv1 = b.op("Conv", ["x", b.const(w1, [4, 3, 3, 3]), b.const([0.1, 0, -0.2, 0], [4])], ["pads": .ints([1, 1, 1, 1])])
        let relu = b.op("Relu", [conv1])
        let w2 = (0..<72).map { (i: Int) -> Float in Float((i * 5) % 13) / 10 - 0.6 }
        let y = b.op("Conv", [relu, b.const(w2, [2, 4, 3, 3])], ["pads": .ints([1, 1, 1, 1])])
        return b.model(input: [1, 3, 6, 6], output: y)
    }

    func testZeroChannelsArePrunedExactly() throws {
        let passes: [any Pass] = [FuseActivation(), PruneZeroChannels(), EliminateDeadCode()]
        let m = zeroChannelModel()
        let (text, context) = try PassTesting.optimized(m, passes)
        try PassTesting.assertGolden(text, "prune-zero-channels")
        XCTAssertEqual(context.statistics["prune-zero-channels"]?["channels removed"], 2)
        let weights = m.graph.nodes.map { m.graph.initializers[$0.inputs[1]]!.shape }
        XCTAssertEqual(weights, [[2, 3, 3, 3], [2, 2, 3, 3]])
        // Numerically identical, not merely close.
        let original = zeroChannelModel()
        let feed = try PassTesting.randomInputs(original.graph, seed: 5)
        let before = try ReferenceExecutor(model: original).run(feed)[0].value
        let after = try ReferenceExecutor(model: m).run(feed)[0].value
        XCTAssertEqual(before, after)
    }

    /// A channel that is zero before a Sigmoid is 0.5 after it: not prunable.
    func testChannelsThatActivationsMakeNonZeroStay() throws {
        let m = zeroChannelModel()
        m.graph.nodes[1].opType = "Sigmoid"
        _ = try PassTesting.optimized(m, [FuseActivation(), PruneZeroChannels()])
        XCTAssertEqual(m.graph.initializers[m.graph.nodes[0].inputs[1]]?.shape, [4, 3, 3, 3])
    }

    func testBranchesTimesZeroBecomeDead() throws {
        let build = { () -> Model in
            var b = GraphBuilder()
            let branch = b.op("Exp", [b.op("Relu", ["x"])])
            let zeroed = b.op("Mul", [branch, b.const([0, 0, 0], [3])])
            let y = b.op("Add", ["x", zeroed])
            return b.model(input: [2, 3], output: y)
        }
        let passes: [any Pass] = [EliminateZeroBranches(), EliminateNoOps(), EliminateDeadCode()]
        let m = build()
        let (text, _) = try PassTesting.optimized(m, passes)
        try PassTesting.assertGolden(text, "zero-branch")
        // The Relu and Exp branch is gone; x + 0 stays because x is a graph input and y a graph output.
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Add"])
        try PassTesting.assertPreservesOutputs(build, passes)
    }
}

final class FusionTests: XCTestCase {
    func testConvResidualActivationFuseIntoOneNode() throws {
        let passes: [any Pass] = [FuseResidualAdd(), FuseActivation(), EliminateDeadCode()]
        let build = { () -> Model in
            var b = GraphBuilder()
            let conv = b.op("Conv", ["x", b.const((0..<36).map { (i: Int) -> Float in Float(i % 7) / 7 - 0.4 }, [2, 2, 3, 3]), b.const([0.1, -0.1], [2])],
                            ["pads": .ints([1, 1, 1, 1])])
            let y = b.op("Relu", [b.op("Add", [conv, "x"])])
            return b.model(input: [1, 2, 4, 4], output: y)
        }
        let m = build()
        let (text, _) = try PassTesting.optimized(m, passes)
        try PassTesting.assertGolden(text, "conv-residual-relu")
        XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), ["ai.anvil.FusedConv"])
        try PassTesting.assertPreservesOutputs(build, passes)
    }

    /// YOLO's bottleneck, x + SiLU(conv(x)): the residual joins the convolution after its
    /// activation (oneDNN's sum post-op after the eltwise one); the exported body adds it after
    /// the activation, ONNX Runtime agrees, and the engine runs it in one kernel, in FP32 and
    /// BF16 (where the C2f split, the concatenation and the max pooling then stay BF16), and
    /// under --int8 (the quantizer separates the Add again).
    func testResidualAfterActivationJoinsTheConvolution() throws {
        let build = { () -> Model in
            var b = GraphBuilder()
            let w = b.const((0..<(32 * 16 * 9)).map { (i: Int) -> Float in Float(i % 11) / 40 - 0.12 }, [32, 16, 3, 3])
            let stem = b.op("Conv", ["x", w, b.const((0..<32).map { Float($0 % 5) / 10 - 0.2 }, [32])], ["pads": .ints([1, 1, 1, 1])])
            let act = b.op("Mul", [stem, b.op("Sigmoid", [stem])])
            let halves = ["h0", "h1"]
            b.nodes.append(Node(name: "split", opType: "Split", inputs: [act, b.ints([16, 16])], outputs: halves, attributes: ["axis": .int(1)]))
            let inner = b.op("Conv", ["h1", b.const((0..<(16 * 16 * 9)).map { (i: Int) -> Float in Float(i % 13) / 60 - 0.1 }, [16, 16, 3, 3])],
                             ["pads": .ints([1, 1, 1, 1])])
            let bottleneck = b.op("Add", ["h1", b.op("Mul", [inner, b.op("Sigmoid", [inner])])])
            let pooled = b.op("MaxPool", [bottleneck], ["kernel_shape": .ints([3, 3]), "pads": .ints([1, 1, 1, 1]), "strides": .ints([1, 1])])
            let joined = b.op("Concat", ["h0", "h1", bottleneck, pooled], ["axis": .int(1)])
            let y = b.op("Conv", [joined, b.const((0..<(8 * 64)).map { (i: Int) -> Float in Float(i % 9) / 30 - 0.13 }, [8, 64, 1, 1])])
            return b.model(input: [1, 16, 12, 12], output: y)
        }
        let model = build()
        _ = try PassTesting.optimized(model, Pipelines.standard)
        let joined = try XCTUnwrap(model.graph.nodes.first { $0.attributes["residual_after_activation"] != nil })
        XCTAssertEqual(joined.inputs.count, 4)
        XCTAssertFalse(model.graph.nodes.contains { $0.opType == "Add" })
        try PassTesting.assertPreservesOutputs(build, Pipelines.standard)

        var rng = SeededGenerator(seed: 17)
        let x = try Tensor(floats: (0..<(16 * 144)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [1, 16, 12, 12])
        let folder = try TestSupport.temporaryFolder()
        try ExportChecks.writeWithReference(model, inputs: [["x": x]], folder: folder)
        XCTAssertEqual(try ExportChecks.onnxRuntimeStatus(folder + "/model.onnx", reference: folder + "/reference"), 0)
        let expected = try ReferenceExecutor(model: build()).run(["x": x])[0].value
        var builder = EngineBuilder()
        let fp32 = try builder.build(build(), name: "bottleneck")
        let layer = try XCTUnwrap(fp32.graph.layers.first { $0.decision?.postOps.residualAfterActivation == true })
        XCTAssertEqual(layer.decision?.postOps.description, "SiLU + residual sum")
        let bytes = try fp32.file.encoded()
        let loaded = try Engine(file: try bytes.withUnsafeBytes { try EngineFile.decode($0, file: "b.anvil") }, name: "b.anvil")
        XCTAssertEqual(loaded.graph.layers.first { $0.name == layer.name }?.decision, layer.decision)
        XCTAssertTrue(Comparison.compare(actual: try ExecutionContext(engine: loaded).run(["x": x])[0].value, expected: expected, atol: 1e-4, rtol: 1e-3).passed)
        if CPUFeatures.host.contains(.avx512Bf16) {
            builder.precision = PrecisionPolicy(bf16: true, keepEnds: false)
            let bf16 = try builder.build(build(), name: "bottleneck")
            let plan = try XCTUnwrap(bf16.compiled.plan)
            for op in ["Split", "Concat", "MaxPool"] {
                let l = try XCTUnwrap(bf16.graph.layers.first { $0.opType == op })
                XCTAssertTrue(plan.format(of: l.outputs[0])?.contains("BF16") == true, "\(op): \(plan.format(of: l.outputs[0]) ?? "-")")
            }
            // Between the layers only layout changes, no conversions: every reorder inside writes BF16.
            let conversions = plan.stepDetails.filter { step in
                step.implementation == "reorder" && !["reorder x", "reorder y"].contains(step.layer) && step.writes.contains { plan.format(of: $0)?.contains("BF16") != true }
            }
            XCTAssertEqual(conversions.map { $0.layer }, [], "\(plan.stepDetails)")
            let actual = try ExecutionContext(engine: bf16.engine).run(["x": x])[0].value
            XCTAssertGreaterThan(OutputComparison.cosine(actual.doubles, expected.doubles), 0.999)
        }
        builder.precision = PrecisionPolicy(int8: true, keepEnds: false)
        builder.calibration = [["x": x]]
        let int8 = try builder.build(build(), name: "bottleneck")
        XCTAssertEqual(int8.int8Layers.count, 3, "\(int8.int8Layers)")
        XCTAssertTrue(int8.graph.layers.contains { $0.opType == "Add" })
        XCTAssertGreaterThan(OutputComparison.cosine(try ExecutionContext(engine: int8.engine).run(["x": x])[0].value.doubles, expected.doubles), 0.99)
    }

    func testMatMulBiasGeluFuse() throws {
        let passes: [any Pass] = [FuseMatMulBias(), FuseActivation(), EliminateDeadCode()]
        for rank in [2, 3] {
            let build = { () -> Model in
                var b = GraphBuilder()
                let mm = b.op("MatMul", ["x", b.const((0..<12).map { (i: Int) -> Float in Float(i) / 12 - 0.5 }, [4, 3])])
                let y = b.op("Gelu", [b.op("Add", [b.const([0.5, -1, 2], [3]), mm])])
                return b.model(input: rank == 2 ? [2, 4] : [2, 5, 4], output: y, opset: 20)
            }
            let m = build()
            let (text, _) = try PassTesting.optimized(m, passes)
            XCTAssertEqual(m.graph.nodes.map(\.qualifiedOpType), [rank == 2 ? "ai.anvil.FusedGemm" : "ai.anvil.FusedMatMul"])
            if rank == 3 { try PassTesting.assertGolden(text, "matmul-bias-gelu") }
            try PassTesting.assertPreservesOutputs(build, passes)
        }
    }

    /// PyTorch's linear layer on a view: Reshape to [B·S, K] → Gemm → Reshape to [B, S, N]
    /// becomes a MatMul on the 3-D input, so bias, activation and residual fuse into it; a
    /// 4-D input whose last two axes make K (merged heads) is merged by a Reshape first.
    func testFlattenedGemmBecomesAFusedMatMul() throws {
        let passes: [any Pass] = [FuseMatMulBias(), FuseResidualAdd(), FuseActivation(), EliminateDeadCode()]
        for (trailing, transB, residual) in [([8], false, false), ([8], true, true), ([2, 4], true, false)] {
            let build = { () -> Model in
                var b = GraphBuilder()
                let leading = b.op("Slice", [b.op("Shape", ["x"]), b.ints([0]), b.ints([2])])
                let flat = b.op("Reshape", ["x", b.ints([-1, 8])])
                let w = b.const((0..<64).map { Float(($0 * 3) % 11) / 11 - 0.5 }, [8, 8])
                let gemm = b.op("Gemm", [flat, w, b.const((0..<8).map { Float($0) / 8 }, [8])], ["transB": .int(transB ? 1 : 0)])
                let product = b.op("Reshape", [gemm, b.op("Concat", [leading, b.ints([8])], ["axis": .int(0)])])
                let y = residual ? b.op("Add", [product, "x"]) : b.op("Relu", [product])
                let m = b.model(input: [1, 1] + trailing, output: y, opset: 17)
                m.graph.inputs[0].type = TensorType(.float, [.symbol("batch"), .symbol("sequence")] + trailing.map { .known($0) })
                return m
            }
            let m = build()
            _ = try PassTesting.optimized(m, passes)
            let ops = m.graph.nodes.map(\.qualifiedOpType)
            XCTAssertEqual(ops, (trailing.count > 1 ? ["Reshape"] : []) + ["ai.anvil.FusedMatMul"], "\(trailing)")
            let fused = try XCTUnwrap(m.graph.nodes.last)
            XCTAssertEqual(fused.inputs.count, residual ? 4 : 3, "bias (and residual) fused")
            if !residual { XCTAssertEqual(try AttributeReader(node: fused).string("activation"), "Relu") }
            var rng = SeededGenerator(seed: 7)
            let shape = [3, 2] + trailing
            let x = try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
            try PassTesting.assertPreservesOutputs(build, passes, inputs: ["x": x])
        }
    }

    /// A product of two runtime tensors (attention scores with T5's position bias) keeps its
    /// Add and activation: only layers with constant weights have fused kernels.
    func testProductsOfRuntimeTensorsAreNotFused() throws {
        let f = TensorType(.float, shape: [1, 2, 4, 4])
        let g = Graph(name: "scores", inputs: [ValueInfo(name: "q", type: f), ValueInfo(name: "k", type: f), ValueInfo(name: "bias", type: f)],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "mm", opType: "MatMul", inputs: ["q", "k"], outputs: ["s"]),
                              Node(name: "add", opType: "Add", inputs: ["s", "bias"], outputs: ["t"]),
                              Node(name: "relu", opType: "Relu", inputs: ["t"], outputs: ["y"])])
        let m = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        _ = try PassTesting.optimized(m, [FuseMatMulBias(), FuseResidualAdd(), FuseActivation()])
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["MatMul", "Add", "Relu"])
    }

    /// A layer whose output is read twice cannot absorb what follows.
    func testSharedLayerOutputsAreNotFused() throws {
        var b = GraphBuilder()
        let conv = b.op("Conv", ["x", b.const(Array(repeating: 0.5, count: 4), [1, 1, 2, 2])])
        let relu = b.op("Relu", [conv])
        let y = b.op("Add", [relu, conv])
        let m = b.model(input: [1, 1, 3, 3], output: y)
        _ = try PassTesting.optimized(m, [FuseActivation(), FuseResidualAdd()])
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Conv", "Relu", "Add"])
    }

    /// Unusual but valid graphs go through the whole pipeline without harm.
    func testUnusualGraphsSurviveThePipeline() throws {
        let empty = Model(graph: Graph(name: "empty"), opsets: [OpsetImport(domain: "", version: 17)])
        _ = try PassTesting.optimized(empty, Pipelines.standard)
        XCTAssertTrue(empty.graph.nodes.isEmpty)

        let passthrough = Graph(name: "pass", inputs: [ValueInfo(name: "x", type: TensorType(.float, [.unknown]))],
                                outputs: [ValueInfo(name: "x", type: TensorType(.float, [.unknown])), ValueInfo(name: "c", type: .unknown)],
                                initializers: [("c", try Tensor(floats: [1], shape: [1]))])
        let m = Model(graph: passthrough, opsets: [OpsetImport(domain: "", version: 17)])
        _ = try PassTesting.optimized(m, Pipelines.standard)
        XCTAssertEqual(m.graph.outputs.map(\.name), ["x", "c"])
        XCTAssertNotNil(m.graph.initializers["c"])

        // The transformer fixture with every input dimension unknown.
        let load = { () throws -> Model in
            let model = try ONNXImporter.load(path: TestSupport.fixture("transformer/model.onnx"))
            for i in model.graph.inputs.indices { model.graph.inputs[i].type.dims = model.graph.inputs[i].type.dims?.map { _ in .unknown } }
            model.graph.valueTypes = [:]
            return model
        }
        let unknownDims = try load()
        _ = try PassTesting.optimized(unknownDims, Pipelines.standard)
        let feed = try PassTesting.randomInputs(try ONNXImporter.load(path: TestSupport.fixture("transformer/model.onnx")).graph, seed: 3)
        let expected = try ReferenceExecutor(model: try load()).run(feed)[0].value
        let actual = try ReferenceExecutor(model: unknownDims).run(feed)[0].value
        XCTAssertTrue(Comparison.compare(actual: actual, expected: expected, atol: 1e-5, rtol: 1e-5).passed)
    }
}

final class IntegerLinearTests: XCTestCase {
    /// The Conv's int32 bias: none, quantized at run time with the input's scale (as
    /// quantize_dynamic writes it), or a constant.
    enum Bias { case none, runtime, constant }

    /// ONNX Runtime's dynamic quantization of a Conv and of a MatMul with per-column
    /// weight zero points.
    func dynamicallyQuantized(signedWeights: Bool = false, bias: Bias = .runtime) -> Model {
        var rng = SeededGenerator(seed: 7)
        let weightType: DataType = signedWeights ? .int8 : .uint8
        let range: ClosedRange<Int64> = signedWeights ? -128...127 : 0...255
        func bytes(_ shape: [Int]) -> Tensor { try! Tensor(weightType, shape: shape, int64s: (0..<shape.reduce(1, *)).map { _ in Int64.random(in: range, using: &rng) }) }
        let initializers: [(String, Tensor)] = [
            ("w", bytes([6, 3, 3, 3])), ("wz", try! Tensor(weightType, shape: [], int64s: [signedWeights ? 3 : 131])),
            ("ws", try! Tensor(floats: [0.02], shape: [])), ("b", try! Tensor(floats: [0.5, -1, 2, 0, 0.25, -0.75], shape: [6])),
            ("shape", try! Tensor(int64s: [1, 6, 1, 1], shape: [4])),
            ("m", bytes([6, 5])), ("mz", try! Tensor(weightType, shape: [5], int64s: signedWeights ? [0, -2, 5, 1, 0] : [128, 120, 140, 127, 0])),
            ("ms", try! Tensor(floats: [0.01], shape: [])),
            ("bconst", try! Tensor(.int32, shape: [1, 6, 1, 1], int64s: [40, -7, 300, 0, -1200, 5])),
        ]
        var nodes = [Node(name: "q", opType: "DynamicQuantizeLinear", inputs: ["x"], outputs: ["xq", "xs", "xz"]),
                     Node(name: "conv", opType: "ConvInteger", inputs: ["xq", "w", "xz", "wz"], outputs: ["ci"], attributes: ["pads": .ints([1, 1, 1, 1])])]
        var result = "ci"
        if bias == .constant {
            nodes.append(Node(name: "badd", opType: "Add", inputs: ["bconst", "ci"], outputs: ["cb"]))
            result = "cb"
        }
        if bias == .runtime {
            nodes += [Node(name: "scale", opType: "Mul", inputs: ["xs", "ws"], outputs: ["s"]),
                      Node(name: "bdiv", opType: "Div", inputs: ["b", "s"], outputs: ["bd"]),
                      Node(name: "bfloor", opType: "Floor", inputs: ["bd"], outputs: ["bf"]),
                      Node(name: "bcast", opType: "Cast", inputs: ["bf"], outputs: ["bi"], attributes: ["to": .int(6)]),
                      Node(name: "breshape", opType: "Reshape", inputs: ["bi", "shape"], outputs: ["br"]),
                      Node(name: "badd", opType: "Add", inputs: ["ci", "br"], outputs: ["cb"])]
            result = "cb"
        }
        nodes += [Node(name: "tofloat", opType: "Cast", inputs: [result], outputs: ["cf"], attributes: ["to": .int(1)]),
                  Node(name: "rescale", opType: "Mul", inputs: ["cf", "xs"], outputs: ["c"]),
                  Node(name: "pool", opType: "GlobalAveragePool", inputs: ["c"], outputs: ["p"]),
                  Node(name: "flat", opType: "Flatten", inputs: ["p"], outputs: ["f"]),
                  Node(name: "q2", opType: "DynamicQuantizeLinear", inputs: ["f"], outputs: ["fq", "fs", "fz"]),
                  Node(name: "matmul", opType: "MatMulInteger", inputs: ["fq", "m", "fz", "mz"], outputs: ["mi"]),
                  Node(name: "tofloat2", opType: "Cast", inputs: ["mi"], outputs: ["mf"], attributes: ["to": .int(1)]),
                  Node(name: "rescale2", opType: "Mul", inputs: ["mf", "fs"], outputs: ["y"])]
        let g = Graph(name: "dq", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [1, 3, 7, 6]))],
                      outputs: [ValueInfo(name: "y", type: .unknown)], nodes: nodes, initializers: initializers)
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
    }

    /// The integer layers become float ones with the same results (their sums stay below
    /// 2^24, where float arithmetic is exact); a runtime bias is added in float, and a
    /// constant one ends as the Conv's own bias.
    func testIntegerConvAndMatMulComputeInFloat() throws {
        let passes: [any Pass] = [FoldConstants(), LowerIntegerLinear(), FoldBatchNormAndScales(), EliminateDeadCode()]
        for (signed, bias) in [(false, Bias.runtime), (true, .runtime), (false, .none), (true, .constant)] {
            let m = dynamicallyQuantized(signedWeights: signed, bias: bias)
            let (_, context) = try PassTesting.optimized(m, passes)
            let ops = m.graph.nodes.map(\.opType)
            XCTAssertFalse(ops.contains("ConvInteger") || ops.contains("MatMulInteger"), "\(ops)")
            XCTAssertEqual(context.statistics["lower-integer-linear"]?["ConvInteger computed in float"], 1)
            // With a bias the Conv's float result is not cast to int32: a runtime one is added in
            // float, a constant one is the Conv's third input.
            let conv = try XCTUnwrap(m.graph.nodes.first { $0.opType == "Conv" })
            let reader = m.graph.nodes.first { $0.inputs.contains(conv.outputs[0]) }?.opType
            XCTAssertEqual(reader, [.none: "Cast", .runtime: "Add", .constant: "Mul"][bias], "\(bias): \(ops)")
            XCTAssertEqual(conv.inputs.count, bias == .constant ? 3 : 2, "\(bias): \(ops)")
            try PassTesting.assertPreservesOutputs({ self.dynamicallyQuantized(signedWeights: signed, bias: bias) }, passes, rtol: 1e-6)
        }
    }

    /// Weights that are not constant are left alone (the MatMul's are constant: lowered).
    func testIntegerLayersThatDoNotFitStay() throws {
        let m = dynamicallyQuantized()
        m.graph.removeInitializer("w")
        m.graph.inputs.append(ValueInfo(name: "w", type: TensorType(.uint8, shape: [6, 3, 3, 3])))
        _ = try PassTesting.optimized(m, [LowerIntegerLinear()])
        XCTAssertTrue(m.graph.nodes.contains { $0.opType == "ConvInteger" })
        XCTAssertFalse(m.graph.nodes.contains { $0.opType == "MatMulInteger" })
    }

    /// DynamicQuantizeLinear's Swift kernel against the reference: wide ranges, all
    /// positive, all zero (scale 0), NaN and infinities, sizes split between threads.
    func testDynamicQuantizeLinearKernelMatchesTheReference() throws {
        var rng = SeededGenerator(seed: 3)
        for trial in 0..<6 {
            let count = [17, 40_000, 100_003, 64, 5000, 70_000][trial]
            var values = (0..<count).map { _ in Float.random(in: (trial == 1 ? 0.5 : -3)...7, using: &rng) }
            if trial == 2 { values = values.map { $0 * 1e5 } }
            if trial == 3 { values = Array(repeating: 0, count: count) }
            if trial == 4 { values[7] = .nan; values[9] = .infinity }
            if trial == 5 { values[11] = -.infinity }
            let g = Graph(name: "dql", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [count]))],
                          outputs: ["y", "s", "z"].map { ValueInfo(name: $0, type: .unknown) },
                          nodes: [Node(name: "test", opType: "DynamicQuantizeLinear", inputs: ["x"], outputs: ["y", "s", "z"])])
            let m = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
            let x = try Tensor(floats: values, shape: [count])
            let expected = try ReferenceExecutor(model: m).run(["x": x])
            let built = try TestSupport.unoptimized(m, name: "dql")
            XCTAssertEqual(built.compiled.decisions["test"]?.kernel, .dynamicQuantize)
            let actual = try ExecutionContext(engine: try Engine(file: built.file, name: "dql")).run(["x": x])
            for (e, a) in zip(expected, actual) {
                XCTAssertEqual(a.value.shape, e.value.shape, "trial \(trial) \(e.name)")
                if e.value.dataType == .float {
                    XCTAssertEqual(a.value.floats.map(\.bitPattern), e.value.floats.map(\.bitPattern), "trial \(trial) \(e.name)")
                } else {
                    XCTAssertEqual(a.value.int64s, e.value.int64s, "trial \(trial) \(e.name)")
                }
            }
        }
    }
}
