import AnvilCore

/// Typed attributes of Conv, ConvTranspose and the pools, with ONNX defaults.
struct WindowAttributes {
    var kernelShape: [Int]?
    var strides: [Int]?
    var dilations: [Int]?
    var pads: [Int]?
    var autoPad: AutoPad
    var group: Int
    var ceilMode: Bool

    init(_ ctx: EvalContext) throws {
        let a = ctx.attributes
        kernelShape = try a.ints("kernel_shape")
        strides = try a.ints("strides")
        dilations = try a.ints("dilations")
        pads = try a.ints("pads")
        let pad = try a.string("auto_pad", "NOTSET")
        guard let p = AutoPad(rawValue: pad) else { throw ctx.fail("auto_pad '\(pad)' is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID") }
        autoPad = p
        group = try a.int("group", 1)
        ceilMode = try a.int("ceil_mode", 0) != 0
    }

    func geometry(_ ctx: EvalContext, input: [Int], kernel: [Int]) throws -> WindowGeometry {
        do {
            return try WindowGeometry(input: input, kernel: kernel, strides: strides, dilations: dilations, pads: pads, autoPad: autoPad, ceilMode: ceilMode)
        } catch AnvilError.invalidTensor(_, let reason) {
            throw ctx.fail(reason)
        }
    }
}

func requireRank(_ ctx: EvalContext, _ t: Tensor, atLeast r: Int, _ what: String) throws {
    guard t.rank >= r else { throw ctx.fail("\(what) must have rank ≥ \(r), got shape \(t.shape)") }
}

/// Rethrows kernel errors with the node's name attached.
func named<T>(_ ctx: EvalContext, _ body: () throws -> T) throws -> T {
    do { return try body() } catch AnvilError.invalidTensor(_, let reason) { throw ctx.fail(reason) }
}

/// Input X and the window geometry of a pool, from its attributes.
func poolWindow(_ ctx: EvalContext) throws -> (Tensor, WindowGeometry) {
    let x = try ctx.input(0)
    try requireRank(ctx, x, atLeast: 3, "input X")
    let attrs = try WindowAttributes(ctx)
    guard let kernel = attrs.kernelShape else { throw ctx.fail("attribute kernel_shape is required") }
    return (x, try attrs.geometry(ctx, input: Array(x.shape[2...]), kernel: kernel))
}

