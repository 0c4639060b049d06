import AnvilCore
import COneDNN

/// Softmax over the innermost axis on oneDNN (an outer axis goes to the Swift kernel).
enum SoftmaxLowering {
    static let entries = [LoweringEntry(kind: .softmax, ops: ["Softmax"], output: .plain, lower: softmax)]

    /// The axis a softmax normalizes over, normalized; nil where the opset's semantics
    /// are not a one-axis softmax (before opset 13, a flattened one unless it is the last axis).
    static func axis(_ l: LayerLowering, rank: Int) throws -> Int? {
        guard let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", l.layer.opset >= 13 ? -1 : 1), rank: rank),
              l.layer.opset >= 13 || axis == rank - 1 else { return nil }
        return axis
    }

    static func softmax(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, !v.shape.isEmpty, let axis = try axis(l, rank: v.shape.count), axis == v.shape.count - 1 else { return nil }
        let x = try l.plan.plain(v)
        var data = try x.descriptor()
        var desc = dnnl_softmax_v2_desc_t()
        try check(dnnl_softmax_v2_forward_desc_init(&desc, dnnl_forward_inference, dnnl_softmax_accurate, &data, &data, Int32(axis)), "describing the softmax")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "softmax")
        let mark = l.plan.steps.count, out = l.inPlaceOutput(over: x)
        try l.emit(.softmax, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, data), (DNNL_ARG_DST, out, data)]))
        // A row holding NaN or +∞ is all NaN in the reference; oneDNN gives zeros and finite values.
        try l.plan.guardNonFinite(l.layer, from: mark, scanning: [(x, .nanOrPositiveInfinity)], inputs: [x], outputs: [out])
        return l.decided(.softmax)
    }
}
