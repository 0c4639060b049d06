import AnvilCore
import Foundation

/// Swift kernels for the small shape and mask computations dynamic exports keep at run
/// time (Shape, Range, comparisons, integer arithmetic, Expand, Not / IsNaN, slices
/// with computed bounds). A planned run knows every output's shape; kernels whose
/// result depends on values read at run time check them against the plan and throw
/// `PlanMismatch` when they disagree, so the context interprets those shapes instead.
enum ShapeKernelLowering {
    static let entries = [
        LoweringEntry(kind: .shape, ops: ["Shape"], output: .plain, lower: shape),
        LoweringEntry(kind: .range, ops: ["Range"], output: .plain, lower: range),
        LoweringEntry(kind: .compare, ops: ["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual"], output: .plain, lower: compare),
        LoweringEntry(kind: .logical, ops: ["Not", "IsNaN"], output: .plain, lower: unary),
        LoweringEntry(kind: .expand, ops: ["Expand"], output: .plain, lower: expand),
        LoweringEntry(kind: .constantOfShape, ops: ["ConstantOfShape"], output: .plain, lower: constantOfShape),
        LoweringEntry(kind: .pad, ops: ["Pad"], output: .plain, lower: pad),
        LoweringEntry(kind: .argExtreme, ops: ["ArgMax", "ArgMin"], output: .plain, lower: argExtreme),
        LoweringEntry(kind: .exactMath, ops: ["Log", "Pow", "Reciprocal", "Floor", "Ceil", "Erf"], output: .plain, lower: exactMath),
    ]
    /// Rows tried after the float kernels for the same ops.
    static let fallbacks = [
        LoweringEntry(kind: .integerArithmetic, ops: ["Add", "Sub", "Mul", "Div", "Max", "Min"], output: .plain, lower: integerArithmetic),
        LoweringEntry(kind: .integerArithmetic, ops: ["Abs", "Neg", "Sign", "Relu"], output: .plain, lower: integerUnary),
        LoweringEntry(kind: .dynamicSlice, ops: ["Slice"], output: .plain, lower: dynamicSlice),
        LoweringEntry(kind: .swiftConcat, ops: ["Concat"], output: .plain, lower: concat),
    ]

    /// The integer values of a small 1-D or scalar tensor, read at run time.
    static func ints(_ v: PlanValue, _ p: ExecutionPlan) -> [Int] {
        let base = p.address(v)
        return (0..<v.count).map { Int(SwiftElementwise.integer(base, $0, v.dataType)) }
    }

    static func isInteger(_ t: DataType) -> Bool { t == .int64 || t == .int32 }

