import AnvilCore

/// The ints of an input tensor (shape, axes, pads ... given as inputs).
func intsInput(_ ctx: EvalContext, _ i: Int) throws -> [Int] {
    try ctx.input(i).int64s.map { Int(clamping: $0) }
}

/// Output shape of Reshape: 0 copies the input dim (unless allowzero), -1 is inferred.
func reshapeTarget(_ ctx: EvalContext, input: [Int], requested: [Int], allowZero: Bool) throws -> [Int] {
    var out = requested
    var inferAt: Int?
    for (i, d) in requested.enumerated() {
        if d == 0 && !allowZero {
            guard i < input.count else { throw ctx.fail("shape \(requested) copies dimension \(i), which input \(input) lacks") }
            out[i] = input[i]
        } else if d == -1 {
            guard inferAt == nil else { throw ctx.fail("shape \(requested) has more than one -1") }
            inferAt = i
        } else if d < 0 {
            throw ctx.fail("shape \(requested) has invalid dimension \(d)")
        }
    }
    let total = input.reduce(1, *)
    if let at = inferAt {
        let known = out.enumerated().filter { $0.offset != at }.reduce(1) { $0 * $1.element }
        guard known > 0, total % known == 0 else { throw ctx.fail("cannot reshape \(input) to \(requested)") }
        out[at] = total / known
    }
    guard ShapeMath.elementCount(out) == total else { throw ctx.fail("cannot reshape \(input) (\(total) elements) to \(requested)") }
    return out
}

