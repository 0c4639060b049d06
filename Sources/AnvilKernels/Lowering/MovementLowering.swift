import AnvilCore
import COneDNN

/// Data movement: views (reshape-like layers, contiguous splits, concatenation in
/// place), oneDNN's concat, transposes as strided reorders, and nearest resizes on
/// oneDNN's resampling.
enum MovementLowering {
    static let entries = [
        LoweringEntry(kind: .view, ops: ["Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"], output: .plain, lower: view),
        LoweringEntry(kind: .view, ops: ["Split"], output: .input, multipleOutputs: true, lower: split),
        LoweringEntry(kind: .splitCopy, ops: ["Split"], output: .plain, multipleOutputs: true, lower: splitCopy),
        LoweringEntry(kind: .concat, ops: ["Concat"], output: .input, lower: concat),
        LoweringEntry(kind: .transpose, ops: ["Transpose"], output: .plain, lower: transpose),
        LoweringEntry(kind: .slice, ops: ["Slice"], output: .plain, lower: slice),
        LoweringEntry(kind: .resize, ops: ["Resize"], output: .input, lower: resize),
    ]

    /// A concatenation's non-empty float parts, its axis and its output shape; nil when it is not one of floats.
    static func concatParts(_ l: LayerLowering) throws -> (parts: [PlanValue], axis: Int, shape: [Int])? {
        let (t, shape) = try l.outputType()
        guard t == .float, let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: shape.count) else { return nil }
        var parts: [PlanValue] = []
        for i in l.layer.inputs.indices {
            guard let p = try l.operand(i), p.dataType == .float, p.shape.count == shape.count else { return nil }
            if p.shape[axis] > 0 { parts.append(p) }
        }
        return parts.isEmpty ? nil : (parts, axis, shape)
    }

    /// A concatenation: along channels with no step where the parts can be written in
    /// place (`ExecutionPlan.concatenateInPlace`), else oneDNN's concat, with the parts
    /// brought to one layout first where their mix leaves oneDNN only its reference one.
    static func concat(_ l: LayerLowering) throws -> LayerDecision? {
        // Parts all stored in BF16 (BF16 layers' outputs) are placed as they are: the result is
        // BF16 too, exactly the values an FP32 concatenation would hold, without conversions.
        let stored = l.layer.inputs.indices.compactMap { l.storedValue($0) }
        if let (t, shape) = try? l.outputType(), t == .float, stored.count == l.layer.inputs.count, stored.allSatisfy({ $0.dataType == .float && $0.storedType == .bfloat16 }),
           let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: shape.count), axis == 1,
           stored.allSatisfy({ $0.shape.count == shape.count }),
           try l.plan.concatenateInPlace(stored.filter { $0.shape[1] > 0 }, name: l.layer.outputs[0], shape: shape, layer: l.layer.name) {
            var decision = l.decided(.concat)
            decision.precision = .bf16
            return decision
        }
        guard var (parts, axis, shape) = try concatParts(l) else { return nil }
        if axis == 1, try l.plan.concatenateInPlace(parts, name: l.layer.outputs[0], shape: shape, layer: l.layer.name) { return l.decided(.concat) }
        func make() throws -> DNNLPrimitive {
            var sources = try parts.map { try $0.descriptor() }
            var dst = try memoryDescriptor(shape, dnnl_format_tag_any)
            var pd: dnnl_primitive_desc_t?
            let attributes = try DNNLAttributes()
            DNNLPrimitive.creation.enter(exclusive: false)
            defer { DNNLPrimitive.creation.leave() }
            try check(dnnl_concat_primitive_desc_create(&pd, &dst, Int32(sources.count), Int32(axis), &sources, attributes.handle, l.plan.engine.handle),
                      "describing the concat")
            return try DNNLPrimitive(descriptor: pd!)
        }
        var primitive = try make()
        if primitive.isReference, parts.contains(where: { !$0.isPlain }) {
            parts = try parts.map { try l.plan.plain($0) }
            primitive = try make()
        }
        let sources = try parts.map { try $0.descriptor() }
        let dstLayout = primitive.query(dnnl_query_dst_md)
        let out = l.plan.newValue(l.layer.outputs[0], .float, shape, layout: dstLayout)
        var arguments = zip(parts, sources).enumerated().map { (arg: DNNL_ARG_MULTIPLE_SRC + Int32($0.offset), value: $0.element.0, descriptor: $0.element.1) }
        arguments.append((DNNL_ARG_DST, out, dstLayout))
        try l.emit(.concat, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: arguments))
        return l.decided(.concat)
    }

    /// Nearest-neighbour upsampling by whole factors, where ONNX's coordinate modes all
    /// pick source index ⌊o / factor⌋ as oneDNN's resampling does; linear resizing with
    /// half-pixel centres to any size.
    static func resize(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.opset >= 11, var x = l.value(0), x.dataType == .float, (3...5).contains(x.shape.count) else { return nil }
        let a = l.attributes
        let mode = try a.string("mode", "nearest")
        guard mode == "nearest" || mode == "linear", try a.int("antialias", 0) == 0 else { return nil }
        let transform = try a.string("coordinate_transformation_mode", "half_pixel"), rounding = try a.string("nearest_mode", "round_prefer_floor")
        let (_, outShape) = try l.outputType()
        guard outShape.count == x.shape.count, Array(outShape[0..<2]) == Array(x.shape[0..<2]), x.shape.allSatisfy({ $0 > 0 }) else { return nil }
        if mode == "nearest" {
            let fits = (transform == "asymmetric" && rounding == "floor")
                || (["half_pixel", "pytorch_half_pixel"].contains(transform) && rounding.hasPrefix("round"))
            guard fits, zip(outShape[2...], x.shape[2...]).allSatisfy({ $0 % $1 == 0 && $0 >= $1 }) else { return nil }
        } else {
            // oneDNN's linear resampling samples at half-pixel centres, clamped at the borders:
            // ONNX's half_pixel, and pytorch_half_pixel where no output size is 1.
            guard transform == "half_pixel" || (transform == "pytorch_half_pixel" && outShape[2...].allSatisfy({ $0 > 1 })) else { return nil }
            // ONNX maps coordinates with the given scales, oneDNN with the ratio of sizes:
            // the same only where the sizes are given, or the scales are exactly that ratio.
            if l.present(3), !l.isConstant(3) {
                // Sizes computed at run time (a dynamic export's Shape → Concat): those the plan was made for, checked when it runs.
                guard let sizes = l.value(3), sizes.dataType == .int64, sizes.count == x.shape.count, try a.ints("axes") == nil else { return nil }
                let values = try l.plan.plain(sizes), name = l.layer.name, output = l.layer.outputs[0]
                l.plan.steps.append(SwiftStep(layer: name, reads: [values], writes: []) { p in
                    let given = (0..<outShape.count).map { Int(p.address(values).load(fromByteOffset: 8 * $0, as: Int64.self)) }
                    guard given == outShape else { throw PlanMismatch(layer: name, value: output, planned: outShape, actual: given) }
                })
            } else if !l.present(3) {
                guard l.present(2), let scales = l.constant(2), scales.count == x.shape.count else { return nil }
                for d in 2..<x.shape.count where Float(scales.double(at: d)) != Float(outShape[d]) / Float(x.shape[d]) { return nil }
            }
        }
        // oneDNN resamples a plain (NCHW) tensor an order of magnitude slower than a
        // channels-last one (a segmentation head upsampling 21 classes from 40×40 to
        // 320×320: 2.3 against 0.19 ms): the smaller input is reordered instead.
        if x.isPlain, x.shape[1] > 1, let nhwc = try Layout.channelsLast.descriptor(x.shape) { x = try l.plan.inLayout(x, nhwc) }
        var src = try x.descriptor()
        var dst = try memoryDescriptor(outShape, dnnl_format_tag_any)
        var desc = dnnl_resampling_desc_t()
        try check(dnnl_resampling_forward_desc_init(&desc, dnnl_forward_inference,
                                                    mode == "linear" ? dnnl_resampling_linear : dnnl_resampling_nearest, nil, &src, &dst), "describing the resize")
        let primitive = try DNNLPrimitive(desc, attributes: DNNLAttributes(), engine: l.plan.engine, what: "resize")
        let dstLayout = primitive.query(dnnl_query_dst_md)
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape, layout: dstLayout)
        try l.emit(.resize, PrimitiveStep(layer: l.layer.name, primitive: primitive, arguments: [(DNNL_ARG_SRC, x, src), (DNNL_ARG_DST, out, dstLayout)]))
        return l.decided(.resize)
    }

    /// A split whose parts are contiguous is a set of views: every dimension before
    /// the axis is 1 in plain layout, or a channel split at block boundaries of a
    /// batch-1 blocked tensor.
    static func split(_ l: LayerLowering) throws -> LayerDecision? {
        // The parts of a channel-laid-out value are views of it as stored (BF16 parts of a
        // BF16 value: no conversion); otherwise views of its plain float form.
        guard let stored = l.storedValue(0), let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: stored.shape.count),
              !l.layer.outputs.contains(where: \.isEmpty) else { return nil }
        var parts: [(String, [Int])] = []
        for name in l.layer.outputs {
            let (t, shape) = try l.plan.type(of: name)
            guard t == stored.dataType, shape.count == stored.shape.count else { return nil }
            parts.append((name, shape))
        }
        guard parts.reduce(0, { $0 + $1.1[axis] }) == stored.shape[axis] else { return nil }
        if !stored.isPlain, axis == 1 {
            var start = 0
            let offsets = parts.map { p -> Int in defer { start += p.1[1] }; return start }
            if let views = try zip(parts, offsets).map({ try l.plan.channelRange(stored, from: $1, count: $0.1[1]) }) as [(Int, dnnl_memory_desc_t)?]?,
               views.allSatisfy({ $0 != nil }) {
                for ((name, shape), view) in zip(parts, views) { _ = l.plan.alias(name, of: stored, type: stored.dataType, shape: shape, layout: view!.1, byteOffset: view!.0) }
                return l.decided(.view)
            }
        }
        guard stored.shape[..<axis].allSatisfy({ $0 == 1 }) else { return nil }
        // Row-major in the stored type (a BF16 value stays BF16: a layout change, no conversion).
        let x = try l.plan.plainStored(stored), element = x.storedType
        let inner = stored.shape[(axis + 1)...].reduce(1, *) * element.byteSize
        var offset = 0
        for (name, shape) in parts {
            _ = l.plan.alias(name, of: x, type: stored.dataType, shape: shape, layout: element == stored.dataType ? nil : try plainDescriptor(shape, element),
                             byteOffset: offset)
            offset += shape[axis] * inner
        }
        return l.decided(.view)
    }

    /// A split whose parts are not contiguous (along an inner axis: GPT-2's query, key and
    /// value): each part a reorder from a strided view of the input.
    static func splitCopy(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), dnnlType(v.dataType) != nil, !v.shape.isEmpty,
              let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: v.shape.count),
              !l.layer.outputs.contains(where: \.isEmpty) else { return nil }
        var parts: [(String, [Int])] = []
        for name in l.layer.outputs {
            let (t, shape) = try l.plan.type(of: name)
            guard t == v.dataType, shape.count == v.shape.count, shape.allSatisfy({ $0 > 0 }) else { return nil }
            parts.append((name, shape))
        }
        guard parts.reduce(0, { $0 + $1.1[axis] }) == v.shape[axis] else { return nil }
        let x = try l.plan.plain(v)
        let strides = ShapeMath.strides(v.shape)
        var start = 0
        for (name, shape) in parts {
            let view = try stridedDescriptor(shape, strides: strides, v.dataType)
            let source = l.plan.alias(name + "#view", of: x, type: v.dataType, shape: shape, layout: view, byteOffset: start * strides[axis] * v.dataType.byteSize)
            let out = l.plan.newValue(name, v.dataType, shape)
            let primitive = try reorderPrimitive(from: view, to: out.descriptor(), engine: l.plan.engine)
            try l.emit(.splitCopy, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                                 arguments: [(DNNL_ARG_FROM, source, view), (DNNL_ARG_TO, out, try out.descriptor())]))
            start += shape[axis]
        }
        return l.decided(.splitCopy)
    }

    /// Reshape-like layers on a plain tensor are views: no step at all. A Reshape whose
    /// target is computed at run time gets a step that checks it resolves to the planned shape.
    static func view(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0) else { return nil }
        var computedTarget: PlanValue?
        switch l.op {
        case "Reshape":
            guard l.present(1) else { return nil }
            if !l.isConstant(1) {
                guard let t = l.value(1), t.dataType == .int64, t.shape.count == 1 else { return nil }
                computedTarget = t
            }
        case "Squeeze", "Unsqueeze": if l.present(1) && !l.isConstant(1) { return nil }
        case "Dropout": if l.present(2) { guard let m = l.constant(2), m.count == 1, m.doubles[0] == 0 else { return nil } }
        default: break
        }
        let (t, shape) = try l.outputType()
        guard t == v.dataType, shape.reduce(1, *) == v.count else { return nil }
        if computedTarget == nil, let layout = try channelLayoutView(of: v, as: shape) {
            // Dropping or adding a size-1 spatial dimension (TensorFlow's 1-D convolutions
            // as one-wide 2-D ones) keeps a channel layout's bytes: a view in that layout.
            _ = l.plan.alias(l.layer.outputs[0], of: v, type: t, shape: shape, layout: layout)
            return l.decided(.view)
        }
        let x = try l.plan.plain(v)
        _ = l.plan.alias(l.layer.outputs[0], of: x, type: t, shape: shape)
        if let target = computedTarget {
            let allowZero = try l.attributes.int("allowzero", 0) != 0, input = v.shape, name = l.layer.name, output = l.layer.outputs[0]
            l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [target], writes: []) { p in
                var resolved = ShapeKernelLowering.ints(target, p)
                for i in resolved.indices where resolved[i] == 0 && !allowZero && i < input.count { resolved[i] = input[i] }
                if let i = resolved.firstIndex(of: -1) {
                    let known = resolved.enumerated().filter { $0.offset != i }.reduce(1) { $0 * $1.element }
                    resolved[i] = known > 0 ? input.reduce(1, *) / known : -1
                }
                guard resolved == shape else { throw PlanMismatch(layer: name, value: output, planned: shape, actual: resolved) }
            })
        }
        return l.decided(.view)
    }

    /// The layout of `v` (channels last or channel-blocked) at `shape`, when `shape` only
    /// adds or drops size-1 spatial dimensions: the same bytes. Nil otherwise.
    static func channelLayoutView(of v: PlanValue, as shape: [Int]) throws -> dnnl_memory_desc_t? {
        guard !v.isPlain, v.dataType == .float, (3...5).contains(shape.count), v.shape.count >= 3, shape.count != v.shape.count,
              shape.prefix(2) == v.shape.prefix(2), shape[2...].filter({ $0 != 1 }) == v.shape[2...].filter({ $0 != 1 }) else { return nil }
        return try Layout.restated(v.layout, shape: v.shape, as: shape)
    }

    /// A slice with constant starts, ends, axes and positive steps is a reorder from a
    /// strided view of the input (offset to the first element) to the plain output.
    static func slice(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), dnnlType(v.dataType) != nil, !v.shape.isEmpty, v.shape.allSatisfy({ $0 > 0 }) else { return nil }
        let rank = v.shape.count
        func ints(_ i: Int, attribute: String) throws -> [Int]? {
            if l.layer.opset < 10 { return try l.attributes.ints(attribute) }
            guard l.present(i) else { return nil }
            guard let t = l.constant(i), t.dataType == .int64 || t.dataType == .int32 else { throw SliceNotConstant() }
            return t.int64s.map { Int(clamping: $0) }
        }
        struct SliceNotConstant: Error {}
        let starts: [Int], ends: [Int], axes: [Int], steps: [Int]
        do {
            guard let s = try ints(1, attribute: "starts"), let e = try ints(2, attribute: "ends"), s.count == e.count else { return nil }
            starts = s; ends = e
            axes = try ints(3, attribute: "axes") ?? Array(0..<s.count)
            steps = try ints(4, attribute: "steps") ?? Array(repeating: 1, count: s.count)
        } catch is SliceNotConstant { return nil }
        guard axes.count == starts.count, steps.count == starts.count, steps.allSatisfy({ $0 > 0 }) else { return nil }
        var first = Array(repeating: 0, count: rank), step = Array(repeating: 1, count: rank), outShape = v.shape
        var seen = Set<Int>()
        for (k, a) in axes.enumerated() {
            guard let axis = ShapeMath.normalizeAxis(a, rank: rank), seen.insert(axis).inserted else { return nil }
            let size = v.shape[axis]
            // ONNX clamps starts to [0, size] and ends to [0, size] for positive steps.
            func clamp(_ x: Int) -> Int { min(max(x < 0 ? x + size : x, 0), size) }
            let b = clamp(starts[k]), e = clamp(ends[k])
            first[axis] = b
            step[axis] = steps[k]
            outShape[axis] = e > b ? (e - b + steps[k] - 1) / steps[k] : 0
        }
        guard try l.outputType() == (v.dataType, outShape), outShape.allSatisfy({ $0 > 0 }) else { return nil }
        let x = try l.plan.plain(v)
        let strides = ShapeMath.strides(v.shape)
        let offset = zip(first, strides).reduce(0) { $0 + $1.0 * $1.1 } * v.dataType.byteSize
        let view = try stridedDescriptor(outShape, strides: zip(strides, step).map { $0 * $1 }, v.dataType)
        let source = l.plan.alias(l.layer.name + "#view", of: x, type: v.dataType, shape: outShape, layout: view, byteOffset: offset)
        let out = l.plan.newValue(l.layer.outputs[0], v.dataType, outShape)
        let primitive = try reorderPrimitive(from: view, to: out.descriptor(), engine: l.plan.engine)
        try l.emit(.slice, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                         arguments: [(DNNL_ARG_FROM, source, view), (DNNL_ARG_TO, out, try out.descriptor())]))
        return l.decided(.slice)
    }

    /// A transpose is a reorder from a strided view of the input to the plain output.
    static func transpose(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), dnnlType(v.dataType) != nil, !v.shape.isEmpty else { return nil }
        let rank = v.shape.count
        let perm = try l.attributes.ints("perm") ?? Array((0..<rank).reversed())
        guard perm.sorted() == Array(0..<rank) else { return nil }
        let x = try l.plan.plain(v)
        let strides = ShapeMath.strides(v.shape)
        let outShape = perm.map { v.shape[$0] }
        guard try l.outputType().1 == outShape else { return nil }
        let view = try stridedDescriptor(outShape, strides: perm.map { strides[$0] }, v.dataType)
        let out = l.plan.newValue(l.layer.outputs[0], v.dataType, outShape)
        let primitive = try reorderPrimitive(from: view, to: out.descriptor(), engine: l.plan.engine)
        try l.emit(.transpose, PrimitiveStep(layer: l.layer.name, primitive: primitive,
                                        arguments: [(DNNL_ARG_FROM, x, view), (DNNL_ARG_TO, out, try out.descriptor())]))
        return l.decided(.transpose)
    }
}

