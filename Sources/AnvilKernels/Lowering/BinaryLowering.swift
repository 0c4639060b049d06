import AnvilCore
import COneDNN

/// Binary elementwise ops (Add, Sub, Mul, Div, Max, Min) with numpy broadcasting on
/// oneDNN's binary primitive, in the full-size operand's layout and in place when
/// nothing else reads it.
enum BinaryLowering {
    static let algorithms: [String: dnnl_alg_kind_t] = ["Add": dnnl_binary_add, "Sub": dnnl_binary_sub, "Mul": dnnl_binary_mul,
                                                        "Div": dnnl_binary_div, "Max": dnnl_binary_max, "Min": dnnl_binary_min]
    static let entries = [LoweringEntry(kind: .binary, ops: Set(algorithms.keys), output: .input, lower: binary)]

    static func binary(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2, let algorithm = algorithms[l.op], var a = try l.operand(0), var b = try l.operand(1),
              a.dataType == .float, b.dataType == .float else { return nil }
        let (t, shape) = try l.outputType()
        let commutative = ["Add", "Mul", "Max", "Min"].contains(l.op)
        if commutative, a.shape != shape || (a.constant != nil && b.constant == nil && b.shape == shape) { swap(&a, &b) }
        // The full-size operand comes first (oneDNN broadcasts only the second); it may be a
        // constant (anchor points − distances) when the other is not.
        guard a.shape == shape, a.constant == nil || b.constant == nil, b.shape.count <= shape.count else { return nil }
        if let linear = try scalarLinear(l, x: a, shape: shape) { return linear }
        // In the full-size operand's layout; where oneDNN has only its reference
        // implementation for that layout and broadcast (a blocked tensor and a
        // per-width constant), in plain layout.
        let b0 = b
        // A broadcast operand of full rank may also take the full-size one's channel blocking
        // (a squeeze-and-excitation scale [1, C, 1, 1] over a blocked map: oneDNN's fast
        // kernels broadcast it per channel only when both are blocked alike).
        func make(_ a: PlanValue, blocked: Bool = false) throws -> (DNNLPrimitive, PlanValue, dnnl_memory_desc_t, dnnl_memory_desc_t)? {
            var src0 = try a.descriptor()
            let b: PlanValue
            var src1: dnnl_memory_desc_t
            if blocked {
                guard b0.shape.count == shape.count, let tag = Layout.of(a.layout, shape: a.shape).formatTag(rank: shape.count) else { return nil }
                src1 = try memoryDescriptor(b0.shape, tag)
                b = try l.plan.inLayout(b0, src1)
            } else {
                b = b0.shape == a.shape ? try l.plan.inLayout(b0, src0) : try l.plan.plain(b0)
                src1 = b.shape == a.shape ? try b.descriptor() : try plainDescriptor(Array(repeating: 1, count: shape.count - b.shape.count) + b.shape)
            }
            if src1.ndims != src0.ndims { return nil }
            var dst = src0
            var desc = dnnl_binary_desc_t()
            try check(dnnl_binary_desc_init(&desc, algorithm, &src0, &src1, &dst), "describing the binary op")
            return (try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "binary"), b, src0, src1)
        }
        var made: (DNNLPrimitive, PlanValue, dnnl_memory_desc_t, dnnl_memory_desc_t)?
        // Only when the scale is already stored so (a convolution's output): a reorder made for a
        // candidate that turned out slow would stay in the plan.
        if b.shape != shape, b.shape.count == shape.count, Layout.of(a.layout, shape: a.shape).channelBlock != nil,
           Layout.of(b.layout, shape: b.shape) == Layout.of(a.layout, shape: a.shape),
           let blocked = try? make(a, blocked: true), !blocked.0.isReference {
            made = blocked
        }
        guard var (primitive, b1, src0, src1) = try made ?? make(a) else { return nil }
        if primitive.isReference, !a.isPlain, a.constant == nil {
            a = try l.plan.plain(a)
            guard let plain = try make(a) else { return nil }
            (primitive, b1, src0, src1) = plain
        }
        b = b1
        let dst = src0
        let inPlace = l.plan.dies(a) && a.buffer != b.buffer
        let out = inPlace ? l.plan.alias(l.layer.outputs[0], of: a, type: t, shape: shape, layout: a.layout)
                          : l.plan.newValue(l.layer.outputs[0], t, shape, layout: a.layout)
        let mark = l.plan.steps.count
        try l.emit(.binary, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                          arguments: [(DNNL_ARG_SRC_0, a, src0), (DNNL_ARG_SRC_1, b, src1), (DNNL_ARG_DST, out, dst)]))
        // oneDNN's max and min return the other operand for a NaN in the first: NaN goes to the reference.
        if l.op == "Max" || l.op == "Min" {
            try l.plan.guardNonFinite(l.layer, from: mark, scanning: [(a, .nan), (b, .nan)], inputs: [a, b], outputs: [out])
        }
        return l.decided(.binary)
    }

    /// x · c, x + c, x − c or c − x with c a scalar constant, as oneDNN's eltwise α·x + β in
    /// x's own layout (in place when x dies): a blocked map stays blocked, where a binary op
    /// with a scalar has only plain kernels here (PP-LCNet's learnable affine after every
    /// activation cost two reorders each). The same arithmetic: α·x + 0 and 1·x + β round as
    /// the product and the sum do.
    static func scalarLinear(_ l: LayerLowering, x: PlanValue, shape: [Int]) throws -> LayerDecision? {
        guard ["Mul", "Add", "Sub"].contains(l.op), x.constant == nil, !x.isPlain else { return nil }
        let constantFirst = l.isConstant(0)
        guard let c = l.constant(constantFirst ? 0 : 1), c.dataType == .float, c.count == 1, (try l.outputType()) == (.float, shape) else { return nil }
        let v = c.floats[0]
        let (alpha, beta): (Float, Float)
        switch l.op {
        case "Mul": (alpha, beta) = (v, 0)
        case "Add": (alpha, beta) = (1, v)
        default: (alpha, beta) = constantFirst ? (-1, v) : (1, -v)
        }
        var data = try x.descriptor()
        var desc = dnnl_eltwise_desc_t()
        try check(dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, dnnl_eltwise_linear, &data, alpha, beta), "describing the scalar op")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "scalar op")
        // oneDNN's fast eltwise kernels also write a blocked tensor's padding channels, so they
        // take only ops that keep zeros zero there (x · c, not x + c, on 24 channels in 16-blocks).
        guard !primitive.isReference else { return nil }
        let out = l.inPlaceOutput(over: x)
        try l.emit(.binary, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, data), (DNNL_ARG_DST, out, data)]))
        return l.decided(.binary)
    }
}
