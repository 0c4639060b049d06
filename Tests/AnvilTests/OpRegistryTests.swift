import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps
import XCTest

final class OpRegistryTests: XCTestCase {
    /// The op set of DESIGN.md: every op must evaluate and infer shapes.
    static let designOpSet = """
        Add Sub Mul Div Pow Sqrt Reciprocal Neg Abs Exp Log Erf Tanh Sigmoid Relu LeakyRelu PRelu Elu Selu Celu HardSigmoid HardSwish
        Softplus Softsign Mish Gelu Clip Min Max Sum Mean Floor Ceil Round Sign Sin Cos Mod IsNaN IsInf Where Equal Less LessOrEqual
        Greater GreaterOrEqual Not And Or Xor Cast CastLike Conv ConvTranspose MatMul Gemm Einsum BatchNormalization
        InstanceNormalization LayerNormalization GroupNormalization RMSNormalization LRN MaxPool AveragePool GlobalAveragePool
        GlobalMaxPool Softmax LogSoftmax Dropout Flatten Attention ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1
        ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax ArgMin CumSum TopK Reshape Transpose Squeeze Unsqueeze Concat
        Split Slice Gather GatherElements GatherND ScatterElements ScatterND Expand Tile Pad Shape Size ConstantOfShape Constant
        Range Identity DepthToSpace SpaceToDepth Resize Upsample Trilu OneHot NonZero NonMaxSuppression If Loop Scan LSTM GRU RNN
        QuantizeLinear DequantizeLinear DynamicQuantizeLinear QLinearConv QLinearMatMul MatMulInteger ConvInteger
        """.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)

    func testEveryOpOfTheDesignSetIsRegisteredWithInference() {
        XCTAssertEqual(Self.designOpSet.count, 128)
        // Control flow and Constant are inferred by the driver itself.
        let inferredByDriver: Set = ["If", "Loop", "Scan", "Constant"]
        for op in Self.designOpSet {
            let def = OpRegistry.lookup(domain: "", opType: op, opset: 23)
            XCTAssertNotNil(def, "\(op) is not registered")
            if !inferredByDriver.contains(op) { XCTAssertNotNil(def?.infer, "\(op) has no inference rule") }
        }
    }

    func testOpsetVersionsGateDefinitions() {
        XCTAssertNil(OpRegistry.lookup(domain: "", opType: "LayerNormalization", opset: 16), "LayerNormalization exists from opset 17")
        XCTAssertNotNil(OpRegistry.lookup(domain: "", opType: "LayerNormalization", opset: 17))
        XCTAssertNil(OpRegistry.lookup(domain: "com.example", opType: "Relu", opset: 1), "ops are keyed by domain")
        XCTAssertNil(OpRegistry.lookup(domain: "", opType: "NoSuchOp", opset: 20))
    }

    /// Opset differences: Squeeze takes axes as an attribute before 13 and as an input from 13.
    func testSqueezeAxesMovedFromAttributeToInput() throws {
        let x = try Tensor(floats: [1, 2, 3], shape: [1, 3, 1])
        let old = Node(name: "sq", opType: "Squeeze", inputs: ["x"], outputs: ["y"], attributes: ["axes": .ints([0])])
        let def = try XCTUnwrap(OpRegistry.lookup(domain: "", opType: "Squeeze", opset: 11))
        let y11 = try def.evaluate(EvalContext(node: old, opset: 11, inputs: [x], runSubgraph: { _, _ in [] }))
        XCTAssertEqual(y11[0].shape, [3, 1])
        let new = Node(name: "sq", opType: "Squeeze", inputs: ["x", "axes"], outputs: ["y"])
        let y13 = try def.evaluate(EvalContext(node: new, opset: 13, inputs: [x, try Tensor(int64s: [-1], shape: [1])], runSubgraph: { _, _ in [] }))
        XCTAssertEqual(y13[0].shape, [1, 3])
    }

    func testWrongAttributeKindsNameTheNodeAndAttribute() throws {
        let node = Node(name: "conv7", opType: "Conv", inputs: ["x", "w"], outputs: ["y"], attributes: ["group": .string("two")])
        let def = try XCTUnwrap(OpRegistry.lookup(domain: "", opType: "Conv", opset: 17))
        let x = try Tensor.zeros(.float, shape: [1, 2, 4, 4]), w = try Tensor.zeros(.float, shape: [2, 1, 3, 3])
        XCTAssertThrowsError(try def.evaluate(EvalContext(node: node, opset: 17, inputs: [x, w], runSubgraph: { _, _ in [] }))) { error in
            XCTAssertEqual("\(error)", "node 'conv7' (Conv): attribute 'group' must be an int, found string")
        }
    }
}
