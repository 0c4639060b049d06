import AnvilCore

// Anvil's own ops (domain `anvilDomain`, version 1), produced by the optimizer's
// fusions; documented in docs/passes.md.
//
// - FusedConv(X, W, B?, Sum?), FusedGemm(A, B, C?, Sum?), FusedMatMul(A, B, Bias?, Sum?):
//   the standard op, plus bias, plus the residual `Sum`, then `activation`
//   (with `activation_alpha`, `activation_beta`), as oneDNN post-ops compute it.
// - FusedQLinearConv(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point,
//   B?, Sum?, sum_scale?, sum_zero_point?, inner_scale?, inner_zero_point?): QLinearConv whose
//   real result (quantized and dequantized with inner_scale and inner_zero_point first, when
//   given) gets the dequantized `Sum` added and `activation` applied, then is quantized with
//   y_scale and y_zero_point (without y_scale: the real result, as floats; a residual
//   without sum_scale is then floats too).
// - FusedQLinearMatMul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point,
//   B?, Sum?): QLinearMatMul plus a bias per column (int32, in units of a_scale · b_scale; or
//   float, in real units, added as it is: NNCF's MatMul + Add of a float bias), then
//   `activation`, quantized once (without y_scale: the real result, as floats, to which a
//   float Sum may be added before the activation).
// - QuantizedLookup(x, table): table[x's byte] (256 entries in byte order, so an int8 −1 reads
//   entry 255; the output's type): an 8-bit tensor's elementwise computation made a table.
// - Gelu, HardSwish, LayerNormalization, RMSNormalization, Attention: the standard
//   op's semantics for models whose opset predates it; SiLU: x · sigmoid(x).

/// Anvil's ops with exactly the semantics of the standard op of the same name, for
/// models whose opset predates it: the opset that introduced the standard op. The
/// recognizers emit them only through this table, so each has a kernel (below), an
/// inference rule and an export body.
public let anvilStandardOps: [String: Int] = [
    "Gelu": 20, "HardSwish": 14, "LayerNormalization": 17, "RMSNormalization": 23, "Attention": 23,
]

/// The activation of a fused node, nil when it has none.
func fusedActivation(_ ctx: EvalContext) throws -> Activation? {
    guard let name = try ctx.attributes.string("activation"), !name.isEmpty else { return nil }
    guard let a = Activation(name: name, alpha: try ctx.attributes.float("activation_alpha"), beta: try ctx.attributes.float("activation_beta")) else {
        throw ctx.fail("unknown fused activation '\(name)'")
    }
    return a
}

/// Adds the residual input (if any) and applies the activation (if any).
func finishFused(_ ctx: EvalContext, _ y: Tensor, sumInput: Int) throws -> Tensor {
    var out = y
    // The residual before the activation, or after it with residual_after_activation = 1.
    let after = try ctx.attributes.int("residual_after_activation", 0) != 0
    if after, let activation = try fusedActivation(ctx) { out = try activation.apply(out) }
    if let sum = ctx.optionalInput(sumInput) {
        guard sum.shape == out.shape else { throw ctx.fail("residual input \(sum.shape) does not match the output \(out.shape)") }
        out = try Elementwise.arithmetic(out, sum, op: ctx.opType, float: +, integer: &+)
    }
    if !after, let activation = try fusedActivation(ctx) { out = try activation.apply(out) }
    return out
}

/// The end of FusedQLinearConv and FusedQLinearMatMul: the activation on the real result,
/// then quantized with y_scale and y_zero_point (inputs 6, 7), or, without y_scale, floats.
func quantizedResult(_ ctx: EvalContext, _ real: [Double], shape: [Int]) throws -> Tensor {
    var real = real
    if let activation = try fusedActivation(ctx) { real = try activation.apply(Tensor(.double, shape: shape, doubles: real)).doubles }
    guard let scale = ctx.optionalInput(6) else { return try Tensor(.float, shape: shape, doubles: real) }
    return try requantize(ctx, real, shape: shape, scale: try scale.double(at: 0), zeroPoint: ctx.optionalInput(7), like: .uint8)
}

/// The definition of a standard op, for ai.anvil ops with the same semantics.
func standard(_ op: String) -> KernelDefinition { KernelRegistry.all[KernelRegistry.key("", op)]! }

