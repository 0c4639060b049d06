import AnvilCore
import COneDNN

/// A matrix product with constant weights (MatMul, Gemm and their fused forms) for
/// one input shape: the one place that decides whether oneDNN's matmul with
/// prepacked weights takes a layer, used by the planner and the interpreter alike.
struct MatMulSpec {
    let layer: String
    let weights: KernelWeights
    /// Gemm's transB: the weights are N×K.
    let transposed: Bool
    let alpha: Float
    let bias: Tensor?
    let m: Int, k: Int, n: Int
    let postOps: PostOps
    /// The shape of the product: the input's leading dimensions and N.
    let outputShape: [Int]
    /// Whether a fused ReLU or Clip must keep NaN (`DNNLAttributes.clip`); the planner
    /// clears it where no NaN can reach the layer.
    var exactNonFinite = true
    /// Whether the fused activation takes its NaN-keeping form.
    var exactActivation: Bool { exactNonFinite && DNNLAttributes.hasFiniteForm(postOps.activation) }
    /// FP32; BF16 (input and weights; output FP32) or FP16 (weights stored in FP16, arithmetic
    /// in FP32) when the decision asks for it.
    var precision: Precision = .fp32
    /// The output type --layerOutputTypes set (a BF16 product writing BF16); nil: the precision's.
    var outputPrecision: Precision?
    var bf16Output: Bool { precision == .bf16 && outputPrecision == .bf16 }

    /// Nil when oneDNN's matmul does not take the layer with this input shape.
    init?(_ layer: Layer, constants: ConstantStore, inputShape: [Int]) throws {
        guard ["MatMul", "anvil.FusedMatMul", "Gemm", "anvil.FusedGemm"].contains(layer.opKey), layer.present(1),
              let w = constants.weights(layer.inputs[1]), w.dataType == .float, w.rank == 2 else { return nil }
        let gemm = layer.opType.hasSuffix("Gemm")
        let a = layer.attributeReader
        transposed = gemm ? try a.int("transB", 0) != 0 : false
        k = transposed ? w.shape[1] : w.shape[0]
        n = transposed ? w.shape[0] : w.shape[1]
        if layer.present(2) {
            guard let c = constants[layer.inputs[2]], c.dataType == .float, c.count == n, c.shape.dropLast().allSatisfy({ $0 == 1 }) else { return nil }
            if gemm { guard try a.float("beta", 1) == 1 else { return nil } }
            bias = try c.reshaped([n])
        } else {
            bias = nil
        }
        if gemm { guard inputShape.count == 2, try a.int("transA", 0) == 0 else { return nil } }
        guard inputShape.count >= 2, inputShape.last == k, k > 0 else { return nil }
        m = inputShape.reduce(1, *) / k
        guard m > 0 else { return nil }
        alpha = gemm ? try a.float("alpha", 1) : 1
        self.layer = layer.name
        weights = w
        outputShape = Array(inputShape.dropLast()) + [n]
        postOps = try layer.decision.flatMap { $0.kernel == .matmul ? $0.postOps : nil } ?? PostOps(layer)
        if let d = layer.decision, d.kernel == .matmul, d.precision == .bf16 || d.precision == .fp16 { (precision, outputPrecision) = (d.precision, d.outputPrecision) }
    }

    /// The key under which contexts share the kernel.
    var sharingKey: String { "matmul|\(layer)|\(m)|\(precision.rawValue)" + (exactActivation ? "|exact" : "") + (bf16Output ? "|bf16out" : "") }

    func make(engine: DNNLEngine) throws -> DNNLMatMul {
        try DNNLMatMul(engine: engine, m: m, weights: precision == .fp16 ? weights.halved() : weights, transposedWeights: transposed, alpha: alpha, bias: bias,
                       activation: postOps.activation, exactNonFinite: exactActivation, residual: postOps.residual, precision: precision.arithmetic,
                       bf16Output: bf16Output)
    }
}

/// Matrix products on oneDNN: with constant prepacked weights and post-ops, and of
/// two runtime tensors with numpy-broadcast batch dimensions.
enum MatMulLowering {
    static let entries = [
        LoweringEntry(kind: .matmul, ops: ["MatMul", "anvil.FusedMatMul", "Gemm", "anvil.FusedGemm"], output: .plain, lower: matmul, prepare: prepare),
        LoweringEntry(kind: .batchedMatmul, ops: ["MatMul"], output: .plain, lower: batchedMatmul),
    ]

