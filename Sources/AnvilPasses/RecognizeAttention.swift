import AnvilCore
import AnvilKernels
import AnvilIR
import AnvilOps

/// Recognizes scaled dot-product attention and replaces it by one Attention node
/// (ONNX opset 23 semantics; Anvil's op of the same semantics for older models):
///
///     softmax(scale · Q·Kᵀ + mask) · V
///
/// with the scale applied to the scores (Mul or Div) or split between Q and K, an
/// optional additive mask, and an optional NaN guard on the probabilities (a
/// fully masked row gives zeros, as Attention defines). When Q, K and V come
/// from [B, S, H·D] tensors through Reshape + Transpose and the result goes back
/// the same way, the 3-D form absorbs those head reshapes too.
public struct RecognizeAttention: Pass {
    public let name = "recognize-attention"
    public let summary = "recognize scaled dot-product attention with its head reshapes and transposes"
    public init() {}
    public func run(_ context: PassContext) throws -> Bool { try RewriteDriver([Self.rule, Self.heads]).run(context) }

    /// An Attention on [B, H, S, D] tensors whose Q, K and V are head splits of [B, S, H·D]
    /// tensors and whose output is merged back takes the 3-D form instead, absorbing the
    /// reshapes and transposes. Recognition meets this when the head reshapes' shapes
    /// become known only after the scores were recognized (dynamic exports).
    static let heads = RewriteRule("attention heads", roots: ["Attention"]) { root, ctx in
        guard root.domain == anvilDomain || root.domain.isEmpty, (3...4).contains(root.inputs.count), root.outputs.count == 1,
              root.attributes["q_num_heads"] == nil, root.attributes["kv_num_heads"] == nil,
              let q = headSplit(root.inputs[0], perm: [0, 2, 1, 3], ctx)?.split, let k = headSplit(root.inputs[1], perm: [0, 2, 1, 3], ctx)?.split,
              let v = headSplit(root.inputs[2], perm: [0, 2, 1, 3], ctx)?.split, k.heads == v.heads,
              Set([root.inputs[0], root.inputs[1], root.inputs[2]]).count == 3,
              [root.inputs[0], root.inputs[1], root.inputs[2]].allSatisfy({ ctx.uses.soleConsumer($0) === root }),
              let merge = headMerge(root, ctx) else { return nil }
        var attributes = root.attributes
        attributes["q_num_heads"] = .int(Int64(q.heads))
        attributes["kv_num_heads"] = .int(Int64(k.heads))
        let matched = [root] + q.nodes + k.nodes + v.nodes + merge.nodes
        let node = Node(name: root.name, opType: root.opType, domain: root.domain, inputs: [q.source, k.source, v.source] + root.inputs.dropFirst(3),
                        outputs: merge.output, attributes: attributes, fusedFrom: provenance(matched, ctx))
        return Patch(statistic: "attention heads absorbed", remove: matched, add: [node])
    }

