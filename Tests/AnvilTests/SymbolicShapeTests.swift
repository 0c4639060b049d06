import AnvilCore
import AnvilEngine
import AnvilIR
import AnvilOps
import AnvilPasses
import XCTest

/// Shape inference and the shape passes on dynamic exports: the sizes exporters compute
/// with Shape → Gather → Slice / Range / Equal / Where stay symbolic, so a dynamic graph
/// is optimized as a static one is (the end-to-end cases are in CommandLineTests and
/// ReportAgreementTests on fixtures/transformer_dynamic).
final class SymbolicShapeTests: XCTestCase {
    /// x: float[batch, sequence, 8]; `n` = sequence (Gather 1 of Shape(x)) as a 1-element vector.
    func model(_ build: (inout GraphBuilder, _ n: String) -> String) -> Model {
        var b = GraphBuilder()
        let shape = b.op("Shape", ["x"])
        b.initializers.append(("one", try! Tensor(int64s: [1], shape: [1])))
        let n = b.op("Gather", [shape, "one"], ["axis": .int(0)])
        let y = build(&b, n)
        let m = b.model(input: [1, 1, 8], output: y)
        m.graph.inputs[0].type = TensorType(.float, [.symbol("batch"), .symbol("sequence"), .known(8)])
        return m
    }

    func inferred(_ m: Model) throws -> TensorType? {
        var inference = ShapeInference(model: m)
        return try inference.run()["y"]?.type
    }

    func int64(_ b: inout GraphBuilder, _ name: String, _ values: [Int64], _ shape: [Int]) -> String {
        b.initializers.append((name, try! Tensor(int64s: values, shape: shape)))
        return name
    }

    func testSliceToAComputedLengthKeepsTheSymbol() throws {
        let m = model { b, n in
            let table = int64(&b, "positions", Array(0..<512), [1, 512])
            return b.op("Slice", [table, int64(&b, "zero", [0], [1]), n, int64(&b, "axis", [1], [1])])
        }
        XCTAssertEqual(try inferred(m), TensorType(.int64, [.known(1), .symbol("sequence")]))
    }

    func testRangeOfAComputedLengthKeepsTheSymbol() throws {
        let m = model { b, n in
            let scalar = b.op("Squeeze", [n, int64(&b, "axes", [0], [1])])
            return b.op("Range", [int64(&b, "start", [0], []), scalar, int64(&b, "delta", [1], [])])
        }
        XCTAssertEqual(try inferred(m), TensorType(.int64, [.symbol("sequence")]))
    }

    /// torch's expand(-1, …): Where(Equal(shape, -1), 1, shape) is decided, the Expand
    /// target stays symbolic, and the Expand to the input's own shape goes away.
    func testExpandWithMinusOnesIsResolved() throws {
        let build: () -> Model = {
            self.model { b, n in
                let batch = b.op("Gather", [b.op("Shape", ["x"]), self.int64(&b, "zeroIndex", [0], [1])], ["axis": .int(0)])
                let target = b.op("Concat", [batch, n, self.int64(&b, "eight", [8], [1])], ["axis": .int(0)])
                let minusOnes = self.int64(&b, "minus", [-1, -1, -1], [3])
                let isMinus = b.op("Equal", [target, minusOnes])
                let resolved = b.op("Where", [isMinus, self.int64(&b, "ones", [1, 1, 1], [3]), target])
                return b.op("Relu", [b.op("Expand", ["x", resolved])])
            }
        }
        XCTAssertEqual(try inferred(build()), TensorType(.float, [.symbol("batch"), .symbol("sequence"), .known(8)]))
        let m = build()
        try PipelineRunner().run(m)
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Relu"], "the Expand is a no-op once its target is known")
    }