    /// Shape (with opset 15's start and end): the input's shape, known to the plan.
    static func shape(_ l: LayerLowering) throws -> LayerDecision? {
        guard let x = l.value(0), let (t, outShape) = try? l.outputType(), t == .int64 else { return nil }
        let rank = x.shape.count
        func clamp(_ i: Int) -> Int { min(max(i < 0 ? i + rank : i, 0), rank) }
        let start = clamp(try l.attributes.int("start", 0)), end = clamp(try l.attributes.int("end") ?? rank)
        let values = start < end ? x.shape[start..<end].map { Int64($0) } : []
        guard outShape == [values.count] else { return nil }
        let out = l.plan.newValue(l.layer.outputs[0], .int64, outShape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [], writes: [out]) { p in
            let target = p.address(out)
            for (i, v) in values.enumerated() { target.storeBytes(of: v, toByteOffset: 8 * i, as: Int64.self) }
        })
        return l.decided(.shape)
    }

    /// Range(start, limit, delta) of integers, its length checked against the plan at run time.
    static func range(_ l: LayerLowering) throws -> LayerDecision? {
        guard let start = try l.operand(0), let limit = try l.operand(1), let delta = try l.operand(2),
              [start, limit, delta].allSatisfy({ (isInteger($0.dataType) || $0.dataType == .float) && $0.count == 1 && $0.dataType == start.dataType }),
              let (t, outShape) = try? l.outputType(), t == start.dataType, outShape.count == 1 else { return nil }
        let out = l.plan.newValue(l.layer.outputs[0], t, outShape), name = l.layer.name, output = l.layer.outputs[0]
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [start, limit, delta], writes: [out]) { p in
            if t == .float {
                // As the reference: the count and every value computed in Double from the Float operands.
                func value(_ v: PlanValue) -> Double { Double(p.address(v).load(as: Float.self)) }
                let s = value(start), d = value(delta)
                let count: Int
                do {
                    count = try rangeCount(start: s, limit: value(limit), delta: d)
                } catch AnvilError.invalidTensor(_, let reason) {
                    throw AnvilError.invalidNode(node: name, op: "Range", reason: reason)
                }
                guard count == outShape[0] else { throw PlanMismatch(layer: name, value: output, planned: outShape, actual: [count]) }
                let target = p.address(out).assumingMemoryBound(to: Float.self)
                for i in 0..<count { target[i] = Float(s + Double(i) * d) }
                return
            }
            let s = ints(start, p)[0], e = ints(limit, p)[0], d = ints(delta, p)[0]
            guard d != 0 else { throw AnvilError.invalidNode(node: name, op: "Range", reason: "delta is 0") }
            let count = max(0, (e - s + d + (d > 0 ? -1 : 1)) / d)
            guard count == outShape[0] else { throw PlanMismatch(layer: name, value: output, planned: outShape, actual: [count]) }
            for i in 0..<count { SwiftElementwise.store(Int64(s + i * d), p.address(out), i, t) }
        })
        return l.decided(.range)
    }

    /// Comparisons of integers or floats with broadcasting, into booleans.
    static func compare(_ l: LayerLowering) throws -> LayerDecision? {
        guard let a0 = try l.operand(0), let b0 = try l.operand(1), a0.dataType == b0.dataType, [.int64, .int32, .float].contains(a0.dataType),
              let (t, shape) = try? l.outputType(), t == .bool, let walk = SwiftElementwise.Broadcast([a0.shape, b0.shape], to: shape) else { return nil }
        let a = try l.plan.plain(a0), b = try l.plan.plain(b0), op = l.layer.opType, type = a0.dataType
        let out = l.plan.newValue(l.layer.outputs[0], .bool, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [a, b], writes: [out]) { p in
            SwiftElementwise.compare(op, p.address(a), p.address(b), type: type, walk, into: p.address(out))
        })
        return l.decided(.compare)
    }

    /// Not of booleans, IsNaN of floats.
    static func unary(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == (l.op == "Not" ? .bool : .float), let (t, shape) = try? l.outputType(), t == .bool, shape == v.shape else { return nil }
        let x = try l.plan.plain(v), op = l.layer.opType, count = v.count
        let out = l.plan.newValue(l.layer.outputs[0], .bool, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in SwiftElementwise.unary(op, p.address(x), count: count, into: p.address(out)) })
        return l.decided(.logical)
    }

    /// Add, Sub, Mul, Div, Max, Min of int64 or int32 tensors with broadcasting, as the reference computes them.
    static func integerArithmetic(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.inputs.count == 2, let a0 = try l.operand(0), let b0 = try l.operand(1), a0.dataType == b0.dataType, isInteger(a0.dataType),
              let (t, shape) = try? l.outputType(), t == a0.dataType, let walk = SwiftElementwise.Broadcast([a0.shape, b0.shape], to: shape) else { return nil }
        let a = try l.plan.plain(a0), b = try l.plan.plain(b0), op = l.layer.opType
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [a, b], writes: [out]) { p in
            SwiftElementwise.integerArithmetic(op, p.address(a), p.address(b), type: t, walk, into: p.address(out))
        })
        return l.decided(.integerArithmetic)
    }

    /// Abs, Neg, Sign and Relu of integers (T5's relative position buckets), wrapping as the
    /// reference does (Abs and Neg of the most negative value give it back).
    static func integerUnary(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = try l.operand(0), [.int8, .int32, .int64].contains(v.dataType), let (t, shape) = try? l.outputType(), t == v.dataType, shape == v.shape else { return nil }
        let x = try l.plan.plain(v), op = l.layer.opType, count = v.count
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let source = UnsafeRawPointer(p.address(x)), target = p.address(out)
            for i in 0..<count {
                let a = SwiftElementwise.integer(source, i, t)
                let r: Int64
                switch op {
                case "Abs": r = a == .min ? a : Swift.abs(a)
                case "Neg": r = 0 &- a
                case "Sign": r = a.signum()
                default: r = Swift.max(a, 0)
                }
                SwiftElementwise.store(r, target, i, t)
            }
        })
        return l.decided(.integerArithmetic)
    }

    /// Expand: a broadcast copy to the planned shape; a computed target is checked at run time.
    static func expand(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = try l.operand(0), v.dataType != .string, let target = try l.operand(1), isInteger(target.dataType),
              let (t, shape) = try? l.outputType(), t == v.dataType, let walk = SwiftElementwise.Broadcast([v.shape], to: shape) else { return nil }
        let x = try l.plan.plain(v), size = t.byteSize, name = l.layer.name, output = l.layer.outputs[0]
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x, target], writes: [out]) { p in
            // Numpy broadcasting of the input's shape with the target must give the planned shape.
            let wanted = ints(target, p), rank = max(wanted.count, v.shape.count)
            let a = Array(repeating: 1, count: rank - v.shape.count) + v.shape, b = Array(repeating: 1, count: rank - wanted.count) + wanted
            let result = zip(a, b).map { $0 == 1 ? $1 : $0 }
            guard result == shape, zip(a, b).allSatisfy({ $0 == $1 || $0 == 1 || $1 == 1 }) else {
                throw PlanMismatch(layer: name, value: output, planned: shape, actual: result)
            }
            SwiftElementwise.gather(p.address(x), size: size, walk, into: p.address(out))
        })
        return l.decided(.expand)
    }

    /// A slice whose starts, ends, axes or steps are computed at run time: read then, the
    /// resulting shape checked against the plan, the elements copied through a strided walk.
    static func dynamicSlice(_ l: LayerLowering) throws -> LayerDecision? {
        guard l.layer.opset >= 10, let v = try l.operand(0), v.dataType != .string, !v.shape.isEmpty, let starts = try l.operand(1), let ends = try l.operand(2),
              isInteger(starts.dataType), isInteger(ends.dataType), let (t, shape) = try? l.outputType(), t == v.dataType, shape.count == v.shape.count else { return nil }
        let axesValue = l.present(3) ? try l.operand(3) : nil, stepsValue = l.present(4) ? try l.operand(4) : nil
        if l.present(3) && axesValue == nil || l.present(4) && stepsValue == nil { return nil }
        let x = try l.plan.plain(v), size = t.byteSize, name = l.layer.name, output = l.layer.outputs[0], input = v.shape
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        let reads = [x, starts, ends] + [axesValue, stepsValue].compactMap { $0 }
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: reads, writes: [out]) { p in
            let s = ints(starts, p), e = ints(ends, p)
            let axes = axesValue.map { ints($0, p) } ?? Array(0..<s.count), steps = stepsValue.map { ints($0, p) } ?? Array(repeating: 1, count: s.count)
            guard s.count == e.count, axes.count == s.count, steps.count == s.count else {
                throw AnvilError.invalidNode(node: name, op: "Slice", reason: "starts, ends, axes and steps differ in length")
            }
            var first = Array(repeating: 0, count: input.count), step = Array(repeating: 1, count: input.count), result = input
            for k in s.indices {
                guard let a = ShapeMath.normalizeAxis(axes[k], rank: input.count), steps[k] != 0 else {
                    throw AnvilError.invalidNode(node: name, op: "Slice", reason: "axis \(axes[k]) or step \(steps[k]) is invalid")
                }
                let n = input[a], d = steps[k]
                var b = s[k] < 0 ? s[k] + n : s[k], c = e[k] < 0 ? e[k] + n : e[k]
                if d > 0 { b = min(max(b, 0), n); c = min(max(c, 0), n); result[a] = max(0, (c - b + d - 1) / d) }
                else { b = min(max(b, -1), n - 1); c = min(max(c, -1), n - 1); result[a] = max(0, (b - c - d - 1) / -d) }
                first[a] = b
                step[a] = d
            }
            guard result == shape else { throw PlanMismatch(layer: name, value: output, planned: shape, actual: result) }
            let natural = ShapeMath.strides(input)
            let offset = zip(first, natural).reduce(0) { $0 + $1.0 * $1.1 }
            let walk = SwiftElementwise.Broadcast(shape: shape, strides: zip(natural, step).map { $0 * $1 })
            SwiftElementwise.gather(p.address(x) + offset * size, size: size, walk, into: p.address(out))
        })
        return l.decided(.dynamicSlice)
    }

    /// ConstantOfShape: the planned shape filled with the value; a computed shape is checked at run time.
    static func constantOfShape(_ l: LayerLowering) throws -> LayerDecision? {
        guard let target = try l.operand(0), isInteger(target.dataType), let (t, shape) = try? l.outputType(), t != .string else { return nil }
        let fill = try l.attributes.tensor("value") ?? Tensor(floats: [0], shape: [1])
        guard fill.dataType == t, fill.count == 1 else { return nil }
        let bytes = try fill.withHostBytes { Array($0) }, count = shape.reduce(1, *), name = l.layer.name, output = l.layer.outputs[0]
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [target], writes: [out]) { p in
            let wanted = ints(target, p)
            guard wanted == shape else { throw PlanMismatch(layer: name, value: output, planned: shape, actual: wanted) }
            SwiftKernels.fill(p.address(out), count: count, with: bytes)
        })
        return l.decided(.constantOfShape)
    }

    /// Concat of any element type (integer shape vectors, masks): each part copied into
    /// its place, row by row of the dimensions before the axis.
    static func concat(_ l: LayerLowering) throws -> LayerDecision? {
        guard let (t, shape) = try? l.outputType(), t != .string, !shape.isEmpty,
              let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: shape.count) else { return nil }
        var parts: [PlanValue] = []
        for i in l.layer.inputs.indices {
            guard let p = try l.operand(i), p.dataType == t, p.shape.count == shape.count else { return nil }
            parts.append(try l.plan.plain(p))
        }
        guard parts.reduce(0, { $0 + $1.shape[axis] }) == shape[axis] else { return nil }
        let out = l.plan.newValue(l.layer.outputs[0], t, shape)
        let outer = shape[..<axis].reduce(1, *), inner = shape[(axis + 1)...].reduce(1, *) * t.byteSize
        let rows = parts.map { $0.shape[axis] * inner }, total = shape[axis] * inner
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: parts, writes: [out]) { p in
            let target = p.address(out)
            var offset = 0
            for (part, row) in zip(parts, rows) {
                let source = p.address(part)
                for o in 0..<outer where row > 0 { (target + o * total + offset).copyMemory(from: source + o * row, byteCount: row) }
                offset += row
            }
        })
        return l.decided(.swiftConcat)
    }

    /// Log, Pow by a scalar constant, Reciprocal, Floor, Ceil and Erf of floats with the C
    /// library's correctly rounded functions, as the reference and ONNX Runtime compute
    /// them: their results often feed integer casts (T5's relative position buckets),
    /// where oneDNN's approximations (a few ulps) would change a bucket.
    static func exactMath(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, let (t, shape) = try? l.outputType(), t == .float, shape == v.shape else { return nil }
        var exponent: Float = 1
        if l.op == "Pow" {
            guard let e = l.constant(1), e.count == 1, e.dataType == .float || e.dataType == .double else { return nil }
            exponent = Float(e.double(at: 0))
        } else if l.layer.inputs.count != 1 { return nil }
        let x = try l.plan.plain(v), op = l.layer.opType, count = v.count
        let out = l.inPlaceOutput(over: x)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let a = p.address(x).assumingMemoryBound(to: Float.self), y = p.address(out).assumingMemoryBound(to: Float.self)
            switch op {
            case "Log": for i in 0..<count { y[i] = Float(Foundation.log(Double(a[i]))) }
            case "Pow": for i in 0..<count { y[i] = exponent == 2 ? a[i] * a[i] : Float(Foundation.pow(Double(a[i]), Double(exponent))) }
            case "Reciprocal": for i in 0..<count { y[i] = 1 / a[i] }
            case "Floor": for i in 0..<count { y[i] = a[i].rounded(.down) }
            case "Ceil": for i in 0..<count { y[i] = a[i].rounded(.up) }
            default: for i in 0..<count { y[i] = Float(Foundation.erf(Double(a[i]))) }
            }
        })
        return l.decided(.exactMath)
    }

    /// Pad in constant mode with non-negative, constant pads: the output filled with the
    /// value, then the input's rows copied into place.
    static func pad(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType != .string, !v.shape.isEmpty, let (t, outShape) = try? l.outputType(), t == v.dataType else { return nil }
        let rank = v.shape.count
        guard let pad = try KnownPad(opset: l.layer.opset, attributes: l.attributes, rank: rank, present: l.present, input: l.constant,
                                        modes: ["constant", "reflect", "edge", "wrap"]) else { return nil }
        if pad.mode != "constant" { return try borderPad(l, v, pad) }
        let (pads, fill) = (pad.pads, pad.value)
        guard pads.allSatisfy({ $0 >= 0 }), outShape == (0..<rank).map({ v.shape[$0] + pads[$0] + pads[rank + $0] }),
              v.shape.allSatisfy({ $0 > 0 }) else { return nil }
        let x = try l.plan.plain(v), size = t.byteSize
        let value = try Tensor(t, shape: [1], doubles: [fill]).withHostBytes { Array($0) }
        let out = l.plan.newValue(l.layer.outputs[0], t, outShape)
        let outStrides = ShapeMath.strides(outShape), inShape = v.shape, row = inShape[rank - 1] * size
        let rows = inShape.dropLast().reduce(1, *), total = outShape.reduce(1, *)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let source = p.address(x), target = p.address(out)
            SwiftKernels.fill(target, count: total, with: value)
            var index = Array(repeating: 0, count: rank - 1)
            for r in 0..<rows {
                var offset = pads[rank - 1]
                for d in 0..<(rank - 1) { offset += (index[d] + pads[d]) * outStrides[d] }
                (target + offset * size).copyMemory(from: source + r * row, byteCount: row)
                var d = rank - 2
                while d >= 0 { index[d] += 1; if index[d] < inShape[d] { break }; index[d] = 0; d -= 1 }
            }
        })
        return l.decided(.pad)
    }

    /// Pad in reflect, edge or wrap mode (pads may crop): for every output index of each
    /// dimension, the input index it reads (`Movement.padSource`), found when the plan is
    /// made; a run copies element by element along rows.
    static func borderPad(_ l: LayerLowering, _ v: PlanValue, _ pad: KnownPad) throws -> LayerDecision? {
        let rank = v.shape.count, inShape = v.shape
        guard let (t, outShape) = try? l.outputType(), t == v.dataType, inShape.allSatisfy({ $0 > 0 }),
              outShape == (0..<rank).map({ inShape[$0] + pad.pads[$0] + pad.pads[rank + $0] }), outShape.allSatisfy({ $0 > 0 }) else { return nil }
        let strides = ShapeMath.strides(inShape)
        // Per dimension, the input offset (index · stride) each output index reads.
        let sources = (0..<rank).map { d in (0..<outShape[d]).map { o in (Movement.padSource(o - pad.pads[d], size: inShape[d], mode: pad.mode) ?? 0) * strides[d] } }
        let x = try l.plan.plain(v), size = t.byteSize
        let out = l.plan.newValue(l.layer.outputs[0], t, outShape)
        let last = sources[rank - 1], outer = Array(sources.dropLast()), outerShape = Array(outShape.dropLast())
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let source = p.address(x), target = p.address(out)
            withUnsafeTemporaryAllocation(of: Int.self, capacity: max(outer.count, 1)) { index in
                index.initialize(repeating: 0)
                for row in 0..<outerShape.reduce(1, *) {
                    var base = 0
                    for d in 0..<outer.count { base += outer[d][index[d]] }
                    let to = target + row * last.count * size
                    for (j, offset) in last.enumerated() { (to + j * size).copyMemory(from: source + (base + offset) * size, byteCount: size) }
                    var d = outer.count - 1
                    while d >= 0 { index[d] += 1; if index[d] < outerShape[d] { break }; index[d] = 0; d -= 1 }
                }
            }
        })
        return l.decided(.pad)
    }

    /// ArgMax / ArgMin along a constant axis of floats or integers, comparing as the
    /// reference does (first index of the extreme, or the last with select_last_index).
    static func argExtreme(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), [.float, .int64, .int32].contains(v.dataType), !v.shape.isEmpty,
              let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: v.shape.count),
              let (t, shape) = try? l.outputType(), t == .int64, shape.reduce(1, *) == v.count / max(v.shape[axis], 1), v.shape[axis] > 0 else { return nil }
        let selectLast = try l.attributes.int("select_last_index", 0) != 0, isMax = l.op == "ArgMax", type = v.dataType
        let outer = v.shape[..<axis].reduce(1, *), n = v.shape[axis], inner = v.shape[(axis + 1)...].reduce(1, *)
        let x = try l.plan.plain(v)
        let out = l.plan.newValue(l.layer.outputs[0], .int64, shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let source = p.address(x), target = p.address(out)
            func value(_ i: Int) -> Double {
                type == .float ? Double(source.load(fromByteOffset: 4 * i, as: Float.self)) : Double(SwiftElementwise.integer(source, i, type))
            }
            for o in 0..<outer {
                for i in 0..<inner {
                    var best = 0
                    for k in 1..<n {
                        let a = value((o * n + k) * inner + i), b = value((o * n + best) * inner + i)
                        if isMax ? (a > b || (selectLast && a == b)) : (a < b || (selectLast && a == b)) { best = k }
                    }
                    target.storeBytes(of: Int64(best), toByteOffset: 8 * (o * inner + i), as: Int64.self)
                }
            }
        })
        return l.decided(.argExtreme)
    }
}