    static let rule = RewriteRule("attention", roots: ["MatMul"]) { root, ctx in
        guard root.domain.isEmpty, root.inputs.count == 2 else { return nil }
        var matched: [Node] = [root]
        // Probabilities: Softmax over the last axis, possibly behind Where(IsNaN(p), 0, p).
        var probabilities = root.inputs[0]
        if let guardNode = ctx.interior(probabilities, "Where", readBy: root), let isNaN = ctx.producer(guardNode.inputs[0]),
           isNaN.opType == "IsNaN", isNaN.inputs[0] == guardNode.inputs[2], ctx.isConstant(guardNode.inputs[1], 0),
           ctx.uses.soleConsumer(isNaN.outputs[0]) === guardNode, ctx.uses.useCount(guardNode.inputs[2]) == 2 {
            matched += [guardNode, isNaN]
            probabilities = guardNode.inputs[2]
        }
        guard let softmax = ctx.producer(probabilities), softmax.opType == "Softmax", softmax.domain.isEmpty,
              matched.count > 1 || ctx.uses.soleConsumer(probabilities) === root,
              let rank = ctx.type(softmax.inputs[0]).rank, rank == 4,
              (try? AttributeReader(node: softmax).int("axis", ctx.pass.opset() < 13 ? 1 : -1)).map({ $0 == -1 || $0 == 3 }) == true
        else { return nil }
        matched.append(softmax)
        // Logits: scores (+ mask).
        var scores = softmax.inputs[0]
        var mask: String?
        if let add = ctx.interior(scores, "Add", readBy: softmax) {
            for side in [0, 1] where ctx.producer(add.inputs[side])?.opType == "MatMul" || isScaledScores(add.inputs[side], ctx) {
                scores = add.inputs[side]
                mask = add.inputs[1 - side]
                matched.append(add)
                break
            }
            // An additive mask must broadcast to the scores without enlarging them.
            guard let m = mask, let maskDims = ctx.type(m).dims, (1...4).contains(maskDims.count),
                  let scoreDims = ctx.type(scores).dims, maskDims.count <= scoreDims.count,
                  zip(maskDims.reversed(), scoreDims.reversed()).allSatisfy({ $0 == .known(1) || $0 == $1 }) else { return nil }
        }
        var scale = 1.0
        var reader = matched.last!
        if let m = ctx.interior(scores, "Mul", readBy: reader), let (value, other) = constantOperand(m, ctx) {
            scale *= value; scores = other; matched.append(m); reader = m
        } else if let d = ctx.interior(scores, "Div", readBy: reader), let c = ctx.scalar(d.inputs[1]), c != 0 {
            scale /= c; scores = d.inputs[0]; matched.append(d); reader = d
        }
        guard let qk = ctx.interior(scores, "MatMul", readBy: reader) else { return nil }
        matched.append(qk)
        // Q (maybe scaled) and Kᵀ (maybe scaled).
        var q = qk.inputs[0], kT = qk.inputs[1]
        if let m = ctx.interior(q, "Mul", readBy: qk), let (value, other) = constantOperand(m, ctx) { scale *= value; q = other; matched.append(m) }
        if let m = ctx.interior(kT, "Mul", readBy: qk), let (value, other) = constantOperand(m, ctx) { scale *= value; kT = other; matched.append(m) }
        let v = root.inputs[1]
        guard let qHeads = headSplit(q, perm: [0, 2, 1, 3], ctx), let vHeads = headSplit(v, perm: [0, 2, 1, 3], ctx),
              let kReader = ctx.uses.soleConsumer(kT), let key = keyTranspose(kT, readBy: kReader, ctx) else { return nil }
        // K in [B, S, H, D] gives the 3-D form when its head reshape is found; K in [B, H, S, D]
        // gives it when K is itself a head split, and the 4-D form otherwise.
        let kHeads = key.headsLast ? headReshape(key.nodes[0], ctx) : headSplit(key.k, perm: [0, 2, 1, 3], ctx)?.split
        let merge = headMerge(root, ctx)
        var attributes: [String: Attribute] = ["scale": .float(Float(scale))]
        let inputs: [String]
        let outputs: [String]
        if let qh = qHeads.split, let kh = kHeads, let vh = vHeads.split, let merge,
           qh.heads == kh.heads, kh.heads == vh.heads {
            attributes["q_num_heads"] = .int(Int64(qh.heads))
            attributes["kv_num_heads"] = .int(Int64(kh.heads))
            inputs = [qh.source, kh.source, vh.source] + (mask.map { [$0] } ?? [])
            outputs = merge.output
            matched += qh.nodes + key.nodes + kh.nodes + vh.nodes + merge.nodes
        } else if !key.headsLast {
            inputs = [q, key.k, v] + (mask.map { [$0] } ?? [])
            outputs = root.outputs
            matched += key.nodes
        } else {
            return nil
        }
        guard let attention = recognized("Attention", name: root.name, inputs: inputs, outputs: outputs,
                                         attributes: attributes, from: matched, ctx) else { return nil }
        return Patch(statistic: "attention recognized", remove: matched, add: [attention])
    }

    static func isScaledScores(_ value: String, _ ctx: RewriteContext) -> Bool {
        guard let p = ctx.producer(value), p.opType == "Mul" || p.opType == "Div" else { return false }
        return p.inputs.contains { ctx.producer($0)?.opType == "MatMul" }
    }

    /// For Mul(x, c) with a scalar constant c: (c, x).
    static func constantOperand(_ node: Node, _ ctx: RewriteContext) -> (Double, String)? {
        for side in [0, 1] { if let c = ctx.scalar(node.inputs[side]) { return (c, node.inputs[1 - side]) } }
        return nil
    }

    struct Split { var source: String; var heads: Int; var nodes: [Node] }

