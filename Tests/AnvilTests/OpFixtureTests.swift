import AnvilBuilder
import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilONNX
import AnvilOps
import AnvilRuntime
import XCTest

/// Ops whose semantics ONNX Runtime defines beyond the ONNX node tests (fixtures/ops,
/// made by tools/make-op-fixtures with ORT's outputs), through the reference executor
/// and through built engines; bad inputs are errors naming the node.
final class OpFixtureTests: XCTestCase {
    /// Runs every data set of fixture `name` through the reference executor and a built
    /// engine (twice: the first run observes the dynamic shapes, the second is planned).
    func checkFixture(_ name: String, atol: Double, rtol: Double, file: StaticString = #filePath, line: UInt = #line) throws -> EngineBuilder.Result {
        let folder = TestSupport.fixture("ops/\(name)")
        let model = try ONNXImporter.load(path: folder + "/model.onnx")
        let built = try EngineBuilder().build(model, name: name)
        let context = ExecutionContext(engine: built.engine)
        let sets = try TestDataSet.folders(under: folder)
        XCTAssertGreaterThanOrEqual(sets.count, 2, name, file: file, line: line)
        for set in sets {
            let data = try TestDataSet.load(set)
            var feeds: [String: Tensor] = [:]
            for (input, value) in zip(model.graph.inputs, data.inputs) { feeds[input.name] = value.tensor }
            let reference = try ReferenceExecutor(model: model).run(feeds)
            for run in 0..<3 {
                let actual = run == 0 ? reference : try context.run(feeds)
                if run == 2 { XCTAssertNotNil(context.lastPlan, "\(name) \(set): planned", file: file, line: line) }
                for ((outputName, a), e) in zip(actual, data.outputs) {
                    let c = Comparison.compare(actual: a, expected: e.tensor, atol: atol, rtol: rtol)
                    XCTAssertTrue(c.passed, "\(name) \(set) \(outputName) (\(run == 0 ? "reference" : "engine run \(run)")): \(c)", file: file, line: line)
                }
            }
        }
        return built
    }

    func testRoiAlignMatchesOnnxRuntime() throws {
        for name in ["roi_align_opset10", "roi_align_opset16", "roi_align_double"] {
            let built = try checkFixture(name, atol: 1e-6, rtol: 1e-5)
            let layers = built.graph.layers.filter { $0.opType == "RoiAlign" }
            XCTAssertFalse(layers.isEmpty)
            for layer in layers where name != "roi_align_double" {
                XCTAssertEqual(built.compiled.decisions[layer.name]?.kernel, .roiAlign, "\(name) \(layer.name)")
            }
        }
    }

