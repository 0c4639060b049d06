import AnvilCore
import COneDNN

/// Unary elementwise ops on oneDNN's eltwise primitive, in the input's layout and in
/// place when nothing else reads the input.
enum EltwiseLowering {
    /// The oneDNN eltwise steps computing each op (most need one; HardSigmoid is a
    /// linear step then a clip), from its attributes or constant inputs; nil when oneDNN has none.
    typealias Steps = [(dnnl_alg_kind_t, Float, Float)]
    static let algorithms: [String: @Sendable (LayerLowering) throws -> Steps?] = [
        "Relu": { l in DNNLAttributes.clip(0, .infinity, exactNonFinite: l.plan.exactNonFinite(l.layer)) },
        "LeakyRelu": { l in [(dnnl_eltwise_relu, try l.attributes.float("alpha", 0.01), Float(0))] },
        "Sigmoid": { _ in [(dnnl_eltwise_logistic, 0, 0)] },
        "Tanh": { _ in [(dnnl_eltwise_tanh, 0, 0)] },
        "Elu": { l in [(dnnl_eltwise_elu, try l.attributes.float("alpha", 1), Float(0))] },
        "HardSwish": { _ in [(dnnl_eltwise_hardswish, 0, 0)] },
        "anvil.HardSwish": { _ in [(dnnl_eltwise_hardswish, 0, 0)] },
        "HardSigmoid": { l in [(dnnl_eltwise_linear, try l.attributes.float("alpha", 0.2), try l.attributes.float("beta", 0.5))] + DNNLAttributes.clip(0, 1, exactNonFinite: l.plan.exactNonFinite(l.layer)) },
        "Mish": { _ in [(dnnl_eltwise_mish, 0, 0)] },
        "Exp": { _ in [(dnnl_eltwise_exp, 0, 0)] },
        "Sqrt": { _ in [(dnnl_eltwise_sqrt, 0, 0)] },
        "Abs": { _ in [(dnnl_eltwise_abs, 0, 0)] },
        "Neg": { _ in [(dnnl_eltwise_linear, -1, 0)] },
        "Gelu": gelu,
        "anvil.Gelu": gelu,
        "anvil.SiLU": { l in [(dnnl_eltwise_swish, try l.attributes.float("alpha", 1), Float(0))] },
        "Swish": { l in [(dnnl_eltwise_swish, try l.attributes.float("alpha", 1), Float(0))] },
        "Clip": clip,
    ]

    static let entries = [LoweringEntry(kind: .eltwise, ops: Set(algorithms.keys), output: .input, lower: eltwise)]
    /// Tried after the binary primitive, which needs the full-size operand first.
    static let fallbacks = [LoweringEntry(kind: .eltwise, ops: ["Sub"], output: .input, lower: subtractFromScalar)]

    /// c − x for a scalar constant c (attention masks' 1 − mask) as −1 · x + c, which is exact.
    static func subtractFromScalar(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2, let c = l.constant(0), c.dataType == .float, c.count == 1, let x = l.value(1), x.dataType == .float,
              try l.outputType() == (.float, x.shape) else { return nil }
        var data = try x.descriptor()
        var desc = dnnl_eltwise_desc_t()
        try check(dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, dnnl_eltwise_linear, &data, -1, c.floats[0]), "describing c − x")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "eltwise")
        try l.emit(.eltwise, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, data), (DNNL_ARG_DST, l.inPlaceOutput(over: x), data)]))
        return l.decided(.eltwise)
    }

    static func gelu(_ l: LayerLowering) throws -> [(dnnl_alg_kind_t, Float, Float)]? {
        [try l.attributes.string("approximate", "none") == "tanh" ? (dnnl_eltwise_gelu_tanh, 0, 0) : (dnnl_eltwise_gelu_erf, 0, 0)]
    }

    static func clip(_ l: LayerLowering) throws -> [(dnnl_alg_kind_t, Float, Float)]? {
        var lo = -Float.greatestFiniteMagnitude, hi = Float.greatestFiniteMagnitude
        if l.layer.opset < 11 {
            lo = try l.attributes.float("min", lo); hi = try l.attributes.float("max", hi)
        } else {
            if l.present(1) { guard let t = l.constant(1), t.dataType == .float, t.count == 1 else { return nil }; lo = t.floats[0] }
            if l.present(2) { guard let t = l.constant(2), t.dataType == .float, t.count == 1 else { return nil }; hi = t.floats[0] }
        }
        guard lo <= hi else { return nil }
        return DNNLAttributes.clip(lo, hi, exactNonFinite: l.plan.exactNonFinite(l.layer))
    }

    static func eltwise(_ l: LayerLowering) throws -> LayerDecision? {
        guard let algorithm = algorithms[l.op], let steps = try algorithm(l), var x = l.value(0), x.dataType == .float else { return nil }
        let (t, shape) = try l.outputType()
        guard shape == x.shape, t == .float else { return nil }
        // Already applied by the batch normalization producing the input: a view of it.
        if l.plan.absorbedActivations.contains(l.layer.name) {
            _ = l.plan.alias(l.layer.outputs[0], of: x, type: t, shape: shape, layout: x.layout)
            return l.decided(.eltwise)
        }
        func primitives(_ x: PlanValue) throws -> [DNNLPrimitive] {
            var data = try x.descriptor()
            return try steps.map { alg, alpha, beta in
                var desc = dnnl_eltwise_desc_t()
                try check(dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, alg, &data, alpha, beta), "describing the eltwise op")
                return try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "eltwise")
            }
        }
        var made = try primitives(x)
        // A layout oneDNN has only its reference kernel for (an odd blocked one): plain instead.
        if made.contains(where: \.isReference), !x.isPlain {
            x = try l.plan.plain(x)
            made = try primitives(x)
        }
        let data = try x.descriptor()
        let out = l.inPlaceOutput(over: x)
        let mark = l.plan.steps.count
        for (i, primitive) in made.enumerated() {
            // Later steps work in place on the output.
            try l.emit(.eltwise, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                               arguments: [(DNNL_ARG_SRC, i == 0 ? x : out, data), (DNNL_ARG_DST, out, data)]))
        }
        // oneDNN's exp clamps its argument with a max and a min first, taking NaN to +∞.
        if l.op == "Exp" { try l.plan.guardNonFinite(l.layer, from: mark, scanning: [(x, .nan)], inputs: [x], outputs: [out]) }
        return l.decided(.eltwise)
    }
}
