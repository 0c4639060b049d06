import AnvilCore

/// The axes of a reduction: from the attribute before `inputSince`, else from input 1.
/// Returns nil when the reduction is a no-op (empty axes with noop_with_empty_axes).
func reductionAxes(_ ctx: EvalContext, rank: Int, inputSince: Int) throws -> [Int]? {
    let raw: [Int]
    if ctx.opset < inputSince {
        raw = try ctx.attributes.ints("axes") ?? []
    } else {
        raw = ctx.optionalInput(1).map { $0.int64s.map { Int($0) } } ?? []
    }
    if raw.isEmpty {
        return try ctx.attributes.int("noop_with_empty_axes", 0) != 0 ? nil : Array(0..<rank)
    }
    return try raw.map { try ctx.axis($0, rank: rank, name: "axes entry") }
}

func registerReductions(_ b: inout KernelTableBuilder) {
    let kinds: [(String, Reduce.Kind, Int)] = [
        ("ReduceSum", .sum, 13), ("ReduceMean", .mean, 18), ("ReduceMax", .max, 18), ("ReduceMin", .min, 18),
        ("ReduceProd", .prod, 18), ("ReduceL1", .l1, 18), ("ReduceL2", .l2, 18), ("ReduceLogSum", .logSum, 18),
        ("ReduceLogSumExp", .logSumExp, 18), ("ReduceSumSquare", .sumSquare, 18),
    ]
    for (name, kind, inputSince) in kinds {
        b.add1(name) { ctx in
            let x = try ctx.input(0)
            guard let axes = try reductionAxes(ctx, rank: x.rank, inputSince: inputSince) else { return x }
            let keep = try ctx.attributes.int("keepdims", 1) != 0
            if x.rank == 0 { return x }
            return try Reduce.reduce(x, axes: axes, keepDims: keep, kind: kind)
        }
    }
    for (name, isMax) in [("ArgMax", true), ("ArgMin", false)] {
        b.add1(name) { ctx in
            let x = try ctx.input(0)
            let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.rank)
            guard x.shape[axis] > 0 else { throw ctx.fail("cannot take \(name) over an empty axis") }
            return try Reduce.argExtreme(x, axis: axis, keepDims: ctx.attributes.int("keepdims", 1) != 0,
                                         selectLast: ctx.attributes.int("select_last_index", 0) != 0, max: isMax)
        }
    }
    for (name, product) in [("CumSum", false), ("CumProd", true)] {
        b.add1(name) { ctx in
            let x = try ctx.input(0)
            let axis = try ctx.axis(Int(ctx.input(1).int64s.first ?? 0), rank: x.rank)
            return try Reduce.cumulative(x, axis: axis, exclusive: ctx.attributes.int("exclusive", 0) != 0,
                                         reverse: ctx.attributes.int("reverse", 0) != 0, product: product)
        }
    }
    b.add("TopK") { ctx in
        let x = try ctx.input(0)
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: x.rank)
        let k = ctx.opset < 10 ? try ctx.attributes.int("k", 0) : Int(try ctx.input(1).int64s.first ?? 0)
        let (v, i) = try named(ctx) {
            try Reduce.topK(x, k: k, axis: axis, largest: ctx.attributes.int("largest", 1) != 0, sorted: ctx.attributes.int("sorted", 1) != 0)
        }
        return [v, i]
    }
}