func registerShapeOps(_ b: inout KernelTableBuilder) {
    b.add1("Identity") { ctx in try ctx.input(0) }
    b.add1("Reshape") { ctx in
        let x = try ctx.input(0)
        let requested = ctx.opset < 5 ? try ctx.attributes.ints("shape") ?? [] : try intsInput(ctx, 1)
        return try x.reshaped(reshapeTarget(ctx, input: x.shape, requested: requested, allowZero: ctx.attributes.int("allowzero", 0) != 0))
    }
    b.add1("Flatten") { ctx in
        let x = try ctx.input(0)
        let a = try ctx.attributes.int("axis", 1)
        let axis = a < 0 ? a + x.rank : a
        guard axis >= 0, axis <= x.rank else { throw ctx.fail("axis \(a) is out of range for rank \(x.rank)") }
        return try x.reshaped([x.shape[..<axis].reduce(1, *), x.shape[axis...].reduce(1, *)])
    }
    b.add1("Transpose") { ctx in
        let x = try ctx.input(0)
        let perm = try ctx.attributes.ints("perm") ?? Array((0..<x.rank).reversed())
        return try named(ctx) { try Movement.transpose(x, perm: perm) }
    }
    b.add1("Squeeze") { ctx in
        let x = try ctx.input(0)
        let raw = ctx.opset < 13 ? try ctx.attributes.ints("axes") : ctx.optionalInput(1).map { $0.int64s.map { Int($0) } }
        let axes = try Set((raw ?? x.shape.indices.filter { x.shape[$0] == 1 }).map { try ctx.axis($0, rank: x.rank) })
        for a in axes where x.shape[a] != 1 { throw ctx.fail("cannot squeeze axis \(a) of size \(x.shape[a])") }
        return try x.reshaped(x.shape.indices.filter { !axes.contains($0) }.map { x.shape[$0] })
    }
    b.add1("Unsqueeze") { ctx in
        let x = try ctx.input(0)
        let raw = ctx.opset < 13 ? try ctx.attributes.ints("axes") ?? [] : try intsInput(ctx, 1)
        let rank = x.rank + raw.count
        let axes = try Set(raw.map { try ctx.axis($0, rank: rank) })
        guard axes.count == raw.count else { throw ctx.fail("axes \(raw) repeat an axis") }
        var shape: [Int] = []
        var it = x.shape.makeIterator()
        for i in 0..<rank { shape.append(axes.contains(i) ? 1 : it.next()!) }
        return try x.reshaped(shape)
    }
    b.add1("Concat") { ctx in
        let inputs = ctx.inputs.compactMap { $0 }
        guard let first = inputs.first else { throw ctx.fail("Concat needs at least one input") }
        let axis = try ctx.axis(ctx.attributes.int("axis", ctx.opset < 4 ? 1 : 0), rank: first.rank)
        return try named(ctx) { try Movement.concat(inputs, axis: axis) }
    }
    b.add("Split") { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.rank)
        var sizes = ctx.opset < 13 ? try ctx.attributes.ints("split") : ctx.optionalInput(1).map { $0.int64s.map { Int($0) } }
        if sizes == nil {
            let n = ctx.opset >= 18 ? try ctx.attributes.int("num_outputs") ?? ctx.outputCount : ctx.outputCount
            guard n > 0 else { throw ctx.fail("cannot split into \(n) outputs") }
            let chunk = (x.shape[axis] + n - 1) / n
            sizes = (0..<n).map { max(0, min(chunk, x.shape[axis] - $0 * chunk)) }
        }
        guard let sizes, sizes.reduce(0, +) == x.shape[axis], sizes.allSatisfy({ $0 >= 0 }) else {
            throw ctx.fail("split sizes \(sizes ?? []) do not add up to dimension \(x.shape[axis])")
        }
        var start = 0
        return try sizes.map { size in
            var starts = [Int](repeating: 0, count: x.rank), counts = x.shape
            starts[axis] = start; counts[axis] = size
            start += size
            return try Movement.slice(x, starts: starts, steps: Array(repeating: 1, count: x.rank), counts: counts)
        }
    }
    b.add1("Slice") { ctx in
        let x = try ctx.input(0)
        let starts: [Int], ends: [Int], axesRaw: [Int]?, stepsRaw: [Int]?
        if ctx.opset < 10 {
            starts = try ctx.attributes.ints("starts") ?? []
            ends = try ctx.attributes.ints("ends") ?? []
            axesRaw = try ctx.attributes.ints("axes")
            stepsRaw = nil
        } else {
            starts = try intsInput(ctx, 1)
            ends = try intsInput(ctx, 2)
            axesRaw = ctx.optionalInput(3).map { $0.int64s.map { Int(clamping: $0) } }
            stepsRaw = ctx.optionalInput(4).map { $0.int64s.map { Int(clamping: $0) } }
        }
        let axes = try (axesRaw ?? Array(0..<starts.count)).map { try ctx.axis($0, rank: x.rank) }
        let steps = stepsRaw ?? Array(repeating: 1, count: starts.count)
        guard starts.count == ends.count, axes.count == starts.count, steps.count == starts.count else {
            throw ctx.fail("starts, ends, axes and steps have different lengths")
        }
        var s = [Int](repeating: 0, count: x.rank), st = [Int](repeating: 1, count: x.rank), counts = x.shape
        for (k, axis) in axes.enumerated() {
            let n = x.shape[axis], step = steps[k]
            guard step != 0 else { throw ctx.fail("slice step is 0 on axis \(axis)") }
            var start = starts[k] < 0 ? starts[k] + n : starts[k]
            var end = ends[k] < 0 ? ends[k] + n : ends[k]
            if step > 0 {
                start = min(max(start, 0), n); end = min(max(end, 0), n)
                counts[axis] = max(0, (end - start + step - 1) / step)
            } else {
                start = min(max(start, -1), n - 1); end = min(max(end, -1), n - 1)
                counts[axis] = max(0, (start - end + (-step) - 1) / (-step))
            }
            s[axis] = start; st[axis] = step
        }
        return try Movement.slice(x, starts: s, steps: st, counts: counts)
    }
    b.add1("Gather") { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.rank)
        return try named(ctx) { try Movement.gather(x, indices: ctx.input(1), axis: axis) }
    }
    b.add1("GatherElements") { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.rank)
        return try named(ctx) { try Movement.gatherElements(x, indices: ctx.input(1), axis: axis) }
    }
    b.add1("GatherND") { ctx in
        try named(ctx) { try Movement.gatherND(ctx.input(0), indices: ctx.input(1), batchDims: ctx.attributes.int("batch_dims", 0)) }
    }
    for name in ["ScatterElements", "Scatter"] {
        b.add1(name) { ctx in
            let x = try ctx.input(0)
            let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.rank)
            return try named(ctx) {
                try Movement.scatterElements(x, indices: ctx.input(1), updates: ctx.input(2), axis: axis, reduction: ctx.attributes.string("reduction", "none"))
            }
        }
    }
    b.add1("ScatterND") { ctx in
        try named(ctx) { try Movement.scatterND(ctx.input(0), indices: ctx.input(1), updates: ctx.input(2), reduction: ctx.attributes.string("reduction", "none")) }
    }
    b.add1("Expand") { ctx in
        let x = try ctx.input(0)
        let shape = try Elementwise.broadcastShape([x.shape, intsInput(ctx, 1)], op: "Expand")
        return try Indexing.broadcast(x, to: shape)
    }
    b.add1("Tile") { ctx in try named(ctx) { try Movement.tile(ctx.input(0), repeats: intsInput(ctx, 1)) } }
    b.add1("Pad") { ctx in
        let x = try ctx.input(0)
        let mode = try ctx.attributes.string("mode", "constant")
        guard ["constant", "reflect", "edge", "wrap"].contains(mode) else { throw ctx.fail("mode '\(mode)' is not constant, reflect, edge or wrap") }
        var pads: [Int], value: Tensor?
        if ctx.opset < 11 {
            pads = try ctx.attributes.ints("pads") ?? ctx.attributes.ints("paddings") ?? []
            value = .scalar(try ctx.attributes.float("value", 0))
        } else {
            pads = try intsInput(ctx, 1)
            value = ctx.optionalInput(2)
            if let axesT = ctx.optionalInput(3) {
                let axes = try axesT.int64s.map { try ctx.axis(Int($0), rank: x.rank) }
                guard pads.count == 2 * axes.count else { throw ctx.fail("pads has \(pads.count) entries for \(axes.count) axes") }
                var full = [Int](repeating: 0, count: 2 * x.rank)
                for (k, a) in axes.enumerated() { full[a] = pads[k]; full[a + x.rank] = pads[k + axes.count] }
                pads = full
            }
        }
        guard pads.count == 2 * x.rank else { throw ctx.fail("pads has \(pads.count) entries, expected \(2 * x.rank) for rank \(x.rank)") }
        return try named(ctx) { try Movement.pad(x, pads: pads, mode: mode, value: value) }
    }
    b.add1("Shape") { ctx in
        let x = try ctx.input(0)
        let r = x.rank
        func clampAxis(_ a: Int) -> Int { min(max(a < 0 ? a + r : a, 0), r) }
        let start = clampAxis(try ctx.attributes.int("start", 0))
        let end = clampAxis(try ctx.attributes.int("end", r))
        let dims = start < end ? Array(x.shape[start..<end]) : []
        return try Tensor(int64s: dims.map { Int64($0) }, shape: [dims.count])
    }
    b.add1("Size") { ctx in .scalar(Int64(try ctx.input(0).count)) }
    b.add1("Constant") { ctx in
        let a = ctx.attributes
        if let t = try a.tensor("value") { return t }
        if let v = try a.float("value_float") { return .scalar(v) }
        if let v = try a.int("value_int") { return .scalar(Int64(v)) }
        if let v = try a.floats("value_floats") { return try Tensor(floats: v, shape: [v.count]) }
        if let v = try a.ints("value_ints") { return try Tensor(int64s: v.map { Int64($0) }, shape: [v.count]) }
        if let v = try a.string("value_string") { return try Tensor(shape: [], storage: .string([v])) }
        if let v = try a.strings("value_strings") { return try Tensor(shape: [v.count], storage: .string(v)) }
        throw ctx.fail("Constant has no value attribute")
    }
    b.add1("ConstantOfShape") { ctx in
        let shape = try intsInput(ctx, 0)
        guard shape.allSatisfy({ $0 >= 0 }) else { throw ctx.fail("shape \(shape) has a negative dimension") }
        let value = try ctx.attributes.tensor("value") ?? Tensor(floats: [0], shape: [1])
        guard value.count == 1 else { throw ctx.fail("value must hold one element, has \(value.count)") }
        return try value.repeated(shape: shape)
    }
    b.add1("Range") { ctx in
        let start = try ctx.input(0), limit = try ctx.input(1), delta = try ctx.input(2)
        let s = start.double(at: 0), l = limit.double(at: 0), d = delta.double(at: 0)
        let count = try named(ctx) { try rangeCount(start: s, limit: l, delta: d) }
        try MemoryPolicy.checkedCount([count], start.dataType, for: "the range")
        if start.dataType.isInteger {
            let si = start.int64s[0], di = delta.int64s[0]
            return try Tensor(start.dataType, shape: [count], int64s: (0..<count).map { si + Int64($0) * di })
        }
        return try Tensor(start.dataType, shape: [count], doubles: (0..<count).map { s + Double($0) * d })
    }
    b.add1("DepthToSpace") { ctx in
        let x = try ctx.input(0)
        guard x.rank == 4 else { throw ctx.fail("input must be 4-D, got \(x.shape)") }
        return try named(ctx) { try Movement.depthToSpace(x, blockSize: ctx.attributes.int("blocksize", 0), crd: ctx.attributes.string("mode", "DCR") == "CRD") }
    }
    b.add1("SpaceToDepth") { ctx in
        let x = try ctx.input(0)
        guard x.rank == 4 else { throw ctx.fail("input must be 4-D, got \(x.shape)") }
        return try named(ctx) { try Movement.spaceToDepth(x, blockSize: ctx.attributes.int("blocksize", 0), crd: ctx.attributes.string("mode", "DCR") == "CRD") }
    }
    b.add1("Trilu", since: 14) { ctx in
        let x = try ctx.input(0)
        guard x.rank >= 2 else { throw ctx.fail("input must have rank ≥ 2, got \(x.shape)") }
        let k = ctx.optionalInput(1).map { Int(clamping: $0.int64s[0]) } ?? 0
        return try Movement.trilu(x, k: k, upper: ctx.attributes.int("upper", 1) != 0)
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
    b.add1("NonZero") { ctx in try Movement.nonZero(ctx.input(0)) }
    b.add("Unique", since: 11) { ctx in try unique(ctx) }
    b.add1("OneHot") { ctx in
        let indices = try ctx.input(0), depthT = try ctx.input(1), values = try ctx.input(2)
        let depth = Int(Tensor.int64(fromDouble: depthT.double(at: 0)))
        guard depth > 0, values.count == 2 else { throw ctx.fail("depth must be positive and values hold [off, on]") }
        let rank = indices.rank + 1
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: rank)
        let idx = indices.doubles.map { Int(Tensor.int64(fromDouble: $0)) }
        try MemoryPolicy.checkedCount(Array(indices.shape[..<axis]) + [depth] + Array(indices.shape[axis...]), values.dataType, for: "the output")
        let outer = indices.shape[..<axis].reduce(1, *), inner = indices.shape[axis...].reduce(1, *)
        var picks = [Int](repeating: 0, count: outer * depth * inner)
        for o in 0..<outer { for d in 0..<depth { for i in 0..<inner {
            var k = idx[o * inner + i]
            if k < 0 { k += depth }
            picks[(o * depth + d) * inner + i] = k == d ? 1 : 0
        } } }
        var shape = indices.shape
        shape.insert(depth, at: axis)
        return try values.gathered(picks, shape: shape)
    }
    b.add1("EyeLike") { ctx in
        let x = try ctx.input(0)
        guard x.rank == 2 else { throw ctx.fail("input must be 2-D, got \(x.shape)") }
        let k = try ctx.attributes.int("k", 0)
        let type = try ctx.attributes.int("dtype").flatMap { DataType(rawValue: Int32($0)) } ?? x.dataType
        var v = [Int64](repeating: 0, count: x.count)
        for r in 0..<x.shape[0] { let c = r + k; if c >= 0 && c < x.shape[1] { v[r * x.shape[1] + c] = 1 } }
        return try Tensor(type, shape: x.shape, int64s: v)
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

/// Range's element count: max(ceil((limit − start) / delta), 0), computed in Double; throws
/// for a zero delta or a count that is not finite or beyond 2^31.
func rangeCount(start s: Double, limit l: Double, delta d: Double) throws -> Int {
    guard d != 0 else { throw AnvilError.invalidTensor(name: "Range", reason: "delta is 0") }
    let q = (l - s) / d
    guard q.isFinite, Swift.abs(q) < Double(1 << 31) else { throw AnvilError.invalidTensor(name: "Range", reason: "(limit - start) / delta is \(q)") }
    return max(0, Int(q) + (q.rounded(.up) > Double(Int(q)) ? 1 : 0))
}