    /// A Reshape whose target is computed gets a constant one (0 copies, -1 infers), and
    /// the Shape computation feeding it is removed.
    func testComputedReshapeTargetsBecomeConstant() throws {
        let build: () -> Model = {
            self.model { b, n in
                let batch = b.op("Gather", [b.op("Shape", ["x"]), self.int64(&b, "zeroIndex", [0], [1])], ["axis": .int(0)])
                let target = b.op("Concat", [batch, n, self.int64(&b, "split", [2, 4], [2])], ["axis": .int(0)])
                return b.op("Relu", [b.op("Reshape", ["x", target])])
            }
        }
        let m = build()
        try PipelineRunner().run(m)
        XCTAssertEqual(m.graph.nodes.map(\.opType), ["Reshape", "Relu"])
        XCTAssertEqual(m.graph.initializers[m.graph.nodes[0].inputs[1]]?.int64s, [0, 0, 2, 4])
        var rng = SeededGenerator(seed: 3)
        for shape in [[2, 5, 8], [1, 1, 8]] {
            let x = try Tensor(floats: (0..<shape.reduce(1, *)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: shape)
            try PassTesting.assertPreservesOutputs(build, Pipelines.standard, inputs: ["x": x])
        }
    }

    /// GPT-2's dynamo export computes the mask length as numel(mask) / batch and expands the
    /// mask to [batch, 1, sequence, length]: the length, a Reshape's -1 that cannot be named
    /// from the input, and a shape value squeezed or reshaped all stay symbols, so the
    /// Expand's result keeps its rank and the attention after it is recognized.
    func testSizesComputedFromSizesStaySymbols() throws {
        let m = model { b, n in
            let count = b.op("Mul", [b.op("Squeeze", [n]), b.op("Squeeze", [b.op("Gather", [b.op("Shape", ["x"]), self.int64(&b, "zeroIndex", [0], [1])], ["axis": .int(0)])])])
            let length = b.op("Div", [count, self.int64(&b, "two", [2], [])])
            let unknown = b.op("Reshape", ["x", self.int64(&b, "flat", [2, -1], [2])])
            let target = b.op("Concat", [b.op("Reshape", [length, self.int64(&b, "asVector", [1], [1])]),
                                         b.op("Gather", [b.op("Shape", [unknown]), self.int64(&b, "oneIndex", [1], [1])], ["axis": .int(0)])], ["axis": .int(0)])
            return b.op("Expand", [self.int64(&b, "scalarOne", [1], [1, 1]), target])
        }
        var inference = ShapeInference(model: m)
        let facts = try inference.run()
        let y = try XCTUnwrap(facts["y"]?.type.dims)
        XCTAssertEqual(y.count, 2)
        XCTAssertTrue(y.allSatisfy { if case .symbol = $0 { true } else { false } }, "\(y)")
        XCTAssertNotEqual(y[0], y[1])
        // A difference of sizes can be negative: it gets no symbol.
        let difference = model { b, n in b.op("Sub", [b.op("Squeeze", [n]), self.int64(&b, "ten", [10], [])]) }
        var differenceInference = ShapeInference(model: difference)
        XCTAssertEqual(try differenceInference.run()["y"]?.dims, [.unknown])
    }

    /// wav2vec2's dynamic export: a 1-D convolution over a symbolic length, a "same" one
    /// that keeps it, a slice dropping its last step, heads split by Reshape to [B, -1, H, D],
    /// and a LayerNorm written out: every size stays named, so the LayerNorm is recognized.
    func testConvolutionsSlicesAndHeadSplitsKeepSymbolicLengths() throws {
        let build = { () -> Model in
            var b = GraphBuilder()
            let strided = b.op("Conv", ["x", b.const((0..<(4 * 2 * 3)).map { Float($0 % 7) / 7 - 0.4 }, [4, 2, 3])], ["strides": .ints([2])])
            let same = b.op("Conv", [strided, b.const((0..<(4 * 4 * 3)).map { Float($0 % 5) / 5 - 0.3 }, [4, 4, 3])], ["pads": .ints([1, 1])])
            let padded = b.op("Conv", [same, b.const((0..<(4 * 4 * 2)).map { Float($0 % 3) / 3 - 0.2 }, [4, 4, 2])], ["pads": .ints([1, 1])])
            let sliced = b.op("Slice", [padded, b.ints([0]), b.ints([-1]), b.ints([2])])
            let sum = b.op("Transpose", [b.op("Add", [same, sliced])], ["perm": .ints([0, 2, 1])])
            let heads = b.op("Reshape", [sum, b.ints([0, -1, 2, 2])])
            let merged = b.op("Reshape", [heads, b.ints([0, -1, 4])])
            let mean = b.op("ReduceMean", [merged], ["axes": .ints([-1])])
            let centred = b.op("Sub", [merged, mean])
            let variance = b.op("ReduceMean", [b.op("Pow", [centred, b.const([2])])], ["axes": .ints([-1])])
            let y = b.op("Div", [centred, b.op("Sqrt", [b.op("Add", [variance, b.const([1e-5])])])])
            let m = b.model(input: [1, 2, 9], output: y, opset: 14)
            m.graph.inputs[0].type = TensorType(.float, [.symbol("batch"), .known(2), .symbol("samples")])
            return m
        }
        var inference = ShapeInference(model: build())
        let facts = try inference.run()
        let stridedLength = try XCTUnwrap(facts["v2"]?.type.dims?.last)
        guard case .symbol(let name) = stridedLength else { return XCTFail("strided length \(stridedLength)") }
        XCTAssertNotEqual(name, "samples")
        XCTAssertEqual(facts["v4"]?.type.dims?.last, stridedLength, "a stride-1 'same' convolution keeps the length")
        XCTAssertEqual(facts["y"]?.type.dims?.count, 3)
        XCTAssertEqual(facts["y"]?.type.dims?[1], stridedLength, "slice, broadcast and head reshapes keep one symbol")
        let m = build()
        _ = try PassTesting.optimized(m, Pipelines.standard)
        XCTAssertTrue(m.graph.nodes.contains { $0.opType == "LayerNormalization" }, "\(m.graph.nodes.map(\.opType))")
        var rng = SeededGenerator(seed: 5)
        let x = try Tensor(floats: (0..<(2 * 2 * 11)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [2, 2, 11])
        try PassTesting.assertPreservesOutputs(build, Pipelines.standard, inputs: ["x": x], rtol: 1e-4)
    }

    /// x − x[:, 0:1] on a symbolic axis: the slice may be 1 long, so it gets no symbol a
    /// broadcast could merge with the axis's (that made it look like a no-op, and x − x = 0).
    func testShortSlicesAreNotMergedWithTheirAxis() throws {
        let build = { () -> Model in
            self.model { b, _ in
                let first = b.op("Slice", ["x", self.int64(&b, "s0", [0], [1]), self.int64(&b, "e1", [1], [1]), self.int64(&b, "a1", [1], [1])])
                return b.op("Sub", ["x", first])
            }
        }
        let m = build()
        _ = try PassTesting.optimized(m, Pipelines.standard)
        XCTAssertTrue(m.graph.nodes.contains { $0.opType == "Slice" }, "\(m.graph.nodes.map(\.opType))")
        var rng = SeededGenerator(seed: 9)
        let x = try Tensor(floats: (0..<(2 * 3 * 8)).map { _ in Float.random(in: -1...1, using: &rng) }, shape: [2, 3, 8])
        try PassTesting.assertPreservesOutputs(build, Pipelines.standard, inputs: ["x": x])
    }

    /// Symbols a previous run made up are not adopted by a value this run cannot name (the
    /// next run may give the same name, "node:N", to another size).
    func testMadeUpSymbolsOfAnEarlierRunAreForgotten() throws {
        let g = Graph(name: "g", inputs: [ValueInfo(name: "x", type: TensorType(.float, shape: [4])),
                                          ValueInfo(name: "s", type: TensorType(.int64, shape: [2]))],
                      outputs: [ValueInfo(name: "y", type: .unknown)],
                      nodes: [Node(name: "", opType: "Reshape", inputs: ["x", "s"], outputs: ["r"]),
                              Node(name: "", opType: "Relu", inputs: ["r"], outputs: ["y"])])
        let m = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        m.graph.valueTypes["r"] = TensorType(.float, [.symbol(":3"), .symbol(":4")])
        m.graph.outputs[0].type = TensorType(.float, [.symbol(":3"), .known(2)])
        var inference = ShapeInference(model: m)
        let facts = try inference.run()
        XCTAssertEqual(facts["r"]?.type, TensorType(.float, [.unknown, .unknown]))
        XCTAssertEqual(facts["y"]?.type, TensorType(.float, [.unknown, .known(2)]), "a model's own dims stay")
    }

    /// Exporters name each input's dynamic axes apart (input_ids_d1, token_type_ids_d1);
    /// a broadcast of two of them says they are one size, and every type then says so.
    func testSymbolsABroadcastEquatesAreUnified() throws {
        let g = Graph(name: "g", inputs: [ValueInfo(name: "a", type: TensorType(.float, [.symbol("a_d0"), .known(4)])),
                                          ValueInfo(name: "b", type: TensorType(.float, [.symbol("b_d0"), .known(4)]))],
                      outputs: [ValueInfo(name: "y", type: .unknown)],
                      nodes: [Node(name: "relu", opType: "Relu", inputs: ["b"], outputs: ["r"]),
                              Node(name: "add", opType: "Add", inputs: ["a", "r"], outputs: ["y"])])
        let m = Model(graph: g, opsets: [OpsetImport(domain: "", version: 17)])
        var inference = ShapeInference(model: m)
        let facts = try inference.run()
        XCTAssertEqual(facts["y"]?.type, TensorType(.float, [.symbol("a_d0"), .known(4)]))
        XCTAssertEqual(facts["r"]?.type, TensorType(.float, [.symbol("a_d0"), .known(4)]), "the Relu's output, inferred before the Add, is renamed too")
        XCTAssertEqual(m.graph.valueTypes["r"], TensorType(.float, [.symbol("a_d0"), .known(4)]))
    }

    /// Shapes an engine is compiled and benchmarked for without shape arguments: a batch
    /// (leading some input) is 1 wherever it appears, other dynamic sizes 64.
    func testSampleShapesAreConsistentAcrossInputs() {
        let samples = ShapeProfile.samples([("input", [.symbol("batch"), .symbol("samples")]),
                                            ("state", [.known(2), .symbol("batch"), .known(128)]),
                                            ("image", [.unknown, .known(3), .symbol("h"), .unknown])])
        XCTAssertEqual(samples["input"], [1, 64])
        XCTAssertEqual(samples["state"], [2, 1, 128])
        XCTAssertEqual(samples["image"], [1, 3, 64, 64])
    }
}
