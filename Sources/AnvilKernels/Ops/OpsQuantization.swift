import AnvilCore

/// Broadcasts a per-tensor, per-axis or blocked quantization parameter to the input's shape.
func quantParameter(_ ctx: EvalContext, _ p: Tensor, like x: Tensor, axis: Int, blockSize: Int) throws -> [Double] {
    if p.count == 1 { return Array(repeating: p.double(at: 0), count: x.count) }
    let a = try ctx.axis(axis, rank: x.rank)
    let values = p.doubles
    if p.rank == 1 && blockSize == 0 {
        guard p.count == x.shape[a] else { throw ctx.fail("quantization parameter has \(p.count) entries for axis size \(x.shape[a])") }
        let inner = x.shape[(a + 1)...].reduce(1, *)
        return (0..<x.count).map { values[($0 / inner) % x.shape[a]] }
    }
    guard blockSize > 0, p.rank == x.rank else { throw ctx.fail("quantization parameter shape \(p.shape) does not fit input \(x.shape)") }
    let ps = ShapeMath.strides(p.shape)
    var out = [Double](repeating: 0, count: x.count)
    var i = 0
    Indexing.forEachIndex(x.shape) { idx in
        var flat = 0
        for d in 0..<idx.count { flat += (d == a ? idx[d] / blockSize : idx[d]) * ps[d] }
        out[i] = values[flat]
        i += 1
    }
    return out
}

/// What is wrong with a QuantizeLinear or DequantizeLinear node's parameters, nil when
/// nothing: a scale of 0, NaN or ±∞ (every quantized value would be 0, NaN or saturated),
/// or a nonzero zero point for int32 input, which the specification fixes at 0. Checked
/// when the node runs and, for constant parameters, by the builder before anything is built.
public func quantizationProblem(scale: Tensor, zeroPoint: Tensor?, input: DataType?) -> String? {
    if scale.dataType.isFloatingPoint, let i = scale.doubles.firstIndex(where: { $0 == 0 || !$0.isFinite }) {
        return "its scale holds \(scale.doubles[i]) at index \(i): scales must be finite and nonzero"
    }
    if input == .int32, let zeroPoint, let i = zeroPoint.doubles.firstIndex(where: { $0 != 0 }) {
        return "its zero point holds \(zeroPoint.doubles[i]) at index \(i) for int32 input: the zero point of int32 input must be 0"
    }
    return nil
}

/// Range of an integer quantized type.
func quantRange(_ t: DataType) -> (Double, Double)? {
    switch t {
    case .uint8: (0, 255)
    case .int8: (-128, 127)
    case .uint16: (0, 65535)
    case .int16: (-32768, 32767)
    case .int32: (-2147483648, 2147483647)
    default: nil
    }
}

