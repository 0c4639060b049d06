import AnvilCore
import AnvilIR
import AnvilKernels

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

func registerMisc(_ b: inout RegistryBuilder) {
    b.add1("QuantizeLinear", since: 10) { ctx in
        let x = try ctx.input(0), scale = try ctx.input(1)
        let zp = ctx.optionalInput(2)
        let requested = try ctx.attributes.int("output_dtype").flatMap { DataType(rawValue: Int32(clamping: $0)) }
        let outType = zp?.dataType ?? requested ?? .uint8
        guard let (lo, hi) = quantRange(outType) else { throw ctx.fail("quantizing to \(outType) is not supported") }
        let axis = try ctx.attributes.int("axis", 1), block = try ctx.attributes.int("block_size", 0)
        let s = try quantParameter(ctx, scale, like: x, axis: axis, blockSize: block)
        let z = try zp.map { try quantParameter(ctx, $0, like: x, axis: axis, blockSize: block) } ?? Array(repeating: 0, count: x.count)
        let xs = x.doubles
        let q = (0..<x.count).map { i -> Int64 in
            let v = (xs[i] / s[i]).rounded(.toNearestOrEven) + z[i]
            return Int64(v.isNaN ? 0 : min(max(v, lo), hi))
        }
        return try Tensor(outType, shape: x.shape, int64s: q)
    }
    b.add1("DequantizeLinear", since: 10) { ctx in
        let x = try ctx.input(0), scale = try ctx.input(1)
        let axis = try ctx.attributes.int("axis", 1), block = try ctx.attributes.int("block_size", 0)
        let s = try quantParameter(ctx, scale, like: x, axis: axis, blockSize: block)
        let z = try ctx.optionalInput(2).map { try quantParameter(ctx, $0, like: x, axis: axis, blockSize: block) } ?? Array(repeating: 0, count: x.count)
        let xs = x.doubles
        return try Tensor(scale.dataType, shape: x.shape, doubles: (0..<x.count).map { (xs[$0] - z[$0]) * s[$0] })
    }
    b.add("DynamicQuantizeLinear", since: 11) { ctx in
        let x = try ctx.input(0)
        // Float arithmetic, as the specification's float32 formula.
        let xs = x.floats
        let lo = min(0, xs.min() ?? 0), hi = max(0, xs.max() ?? 0)
        let scale: Float = (hi - lo) / 255
        let zp: Float = scale == 0 ? 0 : min(max((0 - lo / scale).rounded(.toNearestOrEven), 0), 255)
        let q = xs.map { v -> Int64 in scale == 0 ? Int64(zp) : Int64(min(max((v / scale).rounded(.toNearestOrEven) + zp, 0), 255)) }
        return [try Tensor(.uint8, shape: x.shape, int64s: q), try Tensor(.float, shape: [], floats: [scale]),
                try Tensor(.uint8, shape: [], int64s: [Int64(zp)])]
    }
    b.add1("MatMulInteger", since: 10) { ctx in
        let a = try ctx.input(0), bm = try ctx.input(1)
        let az = ctx.optionalInput(2)?.int64s.first ?? 0, bz = ctx.optionalInput(3)?.int64s.first ?? 0
        let ad = try Tensor(.double, shape: a.shape, doubles: a.int64s.map { Double($0 - az) })
        let bd = try Tensor(.double, shape: bm.shape, doubles: bm.int64s.map { Double($0 - bz) })
        let p = try named(ctx) { try Linear.matmul(ad, bd) }
        return try Tensor(.int32, shape: p.shape, int64s: p.doubles.map { Int64($0) })
    }
}