    static func prepare(_ l: LayerLowering, inputShape: [Int]) -> (() throws -> Void)? {
        guard var spec = try? MatMulSpec(l.layer, constants: l.plan.constants, inputShape: inputShape) else { return nil }
        spec.exactNonFinite = l.plan.exactNonFinite(l.layer)
        let engine = l.plan.engine, shared = l.plan.shared
        return { _ = try shared.kernel(spec.sharingKey, layer: spec.layer) { try spec.make(engine: engine) } }
    }

    static func matmul(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.storedValue(0), x.dataType == .float, var spec = try MatMulSpec(l.layer, constants: l.plan.constants, inputShape: x.shape) else { return nil }
        spec.exactNonFinite = l.plan.exactNonFinite(l.layer)
        let residualValue = l.present(3) ? l.value(3) : nil
        if l.present(3) && residualValue == nil { return nil }
        let (_, shape) = try l.outputType()
        guard shape.reduce(1, *) == spec.m * spec.n else { return nil }
        let engine = l.plan.engine
        let mm = try l.plan.shared.kernel(spec.sharingKey, layer: spec.layer) { try spec.make(engine: engine) }
        // A BF16 kernel reads its input as row-major BF16 (one conversion per value, shared by its readers).
        let src = spec.precision == .bf16 ? try l.plan.inLayout(x, plainDescriptor(x.shape, .bfloat16)) : try l.plan.plain(x)
        let dstLayout = try plainDescriptor(shape, spec.bf16Output ? .bfloat16 : .float)
        let (out, copies) = try residualValue.map { try l.residualDestination(l.plan.plain($0), layout: dstLayout, notSharing: src) }
            ?? (l.plan.newValue(l.layer.outputs[0], .float, shape, layout: dstLayout), [])
        for step in try mm.kernel.planSteps(layer: l.layer.name, source: src, destination: out, copies: copies) { try l.emit(.matmul, step) }
        var decision = l.decided(.matmul, postOps: spec.postOps)
        (decision.precision, decision.outputPrecision) = (spec.precision, spec.outputPrecision)
        return decision
    }

    /// MatMul of two runtime tensors (or a constant of rank above 2), batch
    /// dimensions broadcast as numpy does: one oneDNN matmul over plain layouts.
    static func batchedMatmul(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2, l.weights(1)?.rank != 2, let a0 = try l.operand(0), let b0 = try l.operand(1), a0.dataType == .float,
              b0.dataType == .float, a0.shape.count >= 2, b0.shape.count >= 2, a0.constant == nil else { return nil }
        let (t, shape) = try l.outputType()
        let rank = shape.count
        guard t == .float, rank == max(a0.shape.count, b0.shape.count), rank <= 12 else { return nil }
        let ad: [Int] = Array(repeating: 1, count: rank - a0.shape.count) + a0.shape
        let bd: [Int] = Array(repeating: 1, count: rank - b0.shape.count) + b0.shape
        guard ad[rank - 1] == bd[rank - 2], shape[rank - 2] == ad[rank - 2], shape[rank - 1] == bd[rank - 1] else { return nil }
        for i in 0..<(rank - 2) {
            let aFits = ad[i] == shape[i] || ad[i] == 1, bFits = bd[i] == shape[i] || bd[i] == 1
            guard aFits, bFits else { return nil }
        }
        guard shape.allSatisfy({ $0 > 0 }), ad[rank - 1] > 0 else { return nil }
        let a = try l.plan.plain(a0), b = try l.plan.plain(b0)
        var am = try plainDescriptor(ad), bm = try plainDescriptor(bd), dm = try plainDescriptor(shape)
        var desc = dnnl_matmul_desc_t()
        try check(dnnl_matmul_desc_init(&desc, &am, &bm, nil, &dm), "describing the matmul")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "matmul")
        let out = l.plan.newValue(l.layer.outputs[0], .float, shape)
        try l.emit(.batchedMatmul, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                                 arguments: [(DNNL_ARG_SRC, a, am), (DNNL_ARG_WEIGHTS, b, bm), (DNNL_ARG_DST, out, dm)]))
        return l.decided(.batchedMatmul)
    }
}
