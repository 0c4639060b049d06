import AnvilCore
import COneDNN

/// Layers run by Swift kernels on arena memory, where oneDNN has no fast kernel or
/// sums in a thread-count-dependent order (`SwiftKernels`).
enum SwiftKernelLowering {
    static let entries = [
        LoweringEntry(kind: .globalAveragePool, ops: ["GlobalAveragePool"], output: .plain, lower: globalAveragePool),
        LoweringEntry(kind: .gather, ops: ["Gather"], output: .plain, lower: gather),
        LoweringEntry(kind: .cast, ops: ["Cast"], output: .plain, lower: cast),
        LoweringEntry(kind: .logical, ops: ["And", "Or", "Xor"], output: .plain, lower: logical),
        LoweringEntry(kind: .select, ops: ["Where"], output: .plain, lower: select),
        LoweringEntry(kind: .dynamicQuantize, ops: ["DynamicQuantizeLinear"], output: .plain, multipleOutputs: true, lower: dynamicQuantize),
    ]
    /// Rows tried after oneDNN's own kernels for the same ops.
    static let fallbacks = [
        LoweringEntry(kind: .outerSoftmax, ops: ["Softmax"], output: .plain, lower: outerSoftmax),
        LoweringEntry(kind: .channelAffine, ops: ["Mul", "Add", "Sub"], output: .input, lower: channelAffine),
        LoweringEntry(kind: .broadcastArithmetic, ops: ["Add", "Sub", "Mul", "Div"], output: .plain, lower: broadcastArithmetic),
    ]