func registerNeural(_ b: inout KernelTableBuilder) {
    b.add1("Conv") { ctx in
        let x = try ctx.input(0), w = try ctx.input(1)
        try requireRank(ctx, x, atLeast: 3, "input X")
        guard w.rank == x.rank else { throw ctx.fail("weight W has shape \(w.shape), expected rank \(x.rank) like X \(x.shape)") }
        let attrs = try WindowAttributes(ctx)
        let kernel = attrs.kernelShape ?? Array(w.shape[2...])
        guard kernel == Array(w.shape[2...]) else { throw ctx.fail("kernel_shape \(kernel) disagrees with weight shape \(w.shape)") }
        let g = try attrs.geometry(ctx, input: Array(x.shape[2...]), kernel: kernel)
        if let bias = ctx.optionalInput(2), bias.count != w.shape[0] { throw ctx.fail("bias has \(bias.count) elements for \(w.shape[0]) output channels") }
        return try named(ctx) { try Linear.conv(x, w, ctx.optionalInput(2), geometry: g, group: attrs.group) }
    }
    b.add1("ConvTranspose") { ctx in
        let x = try ctx.input(0), w = try ctx.input(1)
        try requireRank(ctx, x, atLeast: 3, "input X")
        guard w.rank == x.rank else { throw ctx.fail("weight W has shape \(w.shape), expected rank \(x.rank)") }
        let a = ctx.attributes
        let attrs = try WindowAttributes(ctx)
        let nd = x.rank - 2
        let kernel = attrs.kernelShape ?? Array(w.shape[2...])
        let strides = attrs.strides ?? Array(repeating: 1, count: nd)
        let dilations = attrs.dilations ?? Array(repeating: 1, count: nd)
        let outputPadding = try a.ints("output_padding") ?? Array(repeating: 0, count: nd)
        var pads = attrs.pads ?? Array(repeating: 0, count: 2 * nd)
        let input = Array(x.shape[2...])
        guard strides.count == nd, dilations.count == nd, outputPadding.count == nd, pads.count == 2 * nd, kernel.count == nd else {
            throw ctx.fail("strides, dilations, pads or output_padding do not match \(nd) spatial dimensions")
        }
        var output = [Int](repeating: 0, count: nd)
        if let shape = try a.ints("output_shape") {
            let target = Array(shape.suffix(nd))
            for i in 0..<nd {
                let full = strides[i] * (input[i] - 1) + outputPadding[i] + (kernel[i] - 1) * dilations[i] + 1
                let total = full - target[i]
                if attrs.autoPad == .sameUpper || attrs.autoPad == .notSet && attrs.pads == nil {
                    pads[i] = total / 2; pads[i + nd] = total - total / 2
                } else {
                    pads[i] = total - total / 2; pads[i + nd] = total / 2
                }
                output[i] = target[i]
            }
        } else {
            for i in 0..<nd {
                let full = strides[i] * (input[i] - 1) + outputPadding[i] + (kernel[i] - 1) * dilations[i] + 1
                if attrs.autoPad == .sameUpper || attrs.autoPad == .sameLower {
                    output[i] = input[i] * strides[i]
                    let total = max(0, full - output[i])
                    pads[i] = attrs.autoPad == .sameUpper ? total / 2 : total - total / 2
                    pads[i + nd] = total - pads[i]
                } else {
                    if attrs.autoPad == .valid { pads[i] = 0; pads[i + nd] = 0 }
                    output[i] = full - pads[i] - pads[i + nd]
                }
            }
        }
        guard output.allSatisfy({ $0 >= 0 }) else { throw ctx.fail("computed output size \(output) is negative") }
        return try named(ctx) {
            try Linear.convTranspose(x, w, ctx.optionalInput(2), strides: strides, dilations: dilations,
                                     padsBegin: Array(pads[0..<nd]), outputSpatial: output, group: attrs.group)
        }
    }
    b.add1("MatMul") { ctx in try named(ctx) { try Linear.matmul(ctx.input(0), ctx.input(1)) } }
    b.add1("Gemm") { ctx in
        let a = ctx.attributes
        var c = ctx.optionalInput(2)
        if ctx.opset < 7, let t = c, try a.int("broadcast", 0) == 0, t.rank == 2 { c = t }
        return try named(ctx) {
            try Linear.gemm(ctx.input(0), ctx.input(1), c, alpha: a.float("alpha", 1), beta: a.float("beta", 1),
                            transA: a.int("transA", 0) != 0, transB: a.int("transB", 0) != 0)
        }
    }
    b.add1("Det", since: 11) { ctx in
        let x = try ctx.input(0)
        guard x.rank >= 2, x.shape[x.rank - 1] == x.shape[x.rank - 2] else { throw ctx.fail("input must be [..., M, M], got \(x.shape)") }
        let n = x.shape[x.rank - 1]
        let v = x.doubles
        let count = x.count / max(n * n, 1)
        let dets = (0..<count).map { m -> Double in
            var a = Array(v[(m * n * n)..<((m + 1) * n * n)])
            var det = 1.0
            for c in 0..<n {
                let pivot = (c..<n).max { abs(a[$0 * n + c]) < abs(a[$1 * n + c]) }!
                if a[pivot * n + c] == 0 { return 0 }
                if pivot != c { for k in 0..<n { a.swapAt(c * n + k, pivot * n + k) }; det = -det }
                det *= a[c * n + c]
                for r in (c + 1)..<max(n, c + 1) {
                    let f = a[r * n + c] / a[c * n + c]
                    for k in c..<n { a[r * n + k] -= f * a[c * n + k] }
                }
            }
            return det
        }
        return try Tensor(x.dataType, shape: Array(x.shape.dropLast(2)), doubles: dets)
    }
    b.add("BatchNormalization") { ctx in
        let x = try ctx.input(0)
        let epsilon = try ctx.attributes.float("epsilon", 1e-5)
        let training = try ctx.opset >= 14 && ctx.attributes.int("training_mode", 0) != 0
        guard training else {
            return [try named(ctx) {
                try Normalization.batchNorm(x, scale: ctx.input(1), bias: ctx.input(2), mean: ctx.input(3), variance: ctx.input(4), epsilon: epsilon)
            }]
        }
        // Training mode normalizes with the batch statistics and updates the running ones.
        try requireRank(ctx, x, atLeast: 2, "input X")
        let axes = [0] + Array(2..<x.rank)
        let mean = try Reduce.reduce(x, axes: axes, keepDims: false, kind: .mean)
        let centered = try Elementwise.arithmetic(x, mean.reshaped([x.shape[1]] + Array(repeating: 1, count: x.rank - 2)), op: "BatchNormalization", float: -, integer: &-)
        let variance = try Reduce.reduce(centered, axes: axes, keepDims: false, kind: .sumSquare).mapFloating { $0 / Double(x.count / max(x.shape[1], 1)) }
        let momentum = try Double(ctx.attributes.float("momentum", 0.9))
        func blend(_ running: Tensor, _ current: Tensor) throws -> Tensor {
            try Elementwise.arithmetic(running, current.cast(to: running.dataType), op: "BatchNormalization",
                                       float: { $0 * momentum + $1 * (1 - momentum) }, integer: { a, _ in a })
        }
        let y = try named(ctx) {
            try Normalization.batchNorm(x, scale: ctx.input(1), bias: ctx.input(2), mean: mean, variance: variance, epsilon: epsilon)
        }
        return [y, try blend(ctx.input(3), mean), try blend(ctx.input(4), variance)]
    }
    b.add1("InstanceNormalization") { ctx in
        try named(ctx) { try Normalization.instanceNorm(ctx.input(0), scale: ctx.input(1), bias: ctx.input(2), epsilon: ctx.attributes.float("epsilon", 1e-5)) }
    }
    b.add("LayerNormalization", since: 17) { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: x.rank)
        let outs = try named(ctx) {
            try Normalization.layerNorm(x, scale: ctx.input(1), bias: ctx.optionalInput(2), axis: axis, epsilon: ctx.attributes.float("epsilon", 1e-5))
        }
        return Array(outs.prefix(max(1, ctx.outputCount)))
    }
    b.add1("RMSNormalization", since: 23) { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: x.rank)
        return try named(ctx) { try Normalization.rmsNorm(x, scale: ctx.input(1), axis: axis, epsilon: ctx.attributes.float("epsilon", 1e-5)) }
    }
    b.add1("GroupNormalization", since: 18) { ctx in
        guard let groups = try ctx.attributes.int("num_groups") else { throw ctx.fail("attribute num_groups is required") }
        return try named(ctx) {
            try Normalization.groupNorm(ctx.input(0), scale: ctx.input(1), bias: ctx.input(2), groups: groups,
                                        epsilon: ctx.attributes.float("epsilon", 1e-5), perGroupAffine: ctx.opset < 21)
        }
    }
    b.add1("LRN") { ctx in
        guard let size = try ctx.attributes.int("size"), size > 0 else { throw ctx.fail("attribute size is required and must be positive") }
        let a = ctx.attributes
        return try Normalization.lrn(ctx.input(0), size: size, alpha: a.float("alpha", 1e-4), beta: a.float("beta", 0.75), bias: a.float("bias", 1))
    }
    b.add1("LpNormalization") { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: x.rank)
        let p = try ctx.attributes.int("p", 2)
        guard p == 1 || p == 2 else { throw ctx.fail("p must be 1 or 2, found \(p)") }
        let norm = try Reduce.reduce(x, axes: [axis], keepDims: true, kind: p == 1 ? .l1 : .l2)
        return try Elementwise.arithmetic(x, norm, op: "LpNormalization", float: { $1 == 0 ? 0 : $0 / $1 }, integer: { $1 == 0 ? 0 : $0 / $1 })
    }
    for (name, kind) in [("Softmax", "softmax"), ("LogSoftmax", "log"), ("Hardmax", "hardmax")] {
        b.add1(name) { ctx in
            let x = try ctx.input(0)
            let coerced = ctx.opset < 13
            let axis = try ctx.axis(ctx.attributes.int("axis", coerced ? 1 : -1), rank: x.rank)
            return try Normalization.softmax(x, axis: axis, coerced2D: coerced, kind: kind)
        }
    }
    b.add("MaxPool") { ctx in
        let (x, g) = try poolWindow(ctx)
        let columnMajor = try ctx.attributes.int("storage_order", 0) == 1
        let (y, indices) = try named(ctx) { try Pooling.maxPool(x, geometry: g, columnMajorIndices: columnMajor) }
        return ctx.outputCount > 1 ? [y, indices] : [y]
    }
    b.add1("AveragePool") { ctx in
        let (x, g) = try poolWindow(ctx)
        return try Pooling.averagePool(x, geometry: g, countIncludePad: ctx.attributes.int("count_include_pad", 0) != 0)
    }
    b.add1("LpPool") { ctx in
        let (x, g) = try poolWindow(ctx)
        return try Pooling.lpPool(x, geometry: g, p: Double(ctx.attributes.int("p", 2)))
    }
    b.add1("GlobalAveragePool") { ctx in try named(ctx) { try Pooling.global(ctx.input(0), kind: "avg") } }
    b.add1("GlobalMaxPool") { ctx in try named(ctx) { try Pooling.global(ctx.input(0), kind: "max") } }
    b.add1("GlobalLpPool") { ctx in try named(ctx) { try Pooling.global(ctx.input(0), kind: "lp", p: Double(ctx.attributes.int("p", 2))) } }
    b.add1("MaxUnpool", since: 9) { ctx in
        let x = try ctx.input(0), indices = try ctx.input(1).int64s
        var out: [Int]
        if let shape = ctx.optionalInput(2) {
            out = shape.int64s.map { Int($0) }
        } else {
            let attrs = try WindowAttributes(ctx)
            guard let kernel = attrs.kernelShape else { throw ctx.fail("attribute kernel_shape is required") }
            let nd = x.rank - 2
            let strides = attrs.strides ?? Array(repeating: 1, count: nd), pads = attrs.pads ?? Array(repeating: 0, count: 2 * nd)
            out = Array(x.shape[0..<2]) + (0..<nd).map { (x.shape[$0 + 2] - 1) * strides[$0] + kernel[$0] - pads[$0] - pads[$0 + nd] }
        }
        let n = try MemoryPolicy.checkedCount(out, x.dataType, for: "the output")
        var source = [Int](repeating: x.count, count: n)
        for (k, i) in indices.enumerated() {
            guard i >= 0, Int(i) < n else { throw ctx.fail("index \(i) is outside the output of \(n) elements") }
            source[Int(i)] = k
        }
        return try x.reshaped([x.count]).appending(Tensor.zeros(x.dataType, shape: [1])).gathered(source, shape: out)
    }
    b.add("Dropout") { ctx in
        let x = try ctx.input(0)
        if ctx.opset >= 12, let training = ctx.optionalInput(2), training.bools.first == true,
           let ratio = ctx.optionalInput(1), ratio.double(at: 0) != 0 {
            throw ctx.fail("training_mode=true with a nonzero ratio is random; Anvil runs inference graphs")
        }
        var outs = [x]
        if ctx.outputCount > 1 { outs.append(try Tensor(bools: Array(repeating: true, count: x.count), shape: x.shape)) }
        return outs
    }
}