func registerQuantization(_ b: inout KernelTableBuilder) {
    b.add1("QuantizeLinear", since: 10) { ctx in
        let x = try ctx.input(0), scale = try ctx.input(1)
        let zp = ctx.optionalInput(2)
        let requested = try ctx.attributes.int("output_dtype").flatMap { DataType(rawValue: Int32(clamping: $0)) }
        let outType = zp?.dataType ?? requested ?? .uint8
        guard let (lo, hi) = quantRange(outType) else { throw ctx.fail("quantizing to \(outType) is not supported") }
        let axis = try ctx.attributes.int("axis", 1), block = try ctx.attributes.int("block_size", 0)
        if let problem = quantizationProblem(scale: scale, zeroPoint: zp, input: nil) { throw ctx.fail(problem) }
        let s = try quantParameter(ctx, scale, like: x, axis: axis, blockSize: block)
        let z = try zp.map { try quantParameter(ctx, $0, like: x, axis: axis, blockSize: block) } ?? Array(repeating: 0, count: x.count)
        let xs = x.doubles
        // x / y_scale in the input's precision (float32 unless the input is double), as ONNX
        // Runtime divides: in double a float32 quotient that lies on .5 can land either side of it.
        let single = x.dataType != .double
        let q = (0..<x.count).map { i -> Int64 in
            let quotient = single ? Double(Float(xs[i]) / Float(s[i])) : xs[i] / s[i]
            let v = quotient.rounded(.toNearestOrEven) + z[i]
            return Int64(v.isNaN ? 0 : min(max(v, lo), hi))
        }
        return try Tensor(outType, shape: x.shape, int64s: q)
    }
    b.add1("DequantizeLinear", since: 10) { ctx in
        let x = try ctx.input(0), scale = try ctx.input(1)
        let axis = try ctx.attributes.int("axis", 1), block = try ctx.attributes.int("block_size", 0)
        if let problem = quantizationProblem(scale: scale, zeroPoint: ctx.optionalInput(2), input: x.dataType) { throw ctx.fail(problem) }
        let s = try quantParameter(ctx, scale, like: x, axis: axis, blockSize: block)
        let z = try ctx.optionalInput(2).map { try quantParameter(ctx, $0, like: x, axis: axis, blockSize: block) } ?? Array(repeating: 0, count: x.count)
        let xs = x.doubles
        return try Tensor(scale.dataType, shape: x.shape, doubles: (0..<x.count).map { (xs[$0] - z[$0]) * s[$0] })
    }
    b.add("DynamicQuantizeLinear", since: 11) { ctx in
        let x = try ctx.input(0)
        // Float arithmetic, as the specification's float32 formula.
        let xs = x.floats
        // NaN does not widen the range (it quantizes to the zero point below).
        let finite = xs.filter { !$0.isNaN }
        let lo = min(0, finite.min() ?? 0), hi = max(0, finite.max() ?? 0)
        let scale: Float = (hi - lo) / 255
        // An infinite range gives an undefined zero point (-inf / inf): 0 then.
        let unclamped = (0 - lo / scale).rounded(.toNearestOrEven)
        let zp: Float = scale == 0 || unclamped.isNaN ? 0 : min(max(unclamped, 0), 255)
        let q = xs.map { v -> Int64 in
            let r = (v / scale).rounded(.toNearestOrEven) + zp
            return scale == 0 || r.isNaN ? Int64(zp) : Int64(min(max(r, 0), 255))
        }
        return [try Tensor(.uint8, shape: x.shape, int64s: q), try Tensor(.float, shape: [], floats: [scale]),
                try Tensor(.uint8, shape: [], int64s: [Int64(zp)])]
    }
    b.add1("MatMulInteger", since: 10) { ctx in
        let a = try ctx.input(0), bm = try ctx.input(1)
        let av = try subtractZeroPoint(ctx, a, ctx.optionalInput(2), axis: a.rank - 2, perRow: true)
        let bv = try subtractZeroPoint(ctx, bm, ctx.optionalInput(3), axis: bm.rank - 1, perRow: false)
        let r = try named(ctx) { try Linear.matmulInteger(av, aShape: a.shape, bv, bShape: bm.shape) }
        return try Tensor(.int32, shape: r.shape, int64s: r.values)
    }
    b.add1("ConvInteger", since: 10) { ctx in
        let (y, shape) = try integerConvolution(ctx, x: 0, xZero: 2, w: 1, wZero: 3)
        return try Tensor(.int32, shape: shape, int64s: y)
    }
    b.add1("QLinearConv", since: 10) { ctx in
        let (real, shape) = try quantizedConvolution(ctx)
        return try requantize(ctx, real, shape: shape, scale: try ctx.input(6).double(at: 0), zeroPoint: ctx.optionalInput(7), like: .uint8)
    }
    b.add1("QLinearMatMul", since: 10) { ctx in
        let (real, shape) = try quantizedMatMul(ctx)
        return try requantize(ctx, real, shape: shape, scale: ctx.input(6).double(at: 0), zeroPoint: ctx.optionalInput(7), like: try ctx.input(0).dataType)
    }
}

/// QLinearMatMul's result before requantization, in real units; with `bias` (int32, one per
/// column, in units of a_scale · b_scale) added.
func quantizedMatMul(_ ctx: EvalContext, bias: Tensor? = nil) throws -> (real: [Double], shape: [Int]) {
    let a = try ctx.input(0), bm = try ctx.input(3)
    let av = try subtractZeroPoint(ctx, a, ctx.input(2), axis: a.rank - 2, perRow: true)
    let bv = try subtractZeroPoint(ctx, bm, ctx.input(5), axis: bm.rank - 1, perRow: false)
    let r = try named(ctx) { try Linear.matmulInteger(av, aShape: a.shape, bv, bShape: bm.shape) }
    let aScale = try ctx.input(1).doubles, bScale = try ctx.input(4).doubles
    let n = r.shape.last ?? 1, m = r.shape.count >= 2 ? r.shape[r.shape.count - 2] : 1
    let b = bias?.int64s
    if let b, b.count != n { throw ctx.fail("bias has \(b.count) values for \(n) columns") }
    let real = r.values.indices.map { i -> Double in
        let row = (i / n) % m, col = i % n
        return Double(r.values[i] + (b?[col] ?? 0)) * aScale[aScale.count == 1 ? 0 : row] * bScale[bScale.count == 1 ? 0 : col]
    }
    return (real, r.shape)
}

