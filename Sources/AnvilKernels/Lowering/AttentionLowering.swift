import AnvilCore
import COneDNN

/// Scaled dot-product attention on [batch, sequence, heads × size] inputs as two
/// batched oneDNN matmuls over strided views and a softmax between them.
enum AttentionLowering {
    static let entries = [LoweringEntry(kind: .attention, ops: ["Attention", "anvil.Attention"], output: .plain, lower: attention)]

    static func attention(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count <= 4, let q0 = l.value(0), let k0 = l.value(1), let v0 = l.value(2),
              [q0, k0, v0].allSatisfy({ $0.dataType == .float && $0.shape.count == 3 }) else { return nil }
        let a = l.attributes
        guard let heads = try a.int("q_num_heads"), heads > 0, try a.int("kv_num_heads") == heads, try a.int("is_causal", 0) == 0,
              try a.float("softcap", 0) == 0 else { return nil }
        let batch = q0.shape[0], s = q0.shape[1], hidden = q0.shape[2], sk = k0.shape[1]
        guard hidden % heads == 0, k0.shape == [batch, sk, hidden], v0.shape[0] == batch, v0.shape[1] == sk, v0.shape[2] % heads == 0 else { return nil }
        let d = hidden / heads, dv = v0.shape[2] / heads
        let (t, outShape) = try l.outputType()
        guard t == .float, outShape == [batch, s, heads * dv] else { return nil }
        let scale = try a.float("scale") ?? 1 / Float(d).squareRoot()
        var mask: PlanValue?
        if l.present(3) {
            guard let m = try l.operand(3), m.dataType == .float, m.shape.count <= 4 else { return nil }
            let m4 = Array(repeating: 1, count: 4 - m.shape.count) + m.shape
            guard m4[0] == 1 || m4[0] == batch, m4[1] == 1 || m4[1] == heads, m4[2] == 1 || m4[2] == s, m4[3] == sk else { return nil }
            mask = try l.plan.plain(m)
        }
        let q = try l.plan.plain(q0), k = try l.plan.plain(k0), v = try l.plan.plain(v0)
        let qView = try stridedDescriptor([batch, heads, s, d], strides: [s * hidden, d, hidden, 1])
        let kView = try stridedDescriptor([batch, heads, d, sk], strides: [sk * hidden, d, 1, hidden])
        let vView = try stridedDescriptor([batch, heads, sk, dv], strides: [sk * heads * dv, dv, heads * dv, 1])
        let yView = try stridedDescriptor([batch, heads, s, dv], strides: [s * heads * dv, dv, heads * dv, 1])
        let scoresDesc = try plainDescriptor([batch, heads, s, sk])
        let maskDesc = try mask.map { try plainDescriptor(Array(repeating: 1, count: 4 - $0.shape.count) + $0.shape) }
        // Scores = scale · Q·Kᵀ (+ mask), in a temporary of this l.layer.
        let scores = l.plan.newValue(l.layer.name + "#scores", .float, [batch, heads, s, sk])
        var qd = qView, kd = kView, sd = scoresDesc
        var desc1 = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc1, &qd, &kd, nil, &sd), "describing Q·Kᵀ")
        let scoresPrimitive: DNNLPrimitive
        var separateMask = false
        do {
            scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale, add: maskDesc), engine: l.plan.engine, what: "attention scores")
        } catch {
            guard maskDesc != nil else { throw error }
            scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale), engine: l.plan.engine, what: "attention scores")
            separateMask = true
        }
        var scoreArgs: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [(DNNL_ARG_SRC, q, qView), (DNNL_ARG_WEIGHTS, k, kView), (DNNL_ARG_DST, scores, scoresDesc)]
        if let mask, let maskDesc, !separateMask { scoreArgs.append((DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE | DNNL_ARG_SRC_1, mask, maskDesc)) }
        try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: scoresPrimitive, arguments: scoreArgs))
        if let mask, let maskDesc, separateMask {
            var s0 = scoresDesc, s1 = maskDesc, dd = scoresDesc
            var bd = dnnl_binary_desc_t()
            try check(dnnl_binary_desc_init(&bd, dnnl_binary_add, &s0, &s1, &dd), "describing the attention mask")
            let add = try DNNLPrimitive(bd, attributes: DNNLAttributes(), engine: l.plan.engine, what: "attention mask")
            try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: add,
                                            arguments: [(DNNL_ARG_SRC_0, scores, scoresDesc), (DNNL_ARG_SRC_1, mask, maskDesc), (DNNL_ARG_DST, scores, scoresDesc)]))
        }
        var smd = scoresDesc
        var sdesc = dnnl_softmax_v2_desc_t()
        try check(dnnl_softmax_v2_forward_desc_init(&sdesc, dnnl_forward_inference, dnnl_softmax_accurate, &smd, &smd, 3), "describing the attention softmax")
        let soft = try DNNLPrimitive(sdesc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "attention softmax")
        try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: soft, arguments: [(DNNL_ARG_SRC, scores, scoresDesc), (DNNL_ARG_DST, scores, scoresDesc)]))
        // Y = P·V, written through a view straight into [batch, sequence, heads × size].
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape)
        var pd = scoresDesc, vd = vView, yd = yView
        var desc2 = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc2, &pd, &vd, nil, &yd), "describing P·V")
        let context = try DNNLPrimitive(desc2, attributes: DNNLAttributes(), engine: l.plan.engine, what: "attention context")
        try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: context,
                                        arguments: [(DNNL_ARG_SRC, scores, scoresDesc), (DNNL_ARG_WEIGHTS, v, vView), (DNNL_ARG_DST, out, yView)]))
        return l.decided(.attention)
    }
}