func registerAttention(_ b: inout KernelTableBuilder) {
    b.add("Attention", since: 23) { ctx in
        let a = ctx.attributes
        var p = AttentionKernel.Parameters()
        p.scale = try a.float("scale").map { Double($0) }
        p.isCausal = try a.int("is_causal", 0) != 0
        p.qHeads = try a.int("q_num_heads")
        p.kvHeads = try a.int("kv_num_heads")
        p.softcap = Double(try a.float("softcap", 0))
        p.qkOutputMode = try a.int("qk_matmul_output_mode", 0)
        p.leftWindow = try a.int("left_window_size", -1)
        p.rightWindow = try a.int("right_window_size", -1)
        guard (0...3).contains(p.qkOutputMode) else { throw ctx.fail("qk_matmul_output_mode \(p.qkOutputMode) is not 0, 1, 2 or 3") }
        let outs = try named(ctx) {
            try AttentionKernel.run(q: ctx.input(0), k: ctx.input(1), v: ctx.input(2), mask: ctx.optionalInput(3),
                                    pastKey: ctx.optionalInput(4), pastValue: ctx.optionalInput(5),
                                    nonpadKVLength: ctx.optionalInput(6), p)
        }
        return Array(outs.prefix(ctx.outputCount))
    }
    b.add1("RotaryEmbedding", since: 23) { ctx in try rotaryEmbedding(ctx) }
}

