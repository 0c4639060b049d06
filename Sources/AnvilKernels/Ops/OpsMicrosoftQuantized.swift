import AnvilCore

// ONNX Runtime's quantized contrib ops (domain com.microsoft), as its QOperator-format
// quantizer writes them next to QLinearConv: each dequantizes its inputs, computes the float
// op and quantizes the result with the output's scale and zero point (absent zero points
// are 0 of the input's type).
//
// - QLinearAdd / QLinearMul(A, A_scale, A_zp?, B, B_scale, B_zp?, C_scale, C_zp?), broadcasting;
// - QLinearGlobalAveragePool(X, x_scale, x_zp, y_scale, y_zp), `channels_last`;
// - QLinearAveragePool(X, x_scale, x_zp, y_scale, y_zp), AveragePool's attributes;
// - QLinearSigmoid / QLinearLeakyRelu(X, X_scale, X_zp?, Y_scale, Y_zp?), LeakyRelu's `alpha`;
// - QLinearConcat(Y_scale, Y_zp, (X, X_scale, X_zp)…), `axis`;
// - QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C?, y_scale?, y_zp?): Gemm with `alpha`,
//   `transA`, `transB`, the int32 C in units of a_scale · b_scale; floats without y_scale.

/// The real values of a quantized input: (x − zero point) · scale, per tensor.
func dequantized(_ ctx: EvalContext, _ x: Int, scale: Int, zero: Int?) throws -> Tensor {
    let t = try ctx.input(x), s = try ctx.input(scale).double(at: 0)
    let z = Double(zero.flatMap { ctx.optionalInput($0)?.int64s.first } ?? 0)
    return try Tensor(.float, shape: t.shape, doubles: t.doubles.map { ($0 - z) * s })
}

/// A float result quantized with the scale and zero point at inputs `scale`, `zero`, in the type of the zero point (or `like`).
func quantized(_ ctx: EvalContext, _ y: Tensor, scale: Int, zero: Int, like: DataType) throws -> Tensor {
    try requantize(ctx, y.doubles, shape: y.shape, scale: try ctx.input(scale).double(at: 0), zeroPoint: ctx.optionalInput(zero), like: like)
}

func registerMicrosoftQuantized(_ b: inout KernelTableBuilder) {
    for (op, standardOp) in [("QLinearAdd", "Add"), ("QLinearMul", "Mul")] {
        b.add1(op, domain: microsoftDomain) { ctx in
            let a = try dequantized(ctx, 0, scale: 1, zero: 2), c = try dequantized(ctx, 3, scale: 4, zero: 5)
            let y = try standard(standardOp).evaluate(ctx.with(opset: 14, inputs: [a, c]))[0]
            return try quantized(ctx, y, scale: 6, zero: 7, like: try ctx.input(0).dataType)
        }
    }
    b.add1("QLinearGlobalAveragePool", domain: microsoftDomain) { ctx in
        var x = try dequantized(ctx, 0, scale: 1, zero: 2)
        let channelsLast = try ctx.attributes.int("channels_last", 0) != 0
        // Channels last: [N, spatial…, C] averaged over the spatial axes, kept as size 1.
        if channelsLast { x = try Movement.transpose(x, perm: [0, x.rank - 1] + Array(1..<(x.rank - 1))) }
        var y = try standard("GlobalAveragePool").evaluate(ctx.with(opset: 1, inputs: [x]))[0]
        if channelsLast { y = try Movement.transpose(y, perm: [0] + Array(2..<y.rank) + [1]) }
        return try quantized(ctx, y, scale: 3, zero: 4, like: try ctx.input(0).dataType)
    }
    b.add1("QLinearAveragePool", domain: microsoftDomain) { ctx in
        guard try ctx.attributes.int("channels_last", 0) == 0 else { throw ctx.fail("channels_last QLinearAveragePool is not supported") }
        let y = try standard("AveragePool").evaluate(ctx.with(opset: 19, inputs: [try dequantized(ctx, 0, scale: 1, zero: 2)]))[0]
        return try quantized(ctx, y, scale: 3, zero: 4, like: try ctx.input(0).dataType)
    }
    for (op, standardOp) in [("QLinearSigmoid", "Sigmoid"), ("QLinearLeakyRelu", "LeakyRelu")] {
        b.add1(op, domain: microsoftDomain) { ctx in
            let y = try standard(standardOp).evaluate(ctx.with(opset: 16, inputs: [try dequantized(ctx, 0, scale: 1, zero: 2)]))[0]
            return try quantized(ctx, y, scale: 3, zero: 4, like: try ctx.input(0).dataType)
        }
    }
    b.add1("QLinearConcat", domain: microsoftDomain) { ctx in
        let count = ctx.inputs.count - 2
        guard count > 0, count % 3 == 0 else { throw ctx.fail("QLinearConcat takes Y_scale, Y_zero_point and triples of X, X_scale, X_zero_point") }
        let parts = try stride(from: 2, to: ctx.inputs.count, by: 3).map { try dequantized(ctx, $0, scale: $0 + 1, zero: $0 + 2) }
        let y = try standard("Concat").evaluate(ctx.with(opset: 13, inputs: parts))[0]
        return try quantized(ctx, y, scale: 0, zero: 1, like: try ctx.input(2).dataType)
    }
    b.add1("QGemm", domain: microsoftDomain) { ctx in
        let a = try dequantized(ctx, 0, scale: 1, zero: 2)
        // B's scale and zero point: one, or one per output column (of B as Gemm reads it).
        let bq = try ctx.input(3), bs = try ctx.input(4).doubles, bz = ctx.optionalInput(5)?.int64s ?? [0]
        let transB = try ctx.attributes.int("transB", 0) != 0
        guard bq.rank == 2 else { throw ctx.fail("B must be 2-D, got \(bq.shape)") }
        let n = transB ? bq.shape[0] : bq.shape[1], values = bq.doubles
        func column(_ i: Int) -> Int { transB ? i / bq.shape[1] : i % bq.shape[1] }
        guard bs.count == 1 || bs.count == n, bz.count == 1 || bz.count == n else { throw ctx.fail("b_scale / b_zero_point fit neither one value nor \(n) columns") }
        let b = try Tensor(.float, shape: bq.shape, doubles: values.indices.map { i in
            (values[i] - Double(bz[bz.count == 1 ? 0 : column(i)])) * bs[bs.count == 1 ? 0 : column(i)]
        })
        var inputs: [Tensor?] = [a, b]
        if let c = ctx.optionalInput(6) {
            // The int32 bias in units of a_scale · b_scale (per column where b_scale is).
            let aScale = try ctx.input(1).double(at: 0), cv = c.int64s
            inputs.append(try Tensor(.float, shape: c.shape, doubles: cv.indices.map { i in Double(cv[i]) * aScale * bs[bs.count == 1 ? 0 : i % n] }))
        }
        let gemm = EvalContext(name: ctx.name, opType: "Gemm", domain: "", outputCount: 1,
                               attributes: ctx.attributeValues.merging(["beta": .float(1)]) { $1 }, opset: 13, inputs: inputs) { _, _ in [] }
        let y = try standard("Gemm").evaluate(gemm)[0]
        guard ctx.optionalInput(7) != nil else { return y }
        return try quantized(ctx, y, scale: 7, zero: 8, like: try ctx.input(0).dataType)
    }
}
