import AnvilCore
import AnvilIR
import AnvilKernels
import AnvilOps

/// Exact pruning of low-contribution channels: an output channel of a Conv whose
/// weights and bias are all zero (for instance a BatchNorm scale of zero folded
/// in) is zero after any activation with f(0) = 0, so it contributes nothing to
/// the Convs that read it. The channel is removed from the producer and the
/// matching input channel from every consumer; the result is numerically
/// identical. Producers whose output is a graph output, that add a residual, or
/// that feed anything but ungrouped Convs are left alone.
public struct PruneZeroChannels: Pass {
    public let name = "prune-zero-channels"
    public let summary = "remove all-zero output channels of Convs and the matching input channels of their consumers"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule]).run(context) }

    static func isConv(_ n: Node) -> Bool {
        (n.domain.isEmpty && n.opType == "Conv") || (n.domain == anvilDomain && n.opType == "FusedConv")
    }

    static let rule = RewriteRule("zero channels", roots: ["Conv", "FusedConv"]) { node, ctx in
        guard isConv(node), let w = ctx.constant(node.inputs[1]), w.dataType.isFloatingPoint, w.rank >= 3,
              (try? AttributeReader(node: node).int("group", 1)) == 1,
              node.inputs.count < 4 || node.inputs[3].isEmpty, !ctx.uses.graphOutputs.contains(node.outputs[0]) else { return nil }
        if case .string(let name)? = node.attributes["activation"] {
            let a = AttributeReader(node: node)
            guard let activation = Activation(name: name, alpha: try? a.float("activation_alpha"), beta: try? a.float("activation_beta")),
                  activation.preservesZero else { return nil }
        }
        let cout = w.shape[0], per = w.count / cout
        let bias = node.inputs.count > 2 && !node.inputs[2].isEmpty ? ctx.constant(node.inputs[2])?.doubles : Array(repeating: 0.0, count: cout)
        guard let bias, bias.count == cout else { return nil }
        let weights = w.doubles
        let zero = (0..<cout).filter { c in bias[c] == 0 && !weights[(c * per)..<((c + 1) * per)].contains { $0 != 0 } }
        guard !zero.isEmpty, zero.count < cout, let consumers = ctx.uses.consumers[node.outputs[0]] else { return nil }
        // Every consumer must be an ungrouped Conv reading the value as its input X.
        var consumerWeights: [(Node, Tensor)] = []
        for c in consumers {
            guard isConv(c), c.inputs[0] == node.outputs[0], !c.inputs.dropFirst().contains(node.outputs[0]),
                  (try? AttributeReader(node: c).int("group", 1)) == 1, let cw = ctx.constant(c.inputs[1]), cw.rank == w.rank, cw.shape[1] == cout,
                  !consumerWeights.contains(where: { $0.0 === c }) else { return nil }
            consumerWeights.append((c, cw))
        }
        let keep = (0..<cout).filter { !zero.contains($0) }
        var patch = Patch(statistic: "channels pruned")
        func replaceInput(_ n: Node, _ index: Int, with tensor: Tensor, suffix: String) -> Node {
            let name = ctx.graph.freshName("\(n.inputs[index])_\(suffix)")
            patch.initializers.append((name, tensor))
            var inputs = n.inputs
            inputs[index] = name
            return Node(name: n.name, opType: n.opType, domain: n.domain, inputs: inputs, outputs: n.outputs, attributes: n.attributes, fusedFrom: n.fusedFrom)
        }
        // Producer: keep the non-zero output channels.
        let kernel = Array(w.shape.dropFirst())
        var producer = replaceInput(node, 1, with: try w.gathered(keep.flatMap { Array(($0 * per)..<(($0 + 1) * per)) }, shape: [keep.count] + kernel), suffix: "pruned")
        if node.inputs.count > 2, !node.inputs[2].isEmpty, let b = ctx.constant(node.inputs[2]) {
            producer = replaceInput(producer, 2, with: try b.gathered(keep, shape: [keep.count]), suffix: "pruned")
        }
        patch.substitute.append((node, producer))
        // Consumers: drop the matching input channels, each rebuilt in place.
        for (c, cw) in consumerWeights {
            let outC = cw.shape[0], inner = cw.shape[2...].reduce(1, *)
            var indices: [Int] = []
            for o in 0..<outC { for i in keep { indices.append(contentsOf: ((o * cout + i) * inner)..<((o * cout + i + 1) * inner)) } }
            let pruned = try cw.gathered(indices, shape: [outC, keep.count] + Array(cw.shape[2...]))
            patch.substitute.append((c, replaceInput(c, 1, with: pruned, suffix: "pruned")))
        }
        ctx.pass.count("channels removed", zero.count)
        return patch
    }
}

/// Replaces x · 0 (a constant all-zero factor) by a constant zero tensor, so the
/// branch computing x becomes dead. Exact for finite x; as in TensorRT and ONNX
/// Runtime, a NaN or infinity in x no longer propagates.
public struct EliminateZeroBranches: Pass {
    public let name = "eliminate-zero-branches"
    public let summary = "replace products with an all-zero constant by zeros, making the other branch dead"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule]).run(context) }

    static let rule = RewriteRule("times zero", roots: ["Mul"]) { node, ctx in
        guard node.domain.isEmpty, node.inputs.count == 2 else { return nil }
        for side in [0, 1] {
            guard let c = ctx.constant(node.inputs[side]), c.dataType.isFloatingPoint || c.dataType.isInteger,
                  c.doubles.allSatisfy({ $0 == 0 }), ctx.constant(node.inputs[1 - side]) == nil,
                  let type = ctx.type(node.outputs[0]).elementType, let shape = ctx.type(node.outputs[0]).concreteShape,
                  let count = ShapeMath.elementCount(shape), count <= ctx.pass.foldLimit else { continue }
            let zeros = try Tensor.zeros(type, shape: shape)
            if ctx.uses.graphOutputs.contains(node.outputs[0]) {
                return Patch(statistic: "zero branches removed", remove: [node], initializers: [(node.outputs[0], zeros)])
            }
            let name = ctx.graph.freshName("\(node.name)_zeros")
            return Patch(statistic: "zero branches removed", remove: [node], replace: [(node.outputs[0], name)], initializers: [(name, zeros)])
        }
        return nil
    }
}
