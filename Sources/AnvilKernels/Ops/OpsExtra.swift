import AnvilCore
import Foundation

/// Detection, losses, windows and the smaller ops of newer opsets.
func registerExtra(_ b: inout KernelTableBuilder) {
    b.add1("NonMaxSuppression", since: 10) { ctx in
        let maxPerClass = ctx.optionalInput(2).map { Int(clamping: $0.int64s.first ?? 0) } ?? 0
        let iou = ctx.optionalInput(3).map { $0.count > 0 ? $0.double(at: 0) : 0 } ?? 0
        let threshold = ctx.optionalInput(4).flatMap { $0.count > 0 ? $0.double(at: 0) : nil }
        return try named(ctx) {
            try Detection.nonMaxSuppression(boxes: ctx.input(0), scores: ctx.input(1), maxPerClass: maxPerClass, iouThreshold: iou,
                                            scoreThreshold: threshold, centerPointBox: ctx.attributes.int("center_point_box", 0) == 1)
        }
    }
    b.add1("Swish", since: 24) { ctx in
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        return try ctx.input(0).mapFloating { $0 / (1 + Foundation.exp(-alpha * $0)) }
    }
    b.add1("SwiGLU", since: 25) { ctx in
        let a = try ctx.input(0), g = try ctx.input(1)
        guard a.shape == g.shape else { throw ctx.fail("A \(a.shape) and B \(g.shape) must have the same shape") }
        let alpha = Double(try ctx.attributes.float("alpha", 1))
        let swish = try a.mapFloating { $0 / (1 + Foundation.exp(-alpha * $0)) }
        return try Elementwise.arithmetic(swish, g, op: "SwiGLU", float: *, integer: &*)
    }
    b.add1("LpNormalization") { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: x.rank)
        let p = try ctx.attributes.int("p", 2)
        guard p == 1 || p == 2 else { throw ctx.fail("p must be 1 or 2, found \(p)") }
        let norm = try Reduce.reduce(x, axes: [axis], keepDims: true, kind: p == 1 ? .l1 : .l2)
        return try Elementwise.arithmetic(x, norm, op: "LpNormalization", float: { $1 == 0 ? 0 : $0 / $1 }, integer: { $1 == 0 ? 0 : $0 / $1 })
    }
    b.add1("Compress", since: 9) { ctx in
        let x = try ctx.input(0)
        let condition = try ctx.input(1).bools
        guard let a = try ctx.attributes.int("axis") else {
            let picks = condition.prefix(x.count).enumerated().filter { $0.element }.map(\.offset)
            return try x.gathered(picks, shape: [picks.count])
        }
        let axis = try ctx.axis(a, rank: x.rank)
        guard condition.count <= x.shape[axis] else { throw ctx.fail("condition has \(condition.count) entries for axis size \(x.shape[axis])") }
        let keep = condition.enumerated().filter { $0.element }.map { Int64($0.offset) }
        return try Movement.gather(x, indices: Tensor(int64s: keep, shape: [keep.count]), axis: axis)
    }
    b.add1("ReverseSequence", since: 10) { ctx in
        let x = try ctx.input(0)
        let lengths = try ctx.input(1).int64s.map { Int($0) }
        let batchAxis = try ctx.attributes.int("batch_axis", 1), timeAxis = try ctx.attributes.int("time_axis", 0)
        guard Set([batchAxis, timeAxis]) == Set([0, 1]), x.rank >= 2, lengths.count == x.shape[batchAxis] else {
            throw ctx.fail("batch_axis \(batchAxis), time_axis \(timeAxis) and sequence_lens \(lengths) do not fit \(x.shape)")
        }
        let strides = ShapeMath.strides(x.shape)
        var idx: [Int] = []
        Indexing.forEachIndex(x.shape) { i in
            var j = i
            let len = min(max(lengths[i[batchAxis]], 0), x.shape[timeAxis])
            if i[timeAxis] < len { j[timeAxis] = len - 1 - i[timeAxis] }
            idx.append(zip(j, strides).reduce(0) { $0 + $1.0 * $1.1 })
        }
        return try x.gathered(idx, shape: x.shape)
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
    let windows: [(String, @Sendable (Double, Double) -> Double)] = [
        ("HannWindow", { n, N in 0.5 - 0.5 * Foundation.cos(2 * .pi * n / N) }),
        ("HammingWindow", { n, N in 25.0 / 46 - (1 - 25.0 / 46) * Foundation.cos(2 * .pi * n / N) }),
        ("BlackmanWindow", { n, N in 0.42 - 0.5 * Foundation.cos(2 * .pi * n / N) + 0.08 * Foundation.cos(4 * .pi * n / N) }),
    ]
    for (name, f) in windows {
        b.add1(name, since: 17) { ctx in
            let size = Int(clamping: try ctx.input(0).int64s.first ?? 0)
            guard size >= 0, size <= 1 << 30 else { throw ctx.fail("size \(size) is invalid") }
            let periodic = try ctx.attributes.int("periodic", 1) != 0
            let type = DataType(rawValue: Int32(try ctx.attributes.int("output_datatype", 1))) ?? .float
            let denominator = Double(periodic ? size : size - 1)
            return try Tensor(type, shape: [size], doubles: (0..<size).map { f(Double($0), denominator) })
        }
    }
    b.add1("BitCast", since: 26) { ctx in
        let x = try ctx.input(0)
        guard let to = try ctx.attributes.int("to"), let type = DataType(rawValue: Int32(clamping: to)), type != .string, x.dataType != .string else {
            throw ctx.fail("attribute 'to' must name a non-string type")
        }
        guard type.byteSize == x.dataType.byteSize else { throw ctx.fail("\(x.dataType) and \(type) differ in width") }
        return try x.littleEndianBytes().withUnsafeBytes { try Tensor.fromLittleEndian(type, shape: x.shape, bytes: $0, name: ctx.name) }
    }
    b.add("NegativeLogLikelihoodLoss", since: 12) { ctx in
        [try negativeLogLikelihood(ctx, logProbabilities: ctx.input(0), target: ctx.input(1), weight: ctx.optionalInput(2))]
    }
    b.add("SoftmaxCrossEntropyLoss", since: 12) { ctx in
        let scores = try ctx.input(0)
        guard scores.rank >= 2 else { throw ctx.fail("scores must have rank ≥ 2, got \(scores.shape)") }
        let logProbabilities = try Normalization.softmax(scores, axis: 1, coerced2D: false, kind: "log")
        let loss = try negativeLogLikelihood(ctx, logProbabilities: logProbabilities, target: ctx.input(1), weight: ctx.optionalInput(2))
        return ctx.outputCount > 1 ? [loss, logProbabilities] : [loss]
    }
    b.add("Unique", since: 11) { ctx in try unique(ctx) }
    b.add1("RotaryEmbedding", since: 23) { ctx in try rotaryEmbedding(ctx) }
    b.add1("CenterCropPad", since: 18) { ctx in
        let x = try ctx.input(0)
        let target = try intsInput(ctx, 1)
        let axes = try (ctx.attributes.ints("axes") ?? Array(0..<x.rank)).map { try ctx.axis($0, rank: x.rank) }
        guard target.count == axes.count else { throw ctx.fail("shape has \(target.count) entries for \(axes.count) axes") }
        var offsets = [Int](repeating: 0, count: x.rank), out = x.shape
        for (k, a) in axes.enumerated() { out[a] = target[k]; offsets[a] = (x.shape[a] - target[k]) / 2 }
        let strides = ShapeMath.strides(x.shape)
        var idx: [Int] = []
        Indexing.forEachIndex(out) { o in
            var s = 0
            for d in 0..<o.count {
                let i = o[d] + (offsets[d] >= 0 ? offsets[d] : -((out[d] - x.shape[d]) / 2))
                if i < 0 || i >= x.shape[d] { s = -1; break }
                s += i * strides[d]
            }
            idx.append(s < 0 ? x.count : s)
        }
        return try x.reshaped([x.count]).appending(Tensor.zeros(x.dataType, shape: [1])).gathered(idx, shape: out)
    }
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
        guard let n = ShapeMath.elementCount(out) else { throw ctx.fail("output shape \(out) is invalid") }
        var source = [Int](repeating: x.count, count: n)
        for (k, i) in indices.enumerated() {
            guard i >= 0, Int(i) < n else { throw ctx.fail("index \(i) is outside the output of \(n) elements") }
            source[Int(i)] = k
        }
        return try x.reshaped([x.count]).appending(Tensor.zeros(x.dataType, shape: [1])).gathered(source, shape: out)
    }
}