    /// Kᵀ of the scores traced back to K: Transpose(0,1,3,2) of K in [B, H, S, D];
    /// Transpose(0,2,3,1) of K in [B, S, H, D] (`headsLast`; the transpose is the first
    /// node); or, as the dynamo exporter writes it, Reshape to [B·H, S, D], Transpose(0,2,1)
    /// and Reshape back to [B, H, D, S] of K in [B, H, S, D].
    static func keyTranspose(_ kT: String, readBy reader: Node, _ ctx: RewriteContext) -> (k: String, headsLast: Bool, nodes: [Node])? {
        if let t = ctx.interior(kT, "Transpose", readBy: reader) {
            switch transposePerm(t, ctx) {
            case [0, 1, 3, 2]: return (t.inputs[0], false, [t])
            case [0, 2, 3, 1]: return (t.inputs[0], true, [t])
            default: return nil
            }
        }
        guard let back = ctx.interior(kT, "Reshape", readBy: reader), let t = ctx.interior(back.inputs[0], "Transpose", readBy: back),
              transposePerm(t, ctx) == [0, 2, 1], let merge = ctx.interior(t.inputs[0], "Reshape", readBy: t),
              let k = ctx.type(merge.inputs[0]).dims, k.count == 4, let merged = ctx.type(merge.outputs[0]).dims, merged.count == 3,
              let out = ctx.type(back.outputs[0]).dims, out.count == 4,
              sameDimension(merged[1], k[2]), sameDimension(merged[2], k[3]),
              sameDimension(out[0], k[0]), sameDimension(out[1], k[1]), sameDimension(out[2], k[3]), sameDimension(out[3], k[2])
        else { return nil }
        // The merge keeps S and D as the last two axes, so it merges B and H; the split restores them.
        return (merge.inputs[0], false, [back, t, merge])
    }

    /// `value` = Transpose(perm)(Reshape(x, [B, S, H, D])) with x 3-D: the split, when found.
    static func headSplit(_ value: String, perm: [Int], _ ctx: RewriteContext) -> (split: Split?, ok: Bool)? {
        guard let t = ctx.producer(value), t.opType == "Transpose", (try? AttributeReader(node: t).ints("perm")).flatMap({ $0 }) == perm,
              ctx.uses.soleConsumer(value) != nil else { return (nil, true) }
        guard let split = headReshape(t, ctx) else { return (nil, true) }
        return (Split(source: split.source, heads: split.heads, nodes: [t] + split.nodes), true)
    }

    /// The Reshape feeding a head transpose: from [B, S, H·D] to [B, S, H, D]; batch and
    /// sequence may be symbolic (the same symbols on both sides), heads and sizes are known.
    static func headReshape(_ transpose: Node, _ ctx: RewriteContext) -> Split? {
        guard let r = ctx.interior(transpose.inputs[0], "Reshape", readBy: transpose),
              let source = ctx.type(r.inputs[0]).dims, source.count == 3, let hidden = source[2].value,
              let target = ctx.type(r.outputs[0]).dims, target.count == 4, let heads = target[2].value, let size = target[3].value,
              sameDimension(target[0], source[0]), sameDimension(target[1], source[1]), heads * size == hidden else { return nil }
        return Split(source: r.inputs[0], heads: heads, nodes: [r])
    }

    /// Two dimensions that are the same at run time: equal known sizes or the same symbol.
    static func sameDimension(_ a: Dim, _ b: Dim) -> Bool { a == b && a != .unknown }

    /// The Transpose(0,2,1,3) + Reshape([B, S, H·D]) reading the attention output.
    static func headMerge(_ root: Node, _ ctx: RewriteContext) -> (output: [String], nodes: [Node])? {
        guard let t = ctx.uses.soleConsumer(root.outputs[0]), t.opType == "Transpose", t.domain.isEmpty,
              (try? AttributeReader(node: t).ints("perm")).flatMap({ $0 }) == [0, 2, 1, 3],
              let r = ctx.uses.soleConsumer(t.outputs[0]), r.opType == "Reshape", r.domain.isEmpty,
              let shape = ctx.type(r.outputs[0]).dims, shape.count == 3, let hidden = shape[2].value,
              let heads = ctx.type(t.outputs[0]).dims, heads.count == 4, let h = heads[2].value, let d = heads[3].value, hidden == h * d,
              sameDimension(shape[0], heads[0]), sameDimension(shape[1], heads[1]) else { return nil }
        return (r.outputs, [t, r])
    }
}
