import AnvilCore

// Anvil's own ops (domain `anvilDomain`, version 1), produced by the optimizer's
// fusions; documented in docs/passes.md.
//
// - FusedConv(X, W, B?, Sum?), FusedGemm(A, B, C?, Sum?), FusedMatMul(A, B, Bias?, Sum?):
//   the standard op, plus bias, plus the residual `Sum`, then `activation`
//   (with `activation_alpha`, `activation_beta`), as oneDNN post-ops compute it.
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
    if let sum = ctx.optionalInput(sumInput) {
        guard sum.shape == out.shape else { throw ctx.fail("residual input \(sum.shape) does not match the output \(out.shape)") }
        out = try Elementwise.arithmetic(out, sum, op: ctx.opType, float: +, integer: &+)
    }
    if let activation = try fusedActivation(ctx) { out = try activation.apply(out) }
    return out
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
    b.add1("SiLU", domain: anvilDomain) { ctx in try Activation.silu.apply(ctx.input(0)) }
    for (op, opset) in anvilStandardOps {
        b.add(op, domain: anvilDomain) { ctx in
            try standard(op).evaluate(ctx.with(opset: opset, inputs: ctx.inputs))
        }
    }
}

