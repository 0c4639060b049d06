import AnvilCore
import COneDNN

/// Reductions (ReduceMean, ReduceSum, ReduceProd, ReduceL1, ReduceL2, ReduceSumSquare)
/// over constant axes of a float tensor on oneDNN's reduction primitive, in plain
/// layout; without keepdims the output is a view. oneDNN's max and min start from the
/// largest finite value, not infinity, so a row of -inf would not reduce to -inf as
/// ONNX says, and they do not propagate NaN: ReduceMax and ReduceMin run on the Swift
/// kernel, as do reductions oneDNN runs only on its reference implementation.
enum ReductionLowering {
    /// oneDNN's algorithm and its p for each op (p for the norms only).
    static let algorithms: [String: (dnnl_alg_kind_t, Float)] = [
        "ReduceMean": (dnnl_reduction_mean, 0), "ReduceSum": (dnnl_reduction_sum, 0),
        "ReduceProd": (dnnl_reduction_mul, 0), "ReduceL1": (dnnl_reduction_norm_lp_sum, 1),
        "ReduceL2": (dnnl_reduction_norm_lp_sum, 2), "ReduceSumSquare": (dnnl_reduction_norm_lp_power_p_sum, 2),
    ]
    /// The ops of the Swift kernel: oneDNN's and the extremes.
    static let swiftOps = Set(algorithms.keys).union(["ReduceMax", "ReduceMin"])
    static let entries = [
        LoweringEntry(kind: .reduction, ops: Set(algorithms.keys), output: .plain, lower: reduction),
        LoweringEntry(kind: .swiftReduction, ops: swiftOps, output: .plain, lower: swiftReduction),
    ]

    /// The reduction's axes and shapes for this layer; nil when it does not fit.
    static func geometry(_ l: LayerLowering) throws -> (x: PlanValue, axes: [Int], reduced: [Int], output: [Int])? {
        guard swiftOps.contains(l.op), let v = l.value(0), v.dataType == .float, !v.shape.isEmpty, v.shape.count <= 6 else { return nil }
        // Axes: the attribute before opset 13 (ReduceSum) or 18 (the others), else a constant input.
        let inputSince = l.op == "ReduceSum" ? 13 : 18
        if l.layer.opset >= inputSince, l.present(1), !l.isConstant(1) { return nil }
        let context = l.context.with(opset: l.layer.opset, inputs: [nil, l.layer.opset >= inputSince ? l.constant(1) : nil])
        guard let axes = try reductionAxes(context, rank: v.shape.count, inputSince: inputSince) else { return nil }
        let reducedShape = v.shape.enumerated().map { axes.contains($0.offset) ? 1 : $0.element }
        let (t, outShape) = try l.outputType()
        guard t == .float, outShape.reduce(1, *) == reducedShape.reduce(1, *), reducedShape.allSatisfy({ $0 > 0 }) else { return nil }
        return (v, axes, reducedShape, outShape)
    }

    /// The Swift kernel, for reductions over contiguous axes that oneDNN runs only on its
    /// reference implementation (small or odd shapes).
    static func swiftReduction(_ l: LayerLowering) throws -> LayerDecision? {
        guard let (v, axes, _, outShape) = try geometry(l), let first = axes.min(), let last = axes.max(),
              Set(axes) == Set(first...last) else { return nil }
        let x = try l.plan.plain(v), op = l.layer.opType
        let outer = v.shape[..<first].reduce(1, *), n = v.shape[first...last].reduce(1, *), inner = v.shape[(last + 1)...].reduce(1, *)
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            SwiftElementwise.reduce(op, p.address(x).assumingMemoryBound(to: Float.self), outer: outer, n: n, inner: inner,
                                    into: p.address(out).assumingMemoryBound(to: Float.self))
        })
        return l.decided(.swiftReduction)
    }

    static func reduction(_ l: LayerLowering) throws -> LayerDecision? {
        guard let (v, _, reducedShape, outShape) = try geometry(l), let (algorithm, p) = algorithms[l.op] else { return nil }
        let x = try l.plan.plain(v)
        var src = try x.descriptor(), dst = try plainDescriptor(reducedShape)
        var desc = dnnl_reduction_desc_t()
        try check(dnnl_reduction_desc_init(&desc, algorithm, &src, &dst, p, 0), "describing the reduction")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "reduction")
        // The kept-dims result; without keepdims the output is a view of it.
        let reduced = outShape == reducedShape ? l.plan.newValue(l.layer.outputs[0], .float, outShape)
                                               : l.plan.newValue(l.layer.name + "#reduced", .float, reducedShape)
        try l.emit(.reduction, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, src), (DNNL_ARG_DST, reduced, dst)]))
        if outShape != reducedShape { _ = l.plan.alias(l.layer.outputs[0], of: reduced, type: .float, shape: outShape) }
        return l.decided(.reduction)
    }
}