/// The integer values of `t` minus its zero point, which is a scalar or one value
/// per entry of `axis` (rows of A when `perRow`, else columns / output channels).
func subtractZeroPoint(_ ctx: EvalContext, _ t: Tensor, _ zeroPoint: Tensor?, axis: Int, perRow: Bool) throws -> [Int64] {
    let v = t.int64s
    guard let zeroPoint, zeroPoint.count > 0 else { return v }
    let z = zeroPoint.int64s
    if z.count == 1 { return v.map { $0 - z[0] } }
    guard axis >= 0, axis < t.rank, z.count == t.shape[axis] else {
        throw ctx.fail("zero point has \(z.count) values, which fits no axis of \(t.shape)")
    }
    let inner = t.shape[(axis + 1)...].reduce(1, *)
    return v.indices.map { v[$0] - z[($0 / inner) % t.shape[axis]] }
}

/// Rounds real values to the quantized type of the zero point (or `like`), saturating.
func requantize(_ ctx: EvalContext, _ real: [Double], shape: [Int], scale: Double, zeroPoint: Tensor?, like: DataType) throws -> Tensor {
    let type = zeroPoint?.dataType ?? like
    guard let (lo, hi) = quantRange(type) else { throw ctx.fail("cannot quantize to \(type)") }
    let z = Double(zeroPoint?.int64s.first ?? 0)
    // NaN (a NaN input, or 0 / 0 with a zero scale) has no integer: it becomes the zero point.
    let q = real.map { x -> Int64 in
        let r = (x / scale).rounded(.toNearestOrEven) + z
        return r.isNaN ? Int64(z) : Int64(min(max(r, lo), hi))
    }
    return try Tensor(type, shape: shape, int64s: q)
}

/// QLinearConv's result before requantization, in real units: the exact integer convolution of
/// the inputs less their zero points, plus the int32 bias, times x_scale · w_scale (per
/// output channel).
func quantizedConvolution(_ ctx: EvalContext) throws -> (real: [Double], shape: [Int]) {
    var (acc, shape) = try integerConvolution(ctx, x: 0, xZero: 2, w: 3, wZero: 5)
    let cout = shape[1], outSize = shape[2...].reduce(1, *)
    if let bias = ctx.optionalInput(8) {
        let bv = bias.int64s
        guard bv.count == cout else { throw ctx.fail("bias has \(bv.count) values for \(cout) output channels") }
        for i in 0..<acc.count { acc[i] += bv[(i / outSize) % cout] }
    }
    let xs = try ctx.input(1).double(at: 0)
    let ws = try ctx.input(4).doubles
    guard ws.count == 1 || ws.count == cout else { throw ctx.fail("w_scale has \(ws.count) values for \(cout) output channels") }
    let real = acc.indices.map { Double(acc[$0]) * xs * ws[ws.count == 1 ? 0 : ($0 / outSize) % cout] }
    return (real, shape)
}

/// The exact integer convolution of inputs `x` and `w` less their zero points (absent: 0), with
/// the op's window attributes: the int32-range sums and the output shape.
func integerConvolution(_ ctx: EvalContext, x xi: Int, xZero: Int, w wi: Int, wZero: Int) throws -> (values: [Int64], shape: [Int]) {
    let x = try ctx.input(xi), w = try ctx.input(wi)
    let attrs = try WindowAttributes(ctx)
    let g = try attrs.geometry(ctx, input: Array(x.shape[2...]), kernel: attrs.kernelShape ?? Array(w.shape[2...]))
    let xv = try subtractZeroPoint(ctx, x, ctx.optionalInput(xZero), axis: 1, perRow: false)
    let wv = try subtractZeroPoint(ctx, w, ctx.optionalInput(wZero), axis: 0, perRow: false)
    let y = try named(ctx) { try Linear.convInteger(xv, xShape: x.shape, wv, wShape: w.shape, geometry: g, group: attrs.group) }
    return (y, [x.shape[0], w.shape[0]] + g.output)
}