/// RotaryEmbedding on [B, S, hidden] (with num_heads) or [B, H, S, D] inputs.
func rotaryEmbedding(_ ctx: EvalContext) throws -> Tensor {
    let x = try ctx.input(0), cosCache = try ctx.input(1), sinCache = try ctx.input(2)
    let positions = ctx.optionalInput(3)?.int64s.map { Int($0) }
    let interleaved = try ctx.attributes.int("interleaved", 0) != 0
    let heads = try ctx.attributes.int("num_heads", 0)
    guard x.rank == 3 || x.rank == 4 else { throw ctx.fail("input must be 3-D or 4-D, got \(x.shape)") }
    let batch = x.shape[0]
    let (seq, h, d) = x.rank == 4 ? (x.shape[2], x.shape[1], x.shape[3]) : (x.shape[1], heads, heads > 0 ? x.shape[2] / heads : 0)
    guard h > 0, d > 0, x.rank == 4 || h * d == x.shape[2] else { throw ctx.fail("num_heads \(heads) does not divide hidden size \(x.shape)") }
    var rotary = try ctx.attributes.int("rotary_embedding_dim", 0)
    if rotary == 0 { rotary = d }
    let half = rotary / 2
    guard rotary <= d, rotary % 2 == 0, cosCache.shape.last == half, sinCache.shape.last == half else {
        throw ctx.fail("caches \(cosCache.shape) do not fit rotary dimension \(rotary)")
    }
    let cv = cosCache.doubles, sv = sinCache.doubles, xv = x.doubles
    func cacheRow(_ b: Int, _ s: Int) throws -> Int {
        if let positions {
            let p = positions[b * seq + s]
            guard p >= 0, p < cosCache.shape[0] else { throw ctx.fail("position \(p) is outside the cache of \(cosCache.shape[0])") }
            return p
        }
        return b * seq + s
    }
    var out = xv
    for b in 0..<batch { for s in 0..<seq {
        let row = try cacheRow(b, s)
        for hh in 0..<h {
            let base = x.rank == 4 ? ((b * h + hh) * seq + s) * d : ((b * seq + s) * h + hh) * d
            for i in 0..<half {
                let (p, q) = interleaved ? (base + 2 * i, base + 2 * i + 1) : (base + i, base + i + half)
                let c = cv[row * half + i], sn = sv[row * half + i]
                out[p] = c * xv[p] - sn * xv[q]
                out[q] = sn * xv[p] + c * xv[q]
            }
        }
    } }
    return try Tensor(x.dataType, shape: x.shape, doubles: out)
}