    /// The mean over the spatial dimensions in any channel layout, into plain [N, C, 1…]:
    /// oneDNN's average sums in an order that depends on the thread count.
    static func globalAveragePool(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.value(0), x.dataType == .float, (3...5).contains(x.shape.count) else { return nil }
        let layout = Layout.of(x.layout, shape: x.shape)
        guard layout != .opaque else { return nil }
        let (_, outShape) = try l.outputType()
        let out = l.plan.newValue(l.layer.outputs[0], .float, outShape)
        let n = x.shape[0], c = x.shape[1], count = x.shape[2...].reduce(1, *)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            SwiftKernels.globalAveragePool(p.address(x).assumingMemoryBound(to: Float.self), layout: layout, n: n, c: c, spatial: count,
                                           into: p.address(out).assumingMemoryBound(to: Float.self))
        })
        return l.decided(.globalAveragePool)
    }

    /// Softmax over an outer axis (oneDNN's is its slow reference implementation).
    static func outerSoftmax(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, !v.shape.isEmpty, let axis = try SoftmaxLowering.axis(l, rank: v.shape.count),
              axis != v.shape.count - 1 else { return nil }
        let x = try l.plan.plain(v)
        let outer = x.shape[..<axis].reduce(1, *), inner = x.shape[(axis + 1)...].reduce(1, *), n = x.shape[axis]
        let scratch = l.plan.ownedFloats(2 * inner)
        let out = l.inPlaceOutput(over: x)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            SwiftKernels.softmax(p.address(x).assumingMemoryBound(to: Float.self), outer: outer, axis: n, inner: inner,
                                 into: p.address(out).assumingMemoryBound(to: Float.self), scratch: scratch)
        })
        return l.decided(.outerSoftmax)
    }

    /// Gather (embedding lookups along axis 0, a class token along axis 1 …): for every
    /// index of the outer dimensions, rows copied from the table, which a constant table
    /// supplies in place from the engine file. Indices are checked at run time.
    static func gather(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.present(0), l.present(1), let indices = try l.operand(1), indices.dataType == .int64 || indices.dataType == .int32,
              let (type, shape) = try? l.outputType(), type != .string else { return nil }
        let tableShape = l.isConstant(0) ? l.plan.constants.type(of: l.layer.inputs[0])?.1 : l.value(0)?.shape
        guard let tableShape, !tableShape.isEmpty, let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: tableShape.count),
              shape == Array(tableShape[..<axis]) + indices.shape + Array(tableShape[(axis + 1)...]) else { return nil }
        guard let table = try l.operand(0), table.dataType == type else { return nil }
        let t = try l.plan.plain(table), i = try l.plan.plain(indices)
        let out = l.plan.newValue(l.layer.outputs[0], type, shape)
        let rows = tableShape[axis], rowBytes = tableShape[(axis + 1)...].reduce(1, *) * type.byteSize, count = indices.shape.reduce(1, *)
        let outer = tableShape[..<axis].reduce(1, *)
        let wide = indices.dataType == .int64, name = l.layer.name
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [t, i], writes: [out]) { p in
            let source = p.address(t), target = p.address(out), index = p.address(i)
            for k in 0..<count {
                let row = try IndexingLowering.index(UnsafeRawPointer(index), k, wide: wide, bound: rows, layer: name, op: "Gather")
                for o in 0..<outer {
                    (target + (o * count + k) * rowBytes).copyMemory(from: source + (o * rows + row) * rowBytes, byteCount: rowBytes)
                }
            }
        })
        return l.decided(.gather)
    }

    /// A Mul, Add or Sub of an [N, C, spatial…] tensor by a per-channel constant
    /// ([C, 1, …] or [1, C, 1, …]: Paddle's batch normalization), in the tensor's own
    /// layout, in place when nothing else reads it.
    static func channelAffine(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2 else { return nil }
        // The runtime tensor and the constant, either way round (Sub only as x − c).
        let (xi, ci) = l.value(0) != nil && l.isConstant(1) ? (0, 1) : (1, 0)
        guard l.op != "Sub" || xi == 0, let x = l.value(xi), x.dataType == .float, (3...5).contains(x.shape.count),
              let constant = l.constant(ci), constant.dataType == .float else { return nil }
        let c = x.shape[1]
        let perChannel = Array(repeating: 1, count: x.shape.count - constant.rank) + constant.shape
        guard constant.rank <= x.shape.count, perChannel[1] == c, perChannel.enumerated().allSatisfy({ $0.offset == 1 || $0.element == 1 }),
              try l.outputType() == (.float, x.shape) else { return nil }
        let layout = Layout.of(x.layout, shape: x.shape)
        guard layout != .opaque else { return nil }
        let block = layout.channelBlock ?? 1
        let padded = (c + block - 1) / block * block
        let parameters = l.plan.ownedFloats(padded)
        let values = constant.floats
        for j in 0..<padded { parameters[j] = j < c ? (l.op == "Sub" ? -values[j] : values[j]) : (l.op == "Mul" ? 1 : 0) }
        let operation: SwiftKernels.ChannelOperation = l.op == "Mul" ? .multiply : .add
        let out = l.inPlaceOutput(over: x)
        let n = x.shape[0], spatial = x.shape[2...].reduce(1, *)
        let step = SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            SwiftKernels.channelAffine(p.address(x).assumingMemoryBound(to: Float.self), layout: layout, n: n, c: c, spatial: spatial, operation,
                                       parameters, into: p.address(out).assumingMemoryBound(to: Float.self))
        }
        l.plan.steps.append(step)
        return l.decided(.channelAffine)
    }

    /// DynamicQuantizeLinear of a float tensor (`SwiftKernels.dynamicQuantize`).
    static func dynamicQuantize(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, l.layer.outputs.count == 3 else { return nil }
        let x = try l.plan.plain(v)
        let y = l.plan.newValue(l.layer.outputs[0], .uint8, v.shape)
        let scale = l.plan.newValue(l.layer.outputs[1], .float, [])
        let zeroPoint = l.plan.newValue(l.layer.outputs[2], .uint8, [])
        let count = v.count
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [y, scale, zeroPoint]) { p in
            let (s, z) = SwiftKernels.dynamicQuantize(p.address(x).assumingMemoryBound(to: Float.self), count: count,
                                                     into: p.address(y).assumingMemoryBound(to: UInt8.self))
            p.address(scale).storeBytes(of: s, as: Float.self)
            p.address(zeroPoint).storeBytes(of: z, as: UInt8.self)
        })
        return l.decided(.dynamicQuantize)
    }

    /// Cast between booleans, integers and floats (`SwiftElementwise.cast`).
    static func cast(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), SwiftElementwise.types.contains(v.dataType), let (t, shape) = try? l.outputType(),
              SwiftElementwise.types.contains(t), shape == v.shape else { return nil }
        let x = try l.plan.plain(v)
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        let count = v.count, from = v.dataType
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            SwiftElementwise.cast(p.address(x), from: from, count: count, to: p.address(out), t)
        })
        return l.decided(.cast)
    }

    /// And, Or and Xor of boolean tensors with broadcasting.
    static func logical(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2, let a0 = try l.operand(0), let b0 = try l.operand(1), a0.dataType == .bool, b0.dataType == .bool,
              let (t, shape) = try? l.outputType(), t == .bool, let walk = SwiftElementwise.Broadcast([a0.shape, b0.shape], to: shape) else { return nil }
        let a = try l.plan.plain(a0), b = try l.plan.plain(b0), op = l.layer.opType
        let out = l.plan.newValue(l.layer.outputs[0], .bool, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [a, b], writes: [out]) { p in
            SwiftElementwise.logical(op, p.address(a), p.address(b), walk, into: p.address(out))
        })
        return l.decided(.logical)
    }

    /// Where(condition, x, y) with broadcasting, for elements of any fixed size.
    static func select(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 3, let c0 = try l.operand(0), let x0 = try l.operand(1), let y0 = try l.operand(2), c0.dataType == .bool,
              x0.dataType == y0.dataType, x0.dataType != .string, let (t, shape) = try? l.outputType(), t == x0.dataType,
              let walk = SwiftElementwise.Broadcast([c0.shape, x0.shape, y0.shape], to: shape) else { return nil }
        let c = try l.plan.plain(c0), x = try l.plan.plain(x0), y = try l.plan.plain(y0), size = t.byteSize
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [c, x, y], writes: [out]) { p in
            SwiftElementwise.select(p.address(c), p.address(x), p.address(y), size: size, walk, into: p.address(out))
        })
        return l.decided(.select)
    }

    /// Add, Sub, Mul or Div of float tensors under any numpy broadcast, in plain layout:
    /// for the broadcasts oneDNN's binary runs only on its reference implementation
    /// (along a middle dimension, or both operands broadcast).
    static func broadcastArithmetic(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2, let a0 = try l.operand(0), let b0 = try l.operand(1), a0.dataType == .float, b0.dataType == .float,
              let (t, shape) = try? l.outputType(), t == .float, let walk = SwiftElementwise.Broadcast([a0.shape, b0.shape], to: shape) else { return nil }
        let a = try l.plan.plain(a0), b = try l.plan.plain(b0), op = l.layer.opType
        let out = l.plan.newValue(l.layer.outputs[0], .float, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [a, b], writes: [out]) { p in
            SwiftElementwise.arithmetic(op, p.address(a).assumingMemoryBound(to: Float.self), p.address(b).assumingMemoryBound(to: Float.self), walk,
                                        into: p.address(out).assumingMemoryBound(to: Float.self))
        })
        return l.decided(.broadcastArithmetic)
    }
}
