import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// Folds an inference-mode BatchNormalization, or a Mul / Div / Add / Sub by a
/// constant that varies only along the output channels, into the preceding Conv,
/// ConvTranspose, Gemm or 2-D MatMul: y = layer(x) · s + t becomes one layer
/// with scaled weights and shifted bias. The layer's output must be read only by
/// the folded node. MatMul has no bias, so a shift stays as an Add (which
/// fuse-bias-activation then absorbs).
public struct FoldBatchNormAndScales: Pass {
    public let name = "fold-batchnorm-and-scales"
    public let summary = "fold BatchNormalization and per-channel constant scales and shifts into Conv/ConvTranspose/Gemm/MatMul weights"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule]).run(context) }

    static let rule = RewriteRule("scale-shift into linear", roots: ["BatchNormalization", "Mul", "Div", "Add", "Sub"]) { node, ctx in
        guard node.domain.isEmpty else { return nil }
        // Find the layer feeding the root and the root's per-channel scale s and shift t.
        for side in node.opType == "BatchNormalization" ? [0] : (node.opType == "Mul" || node.opType == "Add" ? [0, 1] : [0]) {
            guard let layer = ctx.producer(node.inputs[side]), layer.domain.isEmpty,
                  ["Conv", "ConvTranspose", "Gemm", "MatMul"].contains(layer.opType),
                  ctx.uses.soleConsumer(layer.outputs[0]) === node,
                  let outType = ctx.type(layer.outputs[0]).dims, let channels = channelCount(layer, ctx),
                  let axis = channelAxis(layer, rank: outType.count), let w = ctx.constant(layer.inputs[1]), w.dataType.isFloatingPoint
            else { continue }
            guard let (scale, shift) = try scaleShift(node, side: side, channels: channels, axis: axis, rank: outType.count, ctx) else { return nil }
            // MatMul has no bias: folding a pure shift would rebuild the same MatMul + Add.
            if layer.opType == "MatMul", scale.allSatisfy({ $0 == 1 }) { return nil }
            return try fold(layer, into: node, scale: scale, shift: shift, weight: w, channels: channels, ctx)
        }
        return nil
    }

    /// Output channels of the layer (from its weights).
    static func channelCount(_ layer: Node, _ ctx: RewriteContext) -> Int? {
        guard let w = ctx.constant(layer.inputs[1]) else { return nil }
        switch layer.opType {
        case "Conv": return w.shape.first
        case "ConvTranspose":
            let group = (try? AttributeReader(node: layer).int("group", 1)) ?? 1
            return w.rank > 1 ? w.shape[1] * group : nil
        case "Gemm": return (try? AttributeReader(node: layer).int("transB", 0)) == 1 ? w.shape.first : w.shape.last
        default: return w.rank == 2 ? w.shape[1] : nil
        }
    }

    /// The axis of the layer's output that indexes its channels.
    static func channelAxis(_ layer: Node, rank: Int) -> Int? {
        switch layer.opType {
        case "Conv", "ConvTranspose": rank >= 3 ? 1 : nil
        default: rank >= 2 ? rank - 1 : nil
        }
    }

    /// The root's effect as per-channel (scale, shift); nil when it is not per-channel.
    static func scaleShift(_ node: Node, side: Int, channels: Int, axis: Int, rank: Int, _ ctx: RewriteContext) throws -> ([Double], [Double])? {
        if node.opType == "BatchNormalization" {
            guard axis == 1, (try? AttributeReader(node: node).int("training_mode", 0)) ?? 0 == 0, node.outputs.filter({ !$0.isEmpty }).count == 1,
                  let gamma = ctx.constant(node.inputs[1]), let beta = ctx.constant(node.inputs[2]),
                  let mean = ctx.constant(node.inputs[3]), let variance = ctx.constant(node.inputs[4]),
                  [gamma, beta, mean, variance].allSatisfy({ $0.count == channels }) else { return nil }
            let eps = Double((try? AttributeReader(node: node).float("epsilon", 1e-5)) ?? 1e-5)
            let g = gamma.doubles, b = beta.doubles, m = mean.doubles, v = variance.doubles
            let s = (0..<channels).map { g[$0] / (v[$0] + eps).squareRoot() }
            return (s, (0..<channels).map { b[$0] - m[$0] * s[$0] })
        }
        // A per-channel constant of no higher rank never broadcasts the layer's output
        // larger, so this holds for symbolic and unknown dimensions alike.
        guard let c = ctx.constant(node.inputs[1 - side]), c.dataType.isFloatingPoint, ctx.type(node.inputs[side]).rank == rank,
              let perChannel = perChannelValues(c, channels: channels, axis: axis, rank: rank) else { return nil }
        let ones = [Double](repeating: 1, count: channels), zeros = [Double](repeating: 0, count: channels)
        switch node.opType {
        case "Mul": return (perChannel, zeros)
        case "Div": return perChannel.contains(0) ? nil : (perChannel.map { 1 / $0 }, zeros)
        case "Add": return (ones, perChannel)
        default: return side == 0 ? (ones, perChannel.map { -$0 }) : nil
        }
    }

    /// A constant that broadcasts along the channel axis only, expanded to one value per channel.
    static func perChannelValues(_ c: Tensor, channels: Int, axis: Int, rank: Int) -> [Double]? {
        guard c.rank <= rank else { return nil }
        if c.count == 1 { return Array(repeating: c.double(at: 0), count: channels) }
        let padded = Array(repeating: 1, count: rank - c.rank) + c.shape
        for (i, d) in padded.enumerated() where d != 1 && i != axis { return nil }
        guard padded[axis] == channels else { return nil }
        return c.doubles
    }

    static func fold(_ layer: Node, into root: Node, scale s: [Double], shift t: [Double], weight w: Tensor, channels: Int, _ ctx: RewriteContext) throws -> Patch? {
        let graph = ctx.graph
        var weights = w.doubles
        let a = AttributeReader(node: layer)
        switch layer.opType {
        case "Conv":
            let per = weights.count / channels
            for i in weights.indices { weights[i] *= s[i / per] }
        case "ConvTranspose":
            let group = try a.int("group", 1)
            let cin = w.shape[0], coutG = w.shape[1], inner = w.shape[2...].reduce(1, *)
            for i in weights.indices {
                let c = i / (coutG * inner), j = (i / inner) % coutG
                weights[i] *= s[(c / (cin / group)) * coutG + j]
            }
        case "Gemm":
            let transB = try a.int("transB", 0) == 1
            let cols = w.shape[1]
            for i in weights.indices { weights[i] *= s[transB ? i / cols : i % cols] }
        default:
            for i in weights.indices { weights[i] *= s[i % channels] }
        }
        let newWeight = graph.freshName("\(layer.inputs[1])_folded")
        var initializers = [(newWeight, try Tensor(w.dataType, shape: w.shape, doubles: weights))]
        var inputs = layer.inputs
        inputs[1] = newWeight
        var attributes = layer.attributes
        let needsBias = t.contains { $0 != 0 }
        var nodes: [Node] = []
        let fusedFrom = layer.fusedFrom + root.fusedFrom
        if layer.opType == "MatMul" {
            let product = needsBias ? graph.freshName("\(layer.outputs[0])_scaled") : root.outputs[0]
            nodes.append(Node(name: layer.name, opType: "MatMul", inputs: inputs, outputs: [product], fusedFrom: fusedFrom))
            if needsBias {
                let biasName = graph.freshName("\(root.name)_shift")
                initializers.append((biasName, try Tensor(w.dataType, shape: [channels], doubles: t)))
                nodes.append(Node(name: graph.freshNodeName("\(root.name)_add"), opType: "Add", inputs: [product, biasName], outputs: [root.outputs[0]], fusedFrom: [root.name]))
            }
        } else {
            // Existing bias: b·s + t (Gemm: β·C, brought to one value per channel).
            var bias = t
            let biasIndex = 2
            if inputs.count > biasIndex, !inputs[biasIndex].isEmpty {
                guard let old = ctx.constant(inputs[biasIndex]) else { return nil }
                if layer.opType == "Gemm" {
                    let beta = Double(try a.float("beta", 1))
                    guard let perChannel = perChannelValues(old, channels: channels, axis: 1, rank: 2) else { return nil }
                    bias = (0..<channels).map { perChannel[$0] * beta * s[$0] + t[$0] }
                    attributes["beta"] = .float(1)
                } else {
                    guard old.count == channels else { return nil }
                    let b = old.doubles
                    bias = (0..<channels).map { b[$0] * s[$0] + t[$0] }
                }
            } else if layer.opType == "Gemm" {
                attributes["beta"] = .float(1)
            }
            if needsBias || (inputs.count > biasIndex && !inputs[biasIndex].isEmpty) {
                let biasName = graph.freshName("\(layer.name)_bias_folded")
                initializers.append((biasName, try Tensor(w.dataType, shape: [channels], doubles: bias)))
                while inputs.count <= biasIndex { inputs.append("") }
                inputs[biasIndex] = biasName
            }
            nodes.append(Node(name: layer.name, opType: layer.opType, inputs: inputs, outputs: [root.outputs[0]], attributes: attributes, fusedFrom: fusedFrom))
        }
        return Patch(statistic: "\(root.opType) folded into \(layer.opType)", remove: [layer, root], add: nodes, initializers: initializers)
    }
}
