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
        var initializers = [(weights, try Tensor(floats: floats, shape: w.shape))]
        var removed = [node]
        // The usual tail, Add(int32 bias) → Cast(float), stays in float: a constant bias per
        // output channel becomes the Conv's own (or an Add after the MatMul); a bias computed
        // at run time (quantized with the input's scale) is cast and added in float. The
        // casts of the whole result go.
        var output = node.outputs[0], convBias: String?, floatBias: (name: String, first: Bool, add: Node, cast: Node)?
        if let add = ctx.uses.soleConsumer(node.outputs[0]), add.opType == "Add", add.domain.isEmpty, add.inputs.count == 2,
           add.inputs[0] != add.inputs[1], ctx.type(add.inputs[add.inputs[0] == node.outputs[0] ? 1 : 0]).elementType == .int32,
           let cast = ctx.uses.soleConsumer(add.outputs[0]), cast.opType == "Cast", cast.domain.isEmpty,
           (try? AttributeReader(node: cast).int("to")) == Int(DataType.float.rawValue) {
            let biasFirst = add.inputs[1] == node.outputs[0], biasName = add.inputs[biasFirst ? 0 : 1]
            let channels = ctx.constant(biasName).flatMap { isConv ? perChannel($0, channels: axis, rank: ctx.type(node.outputs[0]).rank) : nil }
            if let channels {
                let name = graph.freshName("\(biasName)_float")
                initializers.append((name, try Tensor(floats: channels.map { Float($0) }, shape: [axis])))
                convBias = name
                removed += [add, cast]
            } else {
                floatBias = (biasName, biasFirst, add, cast)
            }
            output = cast.outputs[0]
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
        let inFloat = output != node.outputs[0]
        let product = isConv ? add("Conv", [x, weights] + (convBias.map { [$0] } ?? []), node.attributes, output: inFloat && floatBias == nil ? output : nil)
                             : add("MatMul", [x, weights], output: inFloat && floatBias == nil ? output : nil)
        if !inFloat { _ = add("Cast", [product], ["to": .int(Int64(DataType.int32.rawValue))], output: output) }
        var patch = Patch(statistic: "\(node.opType) computed in float", remove: removed, add: nodes, initializers: initializers)
        if let floatBias {
            // The bias may be computed after the layer: the Add and Cast become, where they
            // stand, the bias's cast to float and the float addition.
            let bias = graph.freshName("\(floatBias.name)_float")
            patch.substitute = [
                (floatBias.add, Node(name: floatBias.add.name, opType: "Cast", inputs: [floatBias.name], outputs: [bias], attributes: ["to": float],
                                     fusedFrom: floatBias.add.fusedFrom)),
                (floatBias.cast, Node(name: floatBias.cast.name, opType: "Add", inputs: floatBias.first ? [bias, product] : [product, bias],
                                      outputs: [output], fusedFrom: floatBias.cast.fusedFrom)),
            ]
        }
        return patch
    }

    /// A Conv bias's values, one per output channel, from a constant broadcast against
    /// the output ([C], or [1, C, 1…] of the output's rank); nil for other shapes.
    static func perChannel(_ t: Tensor, channels: Int, rank: Int?) -> [Int64]? {
        guard t.count == channels, let rank else { return nil }
        let expected = [1, channels] + Array(repeating: 1, count: max(rank - 2, 0))
        guard t.shape == expected || (rank == 3 && t.shape == [channels, 1]) || (rank == 4 && t.shape == [channels, 1, 1]) else { return nil }
        return t.int64s
    }
}