func registerAnvilOps(_ b: inout KernelTableBuilder) {
    b.add1("FusedConv", domain: anvilDomain) { ctx in
        let conv = try standard("Conv").evaluate(ctx.with(opset: 22, inputs: Array(ctx.inputs.prefix(3))))[0]
        return try finishFused(ctx, conv, sumInput: 3)
    }
    b.add1("FusedGemm", domain: anvilDomain) { ctx in
        let y = try standard("Gemm").evaluate(ctx.with(opset: 13, inputs: Array(ctx.inputs.prefix(3))))[0]
        return try finishFused(ctx, y, sumInput: 3)
    }
    b.add1("FusedMatMul", domain: anvilDomain) { ctx in
        var y = try named(ctx) { try Linear.matmul(ctx.input(0), ctx.input(1)) }
        if let bias = ctx.optionalInput(2) {
            guard bias.rank == 1, bias.count == y.shape.last else { throw ctx.fail("bias \(bias.shape) does not match the last dimension of \(y.shape)") }
            y = try Elementwise.arithmetic(y, bias, op: "FusedMatMul", float: +, integer: &+)
        }
        return try finishFused(ctx, y, sumInput: 3)
    }
    b.add1("FusedQLinearConv", domain: anvilDomain) { ctx in
        // QLinearConv's real result (through its own quantization first, where the model has
        // one), plus the dequantized residual, then the activation, then quantized.
        var (real, shape) = try quantizedConvolution(ctx)
        if let innerScale = ctx.optionalInput(12) {
            let s = try innerScale.double(at: 0), z = Double(ctx.optionalInput(13)?.int64s.first ?? 0)
            let inner = try requantize(ctx, real, shape: shape, scale: s, zeroPoint: ctx.optionalInput(13), like: .uint8)
            real = inner.doubles.map { ($0 - z) * s }
        }
        if let sum = ctx.optionalInput(9) {
            guard sum.shape == shape else { throw ctx.fail("residual input \(sum.shape) does not match the output \(shape)") }
            // A quantized residual with its scale and zero point, or (sum_scale absent) floats.
            let scale = try ctx.optionalInput(10)?.double(at: 0) ?? 1, zero = Double(ctx.optionalInput(11)?.int64s.first ?? 0)
            for (i, v) in sum.doubles.enumerated() { real[i] += (v - zero) * scale }
        }
        return try quantizedResult(ctx, real, shape: shape)
    }
    b.add1("FusedQLinearMatMul", domain: anvilDomain) { ctx in
        let bias = ctx.optionalInput(8), floatBias = bias?.dataType == .float
        var (real, shape) = try quantizedMatMul(ctx, bias: floatBias ? nil : bias)
        if let bias, floatBias {
            let n = shape.last ?? 1, b = bias.doubles
            guard b.count == n else { throw ctx.fail("bias has \(b.count) values for \(n) columns") }
            for i in real.indices { real[i] += b[i % n] }
        }
        // A float residual (the result then is float too).
        if let sum = ctx.optionalInput(9) {
            guard sum.shape == shape, ctx.optionalInput(6) == nil else { throw ctx.fail("a residual \(sum.shape) needs a float result of its shape \(shape)") }
            for (i, v) in sum.doubles.enumerated() { real[i] += v }
        }
        return try quantizedResult(ctx, real, shape: shape)
    }
    b.add1("QuantizedLookup", domain: anvilDomain) { ctx in
        let x = try ctx.input(0), table = try ctx.input(1)
        guard table.count == 256, [.uint8, .int8].contains(x.dataType) else { throw ctx.fail("a lookup takes an 8-bit input and 256 table entries") }
        let entries = table.int64s
        return try Tensor(table.dataType, shape: x.shape, int64s: x.int64s.map { entries[Int(UInt8(truncatingIfNeeded: $0))] })
    }
    // x · sigmoid(α · x), α = 1 unless the attribute says otherwise (CLIP's quick GELU).
    b.add1("SiLU", domain: anvilDomain) { ctx in
        let alpha = try ctx.attributes.float("alpha", 1)
        return try (alpha == 1 ? Activation.silu : .swish(alpha: alpha)).apply(ctx.input(0))
    }
    for (op, opset) in anvilStandardOps {
        b.add(op, domain: anvilDomain) { ctx in
            try standard(op).evaluate(ctx.with(opset: opset, inputs: ctx.inputs))
        }
    }
}

