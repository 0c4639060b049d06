import AnvilCore
import COneDNN

/// Max and average pooling (windowed and global) on oneDNN, in the input's layout.
enum PoolingLowering {
    static let entries = [
        LoweringEntry(kind: .pooling, ops: ["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"], output: .input, lower: pooling),
    ]

    static func pooling(_ l: LayerLowering) throws -> LayerDecision? {
        // Floats; 8-bit integers (quantized models) for max pooling, which needs no rescaling;
        // max pooling of a BF16-stored float value in BF16 (the maximum is one of the values:
        // exact), unless NaN can reach it (the NaN guard scans FP32).
        let stored = l.storedValue(0)
        let inBF16 = l.op.hasSuffix("MaxPool") && stored?.dataType == .float && stored?.storedType == .bfloat16 && !l.plan.exactNonFinite(l.layer)
        guard let input = inBF16 ? stored : l.value(0), input.dataType == .float || ([.uint8, .int8].contains(input.dataType) && l.op.hasSuffix("MaxPool")),
              (3...5).contains(input.shape.count), dnnlType(input.storedType) != nil else { return nil }
        var x = input
        let spatial = Array(x.shape[2...])
        let (_, outShape) = try l.outputType()
        // oneDNN cannot describe a pooling of or into nothing (a window larger than the padded
        // input has no output: Inception's reductions at a small dynamic sample).
        guard input.shape.allSatisfy({ $0 > 0 }), outShape.allSatisfy({ $0 > 0 }) else { return nil }
        var alg = dnnl_pooling_max
        var kernel = spatial, strides = spatial.map { _ in 1 }, dilations = strides
        var padsBegin = spatial.map { _ in 0 }, padsEnd = padsBegin
        if l.op.hasPrefix("Global") {
            alg = l.op == "GlobalMaxPool" ? dnnl_pooling_max : dnnl_pooling_avg_exclude_padding
        } else {
            let attrs = try WindowAttributes(l.context)
            guard let k = attrs.kernelShape else { return nil }
            let g = try attrs.geometry(l.context, input: spatial, kernel: k)
            kernel = k; strides = g.strides; dilations = g.dilations; padsBegin = g.padsBegin
            // oneDNN wants the right padding that reproduces the output size exactly.
            padsEnd = attrs.ceilMode ? zip(zip(g.output, spatial), zip(g.strides, zip(k, zip(g.dilations, g.padsBegin)))).map { o, p in
                let (out, input) = o, (s, (kk, (d, pb))) = p
                return max(0, (out - 1) * s + (kk - 1) * d + 1 - input - pb)
            } : g.padsEnd
            if l.op == "AveragePool" {
                let include = try l.attributes.int("count_include_pad", 0) != 0
                if include && attrs.ceilMode { return nil }
                alg = include ? dnnl_pooling_avg_include_padding : dnnl_pooling_avg_exclude_padding
            }
            guard Array(x.shape[0..<2]) + g.output == outShape else { return nil }
        }
        func make(_ x: PlanValue) throws -> (DNNLPrimitive, dnnl_memory_desc_t) {
            var src = try x.descriptor()
            var dst = try memoryDescriptor(outShape, dnnl_format_tag_any, dnnlType(x.storedType)!)
            var desc = dnnl_pooling_v2_desc_t()
            try check(anvil_dnnl_pool_desc(&desc, alg, &src, &dst, Int32(spatial.count), strides.map { Int64($0) }, kernel.map { Int64($0) },
                                           dilations.map { Int64($0) }, padsBegin.map { Int64($0) }, padsEnd.map { Int64($0) }), "describing the pooling")
            return (try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "pooling"), src)
        }
        var (primitive, src) = try make(x)
        // A layout oneDNN pools only with its reference kernel: plain instead.
        if primitive.isReference, !x.isPlain {
            x = try l.plan.plain(x)
            (primitive, src) = try make(x)
        }
        let dstLayout = primitive.query(dnnl_query_dst_md)
        let out = l.plan.newValue(l.layer.outputs[0], input.dataType, outShape, layout: dstLayout)
        let mark = l.plan.steps.count
        try l.emit(.pooling, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, src), (DNNL_ARG_DST, out, dstLayout)]))
        // oneDNN's max drops a NaN unless it comes last in the window: NaN windows go to the reference.
        if alg == dnnl_pooling_max, input.dataType == .float { try l.plan.guardNonFinite(l.layer, from: mark, scanning: [(x, .nan)], inputs: [x], outputs: [out]) }
        var decision = l.decided(.pooling)
        if input.dataType != .float { decision.precision = .int8 }
        if x.storedType == .bfloat16 { decision.precision = .bf16 }
        return decision
    }
}
