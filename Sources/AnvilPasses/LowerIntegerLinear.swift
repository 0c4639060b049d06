import AnvilCore
import AnvilIR
import AnvilKernels

/// Computes ConvInteger and MatMulInteger with constant 8-bit weights as float Conv and
/// MatMul, which run on oneDNN's kernels: the input becomes Cast(x) − zero point, the
/// weights (w − their zero point) a float constant, and the result is cast back to
/// int32. Dynamically quantized models (ONNX Runtime's quantize_dynamic) are made of
/// these, each between a DynamicQuantizeLinear and a float rescale.
///
/// Exactness: the products and their sums are integers, which float arithmetic holds
/// exactly while every partial sum stays below 2^24 in magnitude (8-bit inputs, up to
/// 258 terms of 255 × 255 in the worst case); beyond that, a result may differ from the
/// integer one by a few units of 2^-24 relative, far below the quantization error.
public struct LowerIntegerLinear: Pass {
    public let name = "lower-integer-linear"
    public let summary = "compute ConvInteger and MatMulInteger with constant 8-bit weights as float Conv and MatMul"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver(Self.rules).run(context) }

    static let rules = [
        RewriteRule("integer conv as float", roots: ["ConvInteger"]) { node, ctx in try lower(node, ctx, weightAxis: 0) },
        RewriteRule("integer matmul as float", roots: ["MatMulInteger"]) { node, ctx in try lower(node, ctx, weightAxis: 1) },
    ]

    /// The float form of one integer layer: Cast(x) [− Cast(x_zero_point)] → Conv or MatMul
    /// with float weights → Cast to int32. `weightAxis` is the weights' axis a per-channel
    /// zero point runs along (Conv: output channels; MatMul: columns of a 2-D B).
    static func lower(_ node: Node, _ ctx: RewriteContext, weightAxis: Int) throws -> Patch? {
        guard node.domain.isEmpty, node.inputs.count >= 2, node.outputs.count == 1, let w = ctx.constant(node.inputs[1]),
              w.dataType == .uint8 || w.dataType == .int8 else { return nil }
        let isConv = node.opType == "ConvInteger"
        guard isConv ? w.rank >= 3 : w.rank == 2 else { return nil }
        func present(_ i: Int) -> Bool { i < node.inputs.count && !node.inputs[i].isEmpty }
        // The weights' zero point: a constant scalar, or one per output channel (Conv) or column (MatMul).
        var weightZero = [Double](repeating: 0, count: w.shape[weightAxis])
        if present(3) {
            guard let z = ctx.constant(node.inputs[3]), z.dataType == w.dataType else { return nil }
            let values = z.doubles
            if values.count == 1 { weightZero = Array(repeating: values[0], count: weightZero.count) }
            else if values.count == weightZero.count && z.rank == 1 { weightZero = values }
            else { return nil }
        }
        // The input's zero point must be one value (a per-row one of MatMulInteger is not taken).
        if present(2) {
            let type = ctx.type(node.inputs[2])
            guard let count = type.concreteShape.map({ $0.reduce(1, *) }), count == 1 else { return nil }
        }
        let values = w.doubles
        let inner = w.shape[(weightAxis + 1)...].reduce(1, *), axis = w.shape[weightAxis]
        let floats = values.indices.map { Float(values[$0] - weightZero[($0 / inner) % axis]) }
        let graph = ctx.graph
        let weights = graph.freshName("\(node.inputs[1])_float")
        // The usual tail, Add(int32 bias) → Cast(float), stays in float: the Add and the Cast
        // become, where they stand, the bias's cast to float and a float addition, so the
        // casts of the whole result go. (A constant bias then folds: the cast by
        // fold-constants, the per-channel addition into the Conv's bias by
        // fold-batchnorm-and-scales.)
        var tail: (bias: String, first: Bool, add: Node, cast: Node)?
        if let add = ctx.uses.soleConsumer(node.outputs[0]), add.opType == "Add", add.domain.isEmpty, add.inputs.count == 2,
           add.inputs[0] != add.inputs[1], ctx.type(add.inputs[add.inputs[0] == node.outputs[0] ? 1 : 0]).elementType == .int32,
           let cast = ctx.uses.soleConsumer(add.outputs[0]), cast.opType == "Cast", cast.domain.isEmpty,
           (try? AttributeReader(node: cast).int("to")) == Int(DataType.float.rawValue) {
            let first = add.inputs[1] == node.outputs[0]
            tail = (add.inputs[first ? 0 : 1], first, add, cast)
        }
        var nodes: [Node] = []
        func add(_ op: String, _ inputs: [String], _ attributes: [String: Attribute] = [:], output: String? = nil) -> String {
            let out = output ?? graph.freshName("\(node.outputs[0])_\(op.lowercased())\(nodes.count)")
            nodes.append(Node(name: graph.freshNodeName("\(node.name)_\(op.lowercased())\(nodes.count)"), opType: op, inputs: inputs, outputs: [out],
                              attributes: attributes, fusedFrom: [node.name]))
            return out
        }
        let float = Attribute.int(Int64(DataType.float.rawValue))
        var x = add("Cast", [node.inputs[0]], ["to": float])
        if present(2) { x = add("Sub", [x, add("Cast", [node.inputs[2]], ["to": float])]) }
        let product = add(isConv ? "Conv" : "MatMul", [x, weights], isConv ? node.attributes : [:])
        if tail == nil { _ = add("Cast", [product], ["to": .int(Int64(DataType.int32.rawValue))], output: node.outputs[0]) }
        var patch = Patch(statistic: "\(node.opType) computed in float", remove: [node], add: nodes,
                          initializers: [(weights, try Tensor(floats: floats, shape: w.shape))])
        if let tail {
            let bias = graph.freshName("\(tail.bias)_float")
            patch.substitute = [
                (tail.add, Node(name: tail.add.name, opType: "Cast", inputs: [tail.bias], outputs: [bias], attributes: ["to": float],
                                fusedFrom: tail.add.fusedFrom)),
                (tail.cast, Node(name: tail.cast.name, opType: "Add", inputs: tail.first ? [bias, product] : [product, bias],
                                 outputs: tail.cast.outputs, fusedFrom: tail.cast.fusedFrom)),
            ]
        }
        return patch
    }
}