    /// A RoiAlign node with `attributes` on X [2, 3, 5, 6], rois [R, columns] and batch
    /// indices [R'] as graph inputs.
    func roiAlignModel(rois: Int = 2, columns: Int = 4, indices: Int = 2, opset: Int = 16, _ attributes: [String: Attribute] = [:]) -> Model {
        let g = Graph(name: "roi", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [2, 3, 5, 6])),
                                            ValueInfo(name: "rois", type: TensorType(.float, shape: [rois, columns])),
                                            ValueInfo(name: "batch", type: TensorType(.int64, shape: [indices]))],
                      outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                      nodes: [Node(name: "pool_rois", opType: "RoiAlign", inputs: ["x", "rois", "batch"], outputs: ["y"], attributes: attributes)])
        return Model(graph: g, opsets: [OpsetImport(domain: "", version: opset)])
    }

    func assertNamesTheNode(_ body: () throws -> Any, _ expected: String, node: String = "pool_rois", file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains(node) && text.contains(expected), text, file: file, line: line)
        }
    }

    func testRoiAlignRejectsBadInputsNamingTheNode() throws {
        let x = try Tensor(floats: (0..<180).map { Float($0) / 10 }, shape: [2, 3, 5, 6])
        func rois(_ values: [Float]) throws -> Tensor { try Tensor(floats: values, shape: [values.count / 4, 4]) }
        let good = try rois([0, 0, 4, 3, 1, 1, 3, 3]), goodBatch = try Tensor(int64s: [0, 1], shape: [2])

        // Shapes and attributes: refused when the graph is built, and by the reference kernel.
        assertNamesTheNode({ try EngineBuilder().build(self.roiAlignModel(columns: 5), name: "roi") }, "rois must be [num_rois, 4]")
        assertNamesTheNode({ try EngineBuilder().build(self.roiAlignModel(indices: 3), name: "roi") }, "batch_indices")
        for bad: [String: Attribute] in [["output_height": .int(0)], ["output_width": .int(-2)], ["sampling_ratio": .int(-1)],
                                         ["mode": .string("median")], ["coordinate_transformation_mode": .string("align_corners")]] {
            assertNamesTheNode({ try EngineBuilder().build(self.roiAlignModel(bad), name: "roi") }, bad.keys.first!)
            assertNamesTheNode({ try ReferenceExecutor(model: self.roiAlignModel(bad)).run(["x": x, "rois": good, "batch": goodBatch]) }, bad.keys.first!)
        }
        assertNamesTheNode({ try ReferenceExecutor(model: self.roiAlignModel(columns: 3)).run(["x": x, "rois": try Tensor(floats: Array(repeating: 1, count: 6), shape: [2, 3]),
                                                                                    "batch": goodBatch]) }, "rois must be [num_rois, 4]")

        // An empty feature map cannot be sampled (bilinear corners would index before its start).
        let parameters = try RoiAlignParameters(AttributeReader(node: Node(name: "r", opType: "RoiAlign", inputs: [], outputs: [])), opset: 16)
        XCTAssertThrowsError(try parameters.check(x: [2, 3, 0, 6], rois: [2, 4], batchIndices: [2]))
        XCTAssertNoThrow(try parameters.check(x: [2, 3, 0, 6], rois: [0, 4], batchIndices: [0]))
        // A sampling grid above the bound is refused as the attribute is read (a fuzzed engine asked for billions of samples per bin).
        let dense = Node(name: "r", opType: "RoiAlign", inputs: [], outputs: [], attributes: ["sampling_ratio": .int(Int64(RoiAlignParameters.maximumGrid + 1))])
        XCTAssertThrowsError(try RoiAlignParameters(AttributeReader(node: dense), opset: 16))

        // Values only the run sees: the reference kernel and the engine's Swift kernel.
        let model = roiAlignModel()
        let built = try EngineBuilder().build(model, name: "roi")
        XCTAssertEqual(built.compiled.decisions["pool_rois"]?.kernel, .roiAlign)
        let context = ExecutionContext(engine: built.engine)
        let huge = RoiAlignParameters.maximumGrid * 4
        for (rois, batch, expected) in [(good, try Tensor(int64s: [0, 2], shape: [2]), "batch_indices[1] = 2 is outside [0, 1]"),
                                        (good, try Tensor(int64s: [-1, 0], shape: [2]), "batch_indices[0] = -1"),
                                        (try rois([0, 0, 4, 3, 1, .nan, 3, 3]), goodBatch, "roi 1"),
                                        (try rois([0, 0, .infinity, 3, 1, 1, 3, 3]), goodBatch, "not finite"),
                                        (try rois([0, 0, Float(huge), 3, 1, 1, 3, 3]), goodBatch, "samples per bin")] {
            assertNamesTheNode({ try ReferenceExecutor(model: model).run(["x": x, "rois": rois, "batch": batch]) }, expected)
            assertNamesTheNode({ try context.run(["x": x, "rois": rois, "batch": batch]) }, expected)
        }
        // The context still runs good inputs afterwards.
        let expected = try ReferenceExecutor(model: model).run(["x": x, "rois": good, "batch": goodBatch])[0].value
        XCTAssertEqual(try context.run(["x": x, "rois": good, "batch": goodBatch])[0].value, expected)
    }

    /// A graph the planner cannot take whole (an If, as in torchvision's Faster R-CNN,
    /// with a number of rois known only at run time) runs RoiAlign on the Swift kernel,
    /// with the same values and errors, whether the layer interpreter runs it or a
    /// partial plan does.
    func testRoiAlignOnTheLayerInterpreter() throws {
        let model = roiAlignModel(["mode": .string("max"), "output_height": .int(2), "output_width": .int(3), "sampling_ratio": .int(0)])
        model.graph.inputs[1].type = TensorType(.float, [.symbol("r"), .known(4)])
        model.graph.inputs[2].type = TensorType(.int64, [.symbol("r")])
        let boxes = TensorType(.float, [.symbol("r"), .known(4)])
        let thenBranch = Graph(name: "then", outputs: [ValueInfo(name: "t", type: boxes)], nodes: [Node(name: "neg", opType: "Neg", inputs: ["rois"], outputs: ["t"])])
        let elseBranch = Graph(name: "else", outputs: [ValueInfo(name: "e", type: boxes)], nodes: [Node(name: "same", opType: "Identity", inputs: ["rois"], outputs: ["e"])])
        model.graph.inputs.append(ValueInfo(name: "c", type: TensorType(.bool, shape: [])))
        model.graph.outputs.append(ValueInfo(name: "z", type: boxes))
        model.graph.nodes.append(Node(name: "if", opType: "If", inputs: ["c"], outputs: ["z"], attributes: ["then_branch": .graph(thenBranch), "else_branch": .graph(elseBranch)]))
        let built = try EngineBuilder().build(model, name: "roi")
        XCTAssertEqual(built.compiled.decisions["if"]?.kernel, .reference, "the If runs on the interpreter")
        XCTAssertEqual(built.compiled.decisions["pool_rois"]?.kernel, .roiAlign)
        XCTAssertEqual(built.compiled.implementations["pool_rois"], "swift")
        var rng = SeededGenerator(seed: 24)
        let x = try Tensor(floats: (0..<180).map { _ in Float.random(in: -2...2, using: &rng) }, shape: [2, 3, 5, 6])
        let rois = try Tensor(floats: [0, 0, 5, 4, 1.5, 0.5, 3, 3.5, -2, 1, 9, 7], shape: [3, 4])
        var feeds = ["x": x, "rois": rois, "batch": try Tensor(int64s: [1, 0, 1], shape: [3]), "c": try Tensor(bools: [true], shape: [])]
        let expected = try ReferenceExecutor(model: model).run(feeds)
        let context = ExecutionContext(engine: try Engine(file: built.file, name: "roi"))
        // The first run observes the shapes on the interpreter, the second runs RoiAlign on a partial plan.
        for _ in 0..<2 { XCTAssertEqual(try context.run(feeds).map(\.value), expected.map(\.value)) }
        XCTAssertEqual(context.lastPlan?.implementation(of: "pool_rois"), "swift")
        feeds["batch"] = try Tensor(int64s: [1, 0, 7], shape: [3])
        assertNamesTheNode({ try context.run(feeds) }, "batch_indices[2] = 7 is outside [0, 1]")
    }

    /// ONNX Runtime's DynamicQuantizeLSTM, activations quantized as ORT does: within float
    /// rounding of ORT's outputs (dequantizing the weights and running a float LSTM instead
    /// misses by about 1e-2 on these fixtures, 3e-2 on ddddocr's).
    func testDynamicQuantizeLSTMMatchesOnnxRuntime() throws {
        for name in ["dynamic_quantize_lstm_bidirectional", "dynamic_quantize_lstm_per_column", "dynamic_quantize_lstm_reverse"] {
            _ = try checkFixture(name, atol: 1e-5, rtol: 1e-4)
        }
    }

    func testDynamicQuantizeLSTMRejectsBadInputsNamingTheNode() throws {
        let (h, input, dirs) = (3, 2, 2)
        var rng = SeededGenerator(seed: 25)
        func int8s(_ shape: [Int]) throws -> Tensor { try Tensor(.int8, shape: shape, int64s: (0..<shape.reduce(1, *)).map { _ in Int64.random(in: -127...127, using: &rng) }) }
        func scales(_ shape: [Int]) throws -> Tensor { try Tensor(floats: Array(repeating: 0.02, count: shape.reduce(1, *)), shape: shape) }
        func zeros(_ type: DataType, _ shape: [Int]) throws -> Tensor { try Tensor.zeros(type, shape: shape) }
        let good: [String: Tensor] = ["W": try int8s([dirs, input, 4 * h]), "R": try int8s([dirs, h, 4 * h]),
                                      "W_scale": try scales([dirs]), "W_zero_point": try zeros(.int8, [dirs]),
                                      "R_scale": try scales([dirs, 4 * h]), "R_zero_point": try zeros(.int8, [dirs, 4 * h])]
        /// The node with `change`d inputs through the reference executor, or (`engine`) built and run.
        func run(_ change: [String: Tensor], attributes: [String: Attribute] = ["hidden_size": .int(Int64(h)), "direction": .string("bidirectional")],
                 engine: Bool = false) throws -> [Tensor] {
            let values = good.merging(change) { $1 }
            let names = ["x", "W", "R", "", "", "", "", "", "W_scale", "W_zero_point", "R_scale", "R_zero_point"]
            let g = Graph(name: "lstm", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [4, 1, input]))],
                          outputs: [ValueInfo(name: "y", type: TensorType(.float, nil))],
                          nodes: [Node(name: "lstm_quant", opType: "DynamicQuantizeLSTM", domain: microsoftDomain, inputs: names, outputs: ["y"], attributes: attributes)],
                          initializers: values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
            let model = Model(graph: g, opsets: [OpsetImport(domain: "", version: 12), OpsetImport(domain: microsoftDomain, version: 1)])
            let x = try Tensor(floats: (0..<(4 * input)).map { Float($0) / 4 - 1 }, shape: [4, 1, input])
            if engine { return try ExecutionContext(engine: EngineBuilder().build(model, name: "lstm").engine).run(["x": x]).map(\.value) }
            return try ReferenceExecutor(model: model).run(["x": x]).map(\.value)
        }
        XCTAssertEqual(try run([:], engine: true), try run([:]))
        let withoutHidden: [String: Attribute] = ["direction": .string("bidirectional")]
        let cases: [([String: Tensor], [String: Attribute]?, String)] = [
            (["W_scale": try scales([dirs, 4 * h + 1])], nil, "W_scale"),
            (["W_zero_point": try zeros(.int8, [1])], nil, "W_zero_point"),
            (["R_zero_point": try zeros(.uint8, [dirs, 4 * h])], nil, "R_zero_point"),
            (["R_scale": try scales([dirs, 4 * h, 1]), "R_zero_point": try zeros(.int8, [dirs, 4 * h, 1])], nil, "R_scale"),
            (["W": try int8s([dirs, 4 * h, input])], nil, "W [2, 12, 2] and R [2, 3, 12] must be [2, 2, 12]"),
            (["W": try Tensor(floats: Array(repeating: 0, count: dirs * input * 4 * h), shape: [dirs, input, 4 * h])], nil, "W must be int8 or uint8"),
            ([:], withoutHidden, "hidden_size"),
        ]
        for (change, attributes, expected) in cases {
            for engine in [false, true] {
                if let attributes {
                    assertNamesTheNode({ try run(change, attributes: attributes, engine: engine) }, expected, node: "lstm_quant")
                } else {
                    assertNamesTheNode({ try run(change, engine: engine) }, expected, node: "lstm_quant")
                }
            }
        }
    }
}