extension ExecutionPlan {
    /// Where channels [c0, c0 + count) of a batch-1 tensor lie contiguously: the
    /// byte offset and the layout of that part; nil when they are not contiguous.
    func channelRange(_ v: PlanValue, from c0: Int, count: Int) throws -> (Int, dnnl_memory_desc_t)? {
        guard v.shape.count >= 2, v.shape[0] == 1, count > 0, c0 + count <= v.shape[1] else { return nil }
        // In the type the value is stored in (a float value a BF16 layer wrote is BF16 here).
        let element = v.storedType, spatial = v.shape[2...].reduce(1, *), size = element.byteSize
        let partShape = [1, count] + v.shape[2...]
        let layout = Layout.of(v.layout, shape: v.shape)
        if layout == .plain { return (c0 * spatial * size, try plainDescriptor(partShape, element)) }
        guard let b = layout.channelBlock, c0 % b == 0, count % b == 0 || c0 + count == v.shape[1], let tag = layout.formatTag(rank: v.shape.count),
              let type = dnnlType(element) else { return nil }
        return ((c0 / b) * spatial * b * size, try memoryDescriptor(partShape, tag, type))
    }

    /// Concatenation along channels with (almost) no copy: the parts' buffers are
    /// placed inside the result's, each where its channels go, so the layers that
    /// produce them write straight into the result. A part that is itself inside an
    /// earlier concatenation's result brings that whole result along (DenseNet's
    /// blocks concatenate the same features again and again: each is written once).
    /// The result takes the channel-blocked or plain layout that most of the parts'
    /// bytes already have; parts in another layout, graph inputs, constants and
    /// parts that cannot be placed are reordered into their slots. Batch 1 only (a
    /// channel range is contiguous there); false when no part could be placed.
    func concatenateInPlace(_ parts: [PlanValue], name: String, shape: [Int], layer: String) throws -> Bool {
        // The parts' stored element type (FP32, or BF16 for BF16 layers' outputs): all the same.
        guard shape[0] == 1, let element = parts.first?.storedType, parts.allSatisfy({ $0.storedType == element }),
              let elementCode = dnnlType(element) else { return false }
        // The layout of the result: among the parts' plain or channel-blocked layouts, the one holding the most bytes.
        var weight: [Layout: Int] = [:]
        for p in parts where p.buffer >= 0 && p.constant == nil {
            let layout = Layout.of(p.layout, shape: p.shape)
            if layout == .plain || layout.channelBlock != nil { weight[layout, default: 0] += p.byteCount }
        }
        guard var layout = weight.max(by: { $0.value < $1.value || ($0.value == $1.value && $0.key.rawValue > $1.key.rawValue) })?.key else { return false }
        // Parts of 8·k channels (FPN branches of 24 or 40) do not start at 16-channel blocks:
        // in 8-channel blocks they do, each part reordered into its slot by a fast reorder
        // instead of oneDNN's generic concatenation of unaligned blocked parts.
        var realigned = false
        if layout == .blocked16, parts.contains(where: { $0.shape[1] % 16 != 0 }), parts.dropLast().allSatisfy({ $0.shape[1] % 8 == 0 }) {
            layout = .blocked8
            realigned = true
        }
        let out: dnnl_memory_desc_t
        if layout == .plain {
            out = try plainDescriptor(shape, element)
        } else {
            guard let tag = layout.formatTag(rank: shape.count) else { return false }
            out = try memoryDescriptor(shape, tag, elementCode)
        }
        let result = PlanValue(name: name, dataType: .float, shape: shape, layout: Self.isPlain(out, shape, .float) ? nil : out, buffer: -1)
        // Where each part's channels go, and where its root buffer would go for that.
        var slots: [(slot: Int, descriptor: dnnl_memory_desc_t, root: Int, place: Int?)] = []
        var placements: [Int: Int] = [:]
        var start = 0
        for p in parts {
            defer { start += p.shape[1] }
            guard let (slot, descriptor) = try channelRange(result, from: start, count: p.shape[1]) else { return false }
            let (root, delta) = rootOf(p)
            // The part's position inside its root buffer (a split view, an earlier result) fixes where the root goes.
            let fits = p.buffer >= 0 && p.constant == nil && buffers[root].first >= 0 && Layout.of(p.layout, shape: p.shape) == layout
                && slot - delta >= 0 && slot - delta + buffers[root].bytes <= result.byteCount
            let place = fits && (placements[root] ?? (slot - delta)) == slot - delta ? slot - delta : nil
            if let place, placements[root] == nil { placements[root] = place }
            slots.append((slot, descriptor, root, place))
        }
        // A placed root's bytes may only cover slots of its own parts, each where it already is:
        // anything else in that span (a split sibling, an earlier concatenation's other parts, the
        // same part wanted twice, another placed root) is live data a copy or a producer writing
        // into another slot would overwrite. Every byte of the result is some part's slot, so two
        // overlapping roots cannot both pass; the ones that fail are copied instead.
        var spans: [(start: Int, end: Int)] = []
        for (p, s) in zip(parts, slots) {
            var d = s.descriptor
            spans.append((s.slot, s.slot + max(anvil_dnnl_md_size(&d), p.byteCount)))
        }
        var changed = true
        while changed {
            changed = false
            for (root, offset) in placements {
                let rootEnd = offset + buffers[root].bytes
                let foreign = zip(slots, spans).contains { s, span in
                    span.start < rootEnd && offset < span.end && !(s.root == root && s.place == offset)
                }
                if foreign { placements[root] = nil; changed = true }
            }
        }
        let copies = zip(parts, slots).filter { part, s in s.place == nil || placements[s.root] != s.place }
            .map { part, s in (part: part, slot: s.slot, descriptor: s.descriptor) }
        guard !placements.isEmpty || realigned else { return false }
        let v = newValue(name, .float, shape, layout: out)
        for (root, offset) in placements {
            place(root, inside: v.buffer, at: offset)
            addName(name, to: root)  // nothing overwrites a part while the result is read
        }
        for (k, copy) in copies.enumerated() {
            let slot = alias("\(name)#part\(k)", of: v, type: .float, shape: [1, copy.part.shape[1]] + shape[2...],
                             layout: copy.descriptor, byteOffset: copy.slot)
            let primitive = try reorderPrimitive(from: copy.part.descriptor(), to: copy.descriptor, engine: engine)
            steps.append(PrimitiveStep(layer: layer, primitive: primitive,
                                       arguments: [(DNNL_ARG_FROM, copy.part, try copy.part.descriptor()), (DNNL_ARG_TO, slot, copy.descriptor)],
                                       implementation: "reorder"))
        }
        return true
    }

    /// The buffer at the top of `v`'s chain of placements, and `v`'s byte offset inside it.
    func rootOf(_ v: PlanValue) -> (Int, Int) {
        guard v.buffer >= 0 else { return (v.buffer, v.offset) }
        var b = v.buffer, delta = v.offset
        while let p = buffers[b].parent { delta += p.offset; b = p.buffer }
        return (b, delta)
    }
}