/// NegativeLogLikelihoodLoss on log-probabilities [N, C, d...] and targets [N, d...].
func negativeLogLikelihood(_ ctx: EvalContext, logProbabilities: Tensor, target: Tensor, weight: Tensor?) throws -> Tensor {
    let reduction = try ctx.attributes.string("reduction", "mean")
    guard ["mean", "sum", "none"].contains(reduction) else { throw ctx.fail("reduction '\(reduction)' is not mean, sum or none") }
    let ignore = try ctx.attributes.int("ignore_index")
    let shape = logProbabilities.shape
    let n = shape[0], c = shape[1], inner = shape[2...].reduce(1, *)
    guard target.shape == [n] + Array(shape[2...]) else { throw ctx.fail("target \(target.shape) does not fit input \(shape)") }
    let lp = logProbabilities.doubles, t = target.int64s.map { Int($0) }, w = weight?.doubles
    var losses = [Double](repeating: 0, count: n * inner)
    var weightSum = 0.0
    for b in 0..<n { for i in 0..<inner {
        let cls = t[b * inner + i]
        if let ignore, cls == ignore { continue }
        guard cls >= 0, cls < c else { throw ctx.fail("target class \(cls) is outside 0..<\(c)") }
        let wt = w?[cls] ?? 1
        losses[b * inner + i] = -lp[(b * c + cls) * inner + i] * wt
        weightSum += wt
    } }
    switch reduction {
    case "none": return try Tensor(logProbabilities.dataType, shape: target.shape, doubles: losses)
    case "sum": return try Tensor(logProbabilities.dataType, shape: [], doubles: [losses.reduce(0, +)])
    default: return try Tensor(logProbabilities.dataType, shape: [], doubles: [weightSum == 0 ? 0 : losses.reduce(0, +) / weightSum])
    }
}

