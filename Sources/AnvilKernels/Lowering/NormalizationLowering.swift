import AnvilCore
import COneDNN

/// Batch normalization with constant statistics (in any layout), instance and
/// layer normalization on oneDNN.
enum NormalizationLowering {
    static let entries = [
        LoweringEntry(kind: .batchNormalization, ops: ["BatchNormalization"], output: .input, lower: batchNormalization),
        LoweringEntry(kind: .layerNormalization, ops: ["LayerNormalization", "anvil.LayerNormalization"], output: .plain, lower: layerNormalization),
        LoweringEntry(kind: .instanceNormalization, ops: ["InstanceNormalization"], output: .input, lower: instanceNormalization),
    ]

    /// InstanceNormalization is batch normalization that computes its statistics over
    /// one image: for a batch of one, oneDNN's batch normalization in training mode, in
    /// any layout; for more, the same over the plain tensor seen as [1, N·C, …] with the
    /// scale and shift repeated per image (wav2vec2's feature encoder: 19.7 → ~1 ms).
    static func instanceNormalization(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, v.shape.count >= 3, v.shape.allSatisfy({ $0 > 0 }),
              let scale = l.constant(1), let bias = l.constant(2), scale.dataType == .float, bias.dataType == .float else { return nil }
        let (n, c) = (v.shape[0], v.shape[1])
        guard scale.count == c, bias.count == c, try l.outputType() == (.float, v.shape) else { return nil }
        let epsilon = try l.attributes.float("epsilon", 1e-5)
        func make(_ x: PlanValue) throws -> (DNNLPrimitive, dnnl_memory_desc_t) {
            // oneDNN's fast kernels take 4-D and 5-D tensors: a 1-D signal gets a trailing width of 1 (same bytes).
            let shape = n == 1 ? v.shape : [1, n * c] + v.shape[2...], full = shape.count == 3 ? shape + [1] : shape
            var data: dnnl_memory_desc_t
            if x.isPlain {
                data = try plainDescriptor(full)
            } else if let tag = Layout.of(x.layout, shape: x.shape).formatTag(rank: full.count) {
                data = try memoryDescriptor(full, tag)
            } else {
                data = try x.descriptor()
            }
            var desc = dnnl_batch_normalization_desc_t()
            let flags = dnnl_use_scale.rawValue | dnnl_use_shift.rawValue
            try check(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_training, &data, epsilon, flags), "describing the instance normalization")
            return (try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "instance normalization"), data)
        }
        // In the input's layout where oneDNN has a fast kernel for it (channels-last has only the reference one), else plain.
        var x = n == 1 ? v : try l.plan.plain(v)
        var (primitive, data) = try make(x)
        if primitive.isReference, !x.isPlain {
            x = try l.plan.plain(v)
            (primitive, data) = try make(x)
        }
        let vector = try plainDescriptor([n * c])
        func repeated(_ t: Tensor) throws -> Tensor { try Tensor(floats: Array([[Float]](repeating: t.floats, count: n).joined()), shape: [n * c]) }
        let name = l.layer.name
        var arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [
            (DNNL_ARG_SRC, x, data),
            (DNNL_ARG_SCALE, try l.plan.constantValue(name + "#scale", repeated(scale)), vector),
            (DNNL_ARG_SHIFT, try l.plan.constantValue(name + "#shift", repeated(bias)), vector),
            // The statistics it computes, in buffers of the layer's own.
            (DNNL_ARG_MEAN, l.plan.newValue(name + "#mean", .float, [n * c]), vector),
            (DNNL_ARG_VARIANCE, l.plan.newValue(name + "#variance", .float, [n * c]), vector),
        ]
        arguments.append((DNNL_ARG_DST, l.inPlaceOutput(over: x), data))
        try l.emit(.instanceNormalization, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: arguments))
        return l.decided(.instanceNormalization)
    }

    static func batchNormalization(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.value(0), x.dataType == .float, x.shape.count >= 2, try l.attributes.int("training_mode", 0) == 0,
              try l.attributes.int("spatial", 1) == 1 else { return nil }
        let c = x.shape[1]
        var stats: [Tensor] = []
        for i in 1...4 {
            guard let t = l.constant(i), t.dataType == .float, t.count == c else { return nil }
            stats.append(try t.reshaped([c]))
        }
        let (t, shape) = try l.outputType()
        guard t == .float, shape == x.shape else { return nil }
        var data = try x.descriptor()
        var desc = dnnl_batch_normalization_desc_t()
        // A Relu that alone reads the result is fused (DenseNet's BN → ReLU → Conv): one pass instead of two.
        let relu = l.plan.soleReader(of: l.layer.outputs[0]).flatMap { r in
            r.opType == "Relu" && r.domain.isEmpty && (r.decision.map { $0.kernel == .eltwise } ?? true) ? r : nil
        }
        let flags = dnnl_use_global_stats.rawValue | dnnl_use_scale.rawValue | dnnl_use_shift.rawValue | (relu == nil ? 0 : dnnl_fuse_norm_relu.rawValue)
        try check(dnnl_batch_normalization_forward_desc_init(&desc, dnnl_forward_inference, &data, try l.attributes.float("epsilon", 1e-5), flags),
                  "describing the batch normalization")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "batch normalization")
        let vector = try plainDescriptor([c])
        var arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [(DNNL_ARG_SRC, x, data)]
        for (arg, i) in [(DNNL_ARG_SCALE, 1), (DNNL_ARG_SHIFT, 2), (DNNL_ARG_MEAN, 3), (DNNL_ARG_VARIANCE, 4)] {
            arguments.append((arg, try l.plan.constantValue(l.layer.inputs[i], stats[i - 1]), vector))
        }
        arguments.append((DNNL_ARG_DST, l.inPlaceOutput(over: x), data))
        try l.emit(.batchNormalization, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: arguments))
        if let relu { l.plan.absorb(relu.name) }
        return l.decided(.batchNormalization)
    }

    static func layerNormalization(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, let scale = l.constant(1), scale.dataType == .float,
              let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", -1), rank: v.shape.count) else { return nil }
        let inner = v.shape[axis...].reduce(1, *), outer = v.shape[..<axis].reduce(1, *)
        guard inner > 0, outer > 0, scale.count == inner else { return nil }
        let bias = l.constant(2)
        if l.present(2) { guard let bias, bias.dataType == .float, bias.count == inner else { return nil } }
        let x = try l.plan.plain(v)
        var data = try plainDescriptor([outer, inner])
        var desc = dnnl_layer_normalization_desc_t()
        let flags = dnnl_use_scale.rawValue | (bias == nil ? 0 : dnnl_use_shift.rawValue)
        try check(dnnl_layer_normalization_forward_desc_init(&desc, dnnl_forward_inference, &data, nil, try l.attributes.float("epsilon", 1e-5), flags),
                  "describing the layer normalization")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "layer normalization")
        let scaleValue = try l.plan.constantValue(l.layer.inputs[1], scale.reshaped([inner]))
        var arguments: [(arg: Int32, value: PlanValue, descriptor: dnnl_memory_desc_t)] = [
            (DNNL_ARG_SRC, x, data), (DNNL_ARG_SCALE, scaleValue, try plainDescriptor([inner]))]
        if let bias { arguments.append((DNNL_ARG_SHIFT, try l.plan.constantValue(l.layer.inputs[2], bias.reshaped([inner])), try plainDescriptor([inner]))) }
        arguments.append((DNNL_ARG_DST, l.inPlaceOutput(over: x), data))
        try l.emit(.layerNormalization, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: arguments))
        return l.decided(.layerNormalization)
    }
}
