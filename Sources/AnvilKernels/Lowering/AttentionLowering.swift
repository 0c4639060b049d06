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
        /// Element strides of the Q and Y views ([batch, heads, rows, columns]).
        var qStrides: [Int] = [], yStrides: [Int] = []
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
            (g.qStrides, g.yStrides) = ([s * hidden, d, hidden, 1], [s * heads * dv, dv, heads * dv, 1])
            g.q = try stridedDescriptor([batch, heads, s, d], strides: g.qStrides)
            g.kT = try stridedDescriptor([batch, heads, d, sk], strides: [sk * hidden, d, 1, hidden])
            g.v = try stridedDescriptor([batch, heads, sk, dv], strides: [sk * heads * dv, dv, heads * dv, 1])
            g.y = try stridedDescriptor([batch, heads, s, dv], strides: g.yStrides)
            return g
        }
        guard q.count == 4, k.count == 4, v.count == 4 else { return nil }
        (g.batch, g.heads, g.s, g.d, g.sk, g.dv) = (q[0], q[1], q[2], q[3], k[2], v[3])
        let (batch, heads, s, sk, d, dv) = (g.batch, g.heads, g.s, g.sk, g.d, g.dv)
        guard k == [batch, heads, sk, d], v == [batch, heads, sk, dv] else { return nil }
        g.outShape = [batch, heads, s, dv]
        (g.qStrides, g.yStrides) = ([heads * s * d, s * d, d, 1], [heads * s * dv, s * dv, dv, 1])
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
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape)
        // Long sequences go in blocks of query rows, each block's scores (about 8 MB) written,
        // normalized and read before the next, instead of a batch × heads × s × sk tensor
        // (Whisper's encoder: 6 heads × 1500² scores, 54 MB per layer): less memory traffic
        // and a smaller arena (Whisper 60 → 21 MB, 4% faster; smaller blocks lose oneDNN's
        // fastest matmul). A mask per query row is sliced with them.
        let rowBytes = batch * heads * sk * 4
        let perRowMask = mask.map { Array(repeating: 1, count: 4 - $0.shape.count) + $0.shape }.map { $0[2] == s && s > 1 } ?? false
        var block = s
        if rowBytes * s > Self.tiledScoresBytes {
            block = max(8, Self.blockScoresBytes / max(rowBytes, 1) / 8 * 8)
            if block * 2 > s { block = s }
        }
        let scores = l.plan.newValue(l.layer.name + "#scores", .float, [batch, heads, block, sk])
        var stepsByRows: [Int: Steps] = [:]
        let mark = l.plan.steps.count
        var row = 0
        while row < s {
            let rows = min(block, s - row)
            if stepsByRows[rows] == nil {
                stepsByRows[rows] = try Self.steps(l, g, rows: rows, scale: scale, mask: mask)
            }
            let made = stepsByRows[rows]!
            let tiled = rows != s
            // Views of this block's query rows in Q, in the output, and in a per-row mask.
            let qBlock = tiled ? l.plan.alias("\(q.name)#rows\(row)", of: q, type: .float, shape: [batch, heads, rows, d], layout: made.q,
                                              byteOffset: row * g.qStrides[2] * 4) : q
            let yBlock = tiled ? l.plan.alias("\(out.name)#rows\(row)", of: out, type: .float, shape: [batch, heads, rows, g.dv], layout: made.y,
                                              byteOffset: row * g.yStrides[2] * 4) : out
            let maskBlock = mask.map { m -> PlanValue in
                guard tiled, perRowMask, let md = made.mask else { return m }
                let m4 = Array(repeating: 1, count: 4 - m.shape.count) + m.shape
                return l.plan.alias("\(m.name)#rows\(row)", of: m, type: .float, shape: [m4[0], m4[1], rows, sk], layout: md, byteOffset: row * sk * 4)
            }
            var scoreArgs: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [(DNNL_ARG_SRC, qBlock, made.q), (DNNL_ARG_WEIGHTS, k, g.kT),
                                                                                                (DNNL_ARG_DST, scores, made.scores)]
            if let maskBlock, let md = made.mask, made.maskAdd == nil { scoreArgs.append((DNNL_ARG_ATTR_MULTIPLE_POST_OP_BASE | DNNL_ARG_SRC_1, maskBlock, md)) }
            try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: made.product, arguments: scoreArgs))
            if let maskBlock, let md = made.mask, let add = made.maskAdd {
                try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: add, arguments: [(DNNL_ARG_SRC_0, scores, made.scores),
                                                                                                     (DNNL_ARG_SRC_1, maskBlock, md), (DNNL_ARG_DST, scores, made.scores)]))
            }
            try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: made.softmax,
                                                 arguments: [(DNNL_ARG_SRC, scores, made.scores), (DNNL_ARG_DST, scores, made.scores)]))
            // Y = P·V, written through a view straight into [batch, sequence, heads × size].
            try l.emit(.attention, PrimitiveStep(layer: l.layer.name, primitive: made.context,
                                                 arguments: [(DNNL_ARG_SRC, scores, made.scores), (DNNL_ARG_WEIGHTS, v, g.v), (DNNL_ARG_DST, yBlock, made.y)]))
            row += rows
        }
        // Non-finite queries, keys or values, or a NaN in the mask (−∞ there is an ordinary mask), run on
        // the reference: oneDNN's softmax turns rows holding NaN or +∞ into zeros and finite values, and
        // NonFiniteTests saw this kernel give finite results where ∞ in V should have made NaN.
        try l.plan.guardNonFinite(l.layer, from: mark, scanning: [(q, .any), (k, .any), (v, .any)] + (mask.map { [($0, .nan)] } ?? []),
                                  inputs: [q, k, v] + (l.present(3) ? [mask] : []), outputs: [out])
        return l.decided(.attention)
    }

    /// Scores larger than this go in blocks of query rows, each about `blockScoresBytes`.
    static let tiledScoresBytes = 16 << 20
    static let blockScoresBytes = 8 << 20

    /// The primitives of one block of `rows` query rows (the scores' product, a separate mask
    /// addition where the product cannot take it, the softmax, the context product) and the
    /// descriptors they read through.
    struct Steps {
        let q: dnnl_memory_desc_t, y: dnnl_memory_desc_t, scores: dnnl_memory_desc_t, mask: dnnl_memory_desc_t?
        let product: DNNLPrimitive, maskAdd: DNNLPrimitive?, softmax: DNNLPrimitive, context: DNNLPrimitive
    }

    /// Scores = scale · Q·Kᵀ (+ mask), their softmax, and P·V for `rows` query rows.
    static func steps(_ l: LayerLowering, _ g: Geometry, rows: Int, scale: Float, mask: PlanValue?) throws -> Steps {
        let (batch, heads, s, sk, d, dv) = (g.batch, g.heads, g.s, g.sk, g.d, g.dv)
        let whole = rows == s
        let qView = whole ? g.q : try stridedDescriptor([batch, heads, rows, d], strides: g.qStrides)
        let yView = whole ? g.y : try stridedDescriptor([batch, heads, rows, dv], strides: g.yStrides)
        let scoresDesc = try plainDescriptor([batch, heads, rows, sk])
        // A mask per query row is read through a view of its rows; one broadcast over them as it is.
        let maskDesc = try mask.map { m -> dnnl_memory_desc_t in
            let m4 = Array(repeating: 1, count: 4 - m.shape.count) + m.shape
            guard m4[2] == s, s > 1, !whole else { return try plainDescriptor(m4) }
            return try stridedDescriptor([m4[0], m4[1], rows, sk], strides: [m4[1] * s * sk, s * sk, sk, 1])
        }
        var qd = qView, kd = g.kT, sd = scoresDesc
        var desc1 = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc1, &qd, &kd, nil, &sd), "describing Q·Kᵀ")
        // The mask as the matmul's post-op where oneDNN has a fast kernel for its broadcast, else added after it.
        var scoresPrimitive: DNNLPrimitive
        var maskAdd: DNNLPrimitive?
        do {
            scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale, add: maskDesc), engine: l.plan.engine, what: "attention scores")
            if scoresPrimitive.isReference, maskDesc != nil { throw SlowImplementation(kind: .attention, implementation: scoresPrimitive.implementation) }
        } catch {
            guard let maskDesc else { throw error }
            scoresPrimitive = try DNNLPrimitive(desc1, attributes: DNNLAttributes(scale: scale), engine: l.plan.engine, what: "attention scores")
            var s0 = scoresDesc, s1 = maskDesc, dd = scoresDesc
            var bd = dnnl_binary_desc_t()
            try check(dnnl_binary_desc_init(&bd, dnnl_binary_add, &s0, &s1, &dd), "describing the attention mask")
            maskAdd = try DNNLPrimitive(bd, attributes: DNNLAttributes(), engine: l.plan.engine, what: "attention mask")
        }
        var smd = scoresDesc
        var sdesc = dnnl_softmax_v2_desc_t()
        try check(dnnl_softmax_v2_forward_desc_init(&sdesc, dnnl_forward_inference, dnnl_softmax_accurate, &smd, &smd, 3), "describing the attention softmax")
        let softmax = try DNNLPrimitive(sdesc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "attention softmax")
        var pd = scoresDesc, vd = g.v, yd = yView
        var desc2 = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc2, &pd, &vd, nil, &yd), "describing P·V")
        let context = try DNNLPrimitive(desc2, attributes: DNNLAttributes(), engine: l.plan.engine, what: "attention context")
        return Steps(q: qView, y: yView, scores: scoresDesc, mask: maskDesc, product: scoresPrimitive, maskAdd: maskAdd, softmax: softmax, context: context)
    }
}