/// Unique: distinct elements (or slices along an axis), with first indices, inverse indices and counts.
func unique(_ ctx: EvalContext) throws -> [Tensor] {
    let x = try ctx.input(0)
    let sorted = try ctx.attributes.int("sorted", 1) != 0
    let axis = try ctx.attributes.int("axis").map { try ctx.axis($0, rank: x.rank) }
    let flat = axis == nil
    let a = axis ?? 0
    let t = flat ? try x.reshaped([x.count]) : x
    let n = t.shape[a], outer = t.shape[..<a].reduce(1, *), inner = t.shape[(a + 1)...].reduce(1, *)
    let values = t.doubles, strings = t.dataType == .string ? t.strings : []
    func slice(_ k: Int) -> [Int] {
        var positions: [Int] = []
        for o in 0..<outer {
            let start = (o * n + k) * inner
            positions.append(contentsOf: start..<(start + inner))
        }
        return positions
    }
    func less(_ p: Int, _ q: Int) -> Bool {
        for (i, j) in zip(slice(p), slice(q)) {
            if t.dataType == .string {
                if strings[i] != strings[j] { return strings[i] < strings[j] }
            } else if values[i] != values[j] {
                return values[i] < values[j]
            }
        }
        return false
    }
    func equal(_ p: Int, _ q: Int) -> Bool { !less(p, q) && !less(q, p) }
    var firsts: [Int] = []
    var inverse = [Int](repeating: 0, count: n)
    for k in 0..<n {
        if let u = firsts.firstIndex(where: { equal($0, k) }) { inverse[k] = u } else { inverse[k] = firsts.count; firsts.append(k) }
    }
    var order = Array(firsts.indices)
    if sorted { order.sort { less(firsts[$0], firsts[$1]) } }
    var rank = [Int](repeating: 0, count: order.count)
    for (newPosition, old) in order.enumerated() { rank[old] = newPosition }
    let chosen = order.map { firsts[$0] }
    let counts = order.map { u in inverse.filter { $0 == u }.count }
    var y = try Movement.gather(t, indices: Tensor(int64s: chosen.map { Int64($0) }, shape: [chosen.count]), axis: a)
    if flat { y = try y.reshaped([chosen.count]) }
    return [y, try Tensor(int64s: chosen.map { Int64($0) }, shape: [chosen.count]),
            try Tensor(int64s: inverse.map { Int64(rank[$0]) }, shape: [n]), try Tensor(int64s: counts.map { Int64($0) }, shape: [counts.count])]
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
