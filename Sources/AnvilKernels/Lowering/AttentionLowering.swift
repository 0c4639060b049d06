import AnvilCore
import COneDNN

/// Scaled dot-product attention on [batch, sequence, heads × size] inputs as two
/// batched oneDNN matmuls over strided views and a softmax between them.
enum AttentionLowering {
    static let entries = [LoweringEntry(kind: .attention, ops: ["Attention", "anvil.Attention"], output: .plain, lower: attention)]

    /// The attention's sizes and the views of Q, Kᵀ, V and Y as [batch, heads, rows, columns]:
    /// from [batch, sequence, heads × size] inputs (heads from the attributes) or from
    /// [batch, heads, sequence, size] ones.
    struct Geometry {
        var batch = 0, heads = 0, s = 0, sk = 0, d = 0, dv = 0
        var outShape: [Int] = []
        var q = dnnl_memory_desc_t(), kT = dnnl_memory_desc_t(), v = dnnl_memory_desc_t(), y = dnnl_memory_desc_t()
    }

    static func geometry(_ l: LayerLowering, q: [Int], k: [Int], v: [Int]) throws -> Geometry? {
        let a = l.attributes
        var g = Geometry()
        if q.count == 3, k.count == 3, v.count == 3 {
            guard let heads = try a.int("q_num_heads"), heads > 0, try a.int("kv_num_heads") == heads else { return nil }
            let hidden = q[2]
            (g.batch, g.heads, g.s, g.sk) = (q[0], heads, q[1], k[1])
            guard hidden % heads == 0, k == [g.batch, g.sk, hidden], v[0] == g.batch, v[1] == g.sk, v[2] % heads == 0 else { return nil }
            (g.d, g.dv) = (hidden / heads, v[2] / heads)
            let (batch, s, sk, d, dv) = (g.batch, g.s, g.sk, g.d, g.dv)
            g.outShape = [batch, s, heads * dv]
            g.q = try stridedDescriptor([batch, heads, s, d], strides: [s * hidden, d, hidden, 1])
            g.kT = try stridedDescriptor([batch, heads, d, sk], strides: [sk * hidden, d, 1, hidden])
            g.v = try stridedDescriptor([batch, heads, sk, dv], strides: [sk * heads * dv, dv, heads * dv, 1])
            g.y = try stridedDescriptor([batch, heads, s, dv], strides: [s * heads * dv, dv, heads * dv, 1])
            return g
        }
        guard q.count == 4, k.count == 4, v.count == 4 else { return nil }
        (g.batch, g.heads, g.s, g.d, g.sk, g.dv) = (q[0], q[1], q[2], q[3], k[2], v[3])
        let (batch, heads, s, sk, d, dv) = (g.batch, g.heads, g.s, g.sk, g.d, g.dv)
        guard k == [batch, heads, sk, d], v == [batch, heads, sk, dv] else { return nil }
        g.outShape = [batch, heads, s, dv]
        g.q = try plainDescriptor(q)
        g.kT = try stridedDescriptor([batch, heads, d, sk], strides: [heads * sk * d, sk * d, 1, d])
        g.v = try plainDescriptor(v)
        g.y = try plainDescriptor(g.outShape)
        return g
    }

    static func attention(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count <= 4, let q0 = l.value(0), let k0 = l.value(1), let v0 = l.value(2),
              [q0, k0, v0].allSatisfy({ $0.dataType == .float }) else { return nil }
        let a = l.attributes
        // Only plain scaled dot-product attention: no causal or windowed masks, no soft cap.
        let known: Set<String> = ["q_num_heads", "kv_num_heads", "scale", "is_causal", "softcap", "left_window_size", "right_window_size",
                                  "softmax_precision", "qk_matmul_output_mode"]
        guard a.attributes.keys.allSatisfy(known.contains), try a.int("is_causal", 0) == 0, try a.float("softcap", 0) == 0,
              try a.int("left_window_size", -1) < 0, try a.int("right_window_size", -1) < 0,
              let g = try geometry(l, q: q0.shape, k: k0.shape, v: v0.shape) else { return nil }
        let (batch, heads, s, sk, d) = (g.batch, g.heads, g.s, g.sk, g.d)
        let (t, outShape) = try l.outputType()
        guard t == .float, outShape == g.outShape else { return nil }
        let scale = try a.float("scale") ?? 1 / Float(d).squareRoot()
        var mask: PlanValue?
        if l.present(3) {
            guard let m = try l.operand(3), m.dataType == .float, m.shape.count <= 4 else { return nil }
            let m4 = Array(repeating: 1, count: 4 - m.shape.count) + m.shape
            guard m4[0] == 1 || m4[0] == batch, m4[1] == 1 || m4[1] == heads, m4[2] == 1 || m4[2] == s, m4[3] == sk else { return nil }
            mask = try l.plan.plain(m)
        }
        let q = try l.plan.plain(q0), k = try l.plan.plain(k0), v = try l.plan.plain(v0)
        let qView = g.q, kView = g.kT, vView = g.v, yView = g.y
        let scoresDesc = try plainDescriptor([batch, heads, s, sk])
        let maskDesc = try mask.map { try plainDescriptor(Array(repeating: 1, count: 4 - $0.shape.count) + $0.shape) }
        // Scores = scale · Q·Kᵀ (+ mask), in a temporary of this l.layer.
        let scores = l.plan.newValue(l.layer.name + "#scores", .float, [batch, heads, s, sk])
        var qd = qView, kd = kView, sd = scoresDesc
        var desc1 = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc1, &qd, &kd, nil, &sd), "describing Q·Kᵀ")
        // The mask as the matmul's post-op where oneDNN has a fast kernel for its broadcast, else added after it.
        var scoresPrimitive: DNNLPrimitive
        var separateMask = false
        do {
            scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale, add: maskDesc), engine: l.plan.engine, what: "attention scores")
            if scoresPrimitive.isReference, maskDesc != nil { throw SlowImplementation(kind: .attention, implementation: scoresPrimitive.implementation) }
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
