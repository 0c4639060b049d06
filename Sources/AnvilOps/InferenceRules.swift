import AnvilCore
import AnvilIR
import AnvilKernels

// Shape and type inference rules. A rule is written once per family of ops
// (elementwise, broadcasting, reductions, windows ...) and attached to every op
// of the family; ops whose shape depends on data (NonZero, NMS, Unique) get fresh
// symbolic dimensions. The arithmetic on symbolic dimensions is in SymbolicDims.swift.

func registerInferenceRules(_ b: inout RegistryBuilder) {
    b.infer(["Abs", "Neg", "Sqrt", "Reciprocal", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "Floor", "Ceil", "Round", "Sign",
             "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Softsign", "Softplus", "Mish",
             "LeakyRelu", "Elu", "Celu", "Selu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Gelu", "Shrink", "Swish",
             "Identity", "Softmax", "LogSoftmax", "Hardmax", "LRN", "BatchNormalization", "InstanceNormalization",
             "GroupNormalization", "RMSNormalization", "LpNormalization", "CumSum", "CumProd", "Clip", "Trilu", "ReverseSequence",
             "BitwiseNot", "RotaryEmbedding"]) { ctx in
        var out = [ValueFacts(type: ctx.type(0))]
        if ctx.node.opType == "BatchNormalization" { out += [facts(ctx.type(0).elementType, ctx.dims(3)), facts(ctx.type(0).elementType, ctx.dims(4))] }
        return out
    }
    b.infer(["Dropout"]) { ctx in [ValueFacts(type: ctx.type(0)), facts(.bool, ctx.dims(0))] }
    b.infer(["LayerNormalization"]) { ctx in
        let t = ctx.type(0)
        guard let d = t.dims else { return [ValueFacts(type: t)] }
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: d.count)
        let stats = Array(d[..<axis]) + Array(repeating: .known(1), count: d.count - axis)
        return [ValueFacts(type: t), facts(.float, stats), facts(.float, stats)]
    }
    b.infer(["Add", "Sub", "Mul", "Div", "Pow", "Mod", "PRelu", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor",
             "Max", "Min", "Sum", "Mean", "SwiGLU"]) { ctx in
        let present = ctx.inputs.compactMap { $0 }
        if ctx.node.opType != "Pow" { try requireSameElementType(ctx, Array(ctx.inputs.indices)) }
        let element = ctx.type(0).elementType
        let all = present.map(\.type.dims)
        guard all.allSatisfy({ $0 != nil }) else { return [facts(element, nil)] }
        let type = TensorType(element, try broadcastDims(all.map { $0! }, ctx))
        var out = ValueFacts(type: type)
        if ["Add", "Sub", "Mul", "Div"].contains(ctx.node.opType), (type.dims?.count ?? 2) <= 1 { out.dims = propagateArithmetic(ctx, type) }
        return [out]
    }
    b.infer(["Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Xor"]) { ctx in
        try requireSameElementType(ctx, [0, 1])
        guard let a = ctx.dims(0), let c = ctx.dims(1) else { return [facts(.bool, nil)] }
        var out = facts(.bool, try broadcastDims([a, c], ctx))
        if ctx.node.opType == "Equal", let values = decidedEquality(ctx.input(0).dims, ctx.input(1).dims), out.type.rank ?? 0 <= 1 {
            out.constant = try? Tensor(bools: values, shape: out.type.concreteShape ?? [values.count])
        }
        return [out]
    }
    b.infer(["Not", "IsNaN", "IsInf"]) { ctx in [facts(.bool, ctx.dims(0))] }
    b.infer(["Where"]) { ctx in
        let all = [ctx.dims(0), ctx.dims(1), ctx.dims(2)]
        guard all.allSatisfy({ $0 != nil }) else { return [facts(ctx.type(1).elementType, nil)] }
        var out = facts(ctx.type(1).elementType, try broadcastDims(all.map { $0! }, ctx))
        // A shape picked element by element (torch's expand(-1, …) idiom) stays symbolic.
        if let condition = ctx.input(0).constant?.bools, let x = ctx.input(1).dims, let y = ctx.input(2).dims, out.type.rank ?? 0 <= 1 {
            let n = max(condition.count, x.count, y.count)
            if [condition.count, x.count, y.count].allSatisfy({ $0 == n || $0 == 1 }) {
                out.dims = (0..<n).map { i in condition[condition.count == 1 ? 0 : i] ? x[x.count == 1 ? 0 : i] : y[y.count == 1 ? 0 : i] }
            }
        }
        return [out]
    }
    b.infer(["Cast"]) { ctx in
        let to = try ctx.attributes.int("to").flatMap { DataType(rawValue: Int32(clamping: $0)) }
        return [ValueFacts(type: TensorType(to, ctx.dims(0)), constant: nil, dims: ctx.input(0).dims.flatMap { _ in to?.isInteger == true ? ctx.input(0).dims : nil })]
    }
    b.infer(["CastLike"]) { ctx in [facts(ctx.type(1).elementType, ctx.dims(0))] }
    b.infer(["MatMul", "MatMulInteger", "QLinearMatMul"]) { ctx in
        let q = ctx.node.opType.hasSuffix("QLinearMatMul")
        let (ia, ib) = q ? (0, 3) : (0, 1)
        let element: DataType? = switch ctx.node.opType {
        case "MatMulInteger": .int32
        case "FusedQLinearMatMul" where ctx.node.inputs.count < 7 || ctx.node.inputs[6].isEmpty: .float
        case "QLinearMatMul", "FusedQLinearMatMul": ctx.type(7).elementType ?? ctx.type(0).elementType
        default: ctx.type(0).elementType
        }
        guard var a = ctx.dims(ia), var c = ctx.dims(ib), !a.isEmpty, !c.isEmpty else { return [facts(element, nil)] }
        let aVector = a.count == 1, bVector = c.count == 1
        if aVector { a.insert(.known(1), at: 0) }
        if bVector { c.append(.known(1)) }
        if let k1 = a.last!.value, let k2 = c[c.count - 2].value, k1 != k2 { throw ctx.fail("inner dimensions differ: \(k1) and \(k2)") }
        var out = try broadcastDims([Array(a.dropLast(2)), Array(c.dropLast(2))], ctx) + [a[a.count - 2], c.last!]
        if aVector { out.remove(at: out.count - 2) }
        if bVector { out.removeLast() }
        return [facts(element, out)]
    }
    b.infer(["Gemm"]) { ctx in
        guard let a = ctx.dims(0), let c = ctx.dims(1), a.count == 2, c.count == 2 else { return [facts(ctx.type(0).elementType, nil)] }
        let transA = try ctx.attributes.int("transA", 0) != 0, transB = try ctx.attributes.int("transB", 0) != 0
        return [facts(ctx.type(0).elementType, [transA ? a[1] : a[0], transB ? c[0] : c[1]])]
    }
    b.infer(["Conv", "ConvInteger", "QLinearConv", "MaxPool", "AveragePool", "LpPool"]) { ctx in
        let op = ctx.node.opType
        let quantized = op.hasSuffix("QLinearConv")
        let weightIndex = quantized ? 3 : 1
        // Anvil's fused form without y_scale writes floats.
        let floatResult = op == "FusedQLinearConv" && (ctx.node.inputs.count < 7 || ctx.node.inputs[6].isEmpty)
        let element: DataType? = op == "ConvInteger" ? .int32 : floatResult ? .float
            : (quantized ? ctx.type(7).elementType ?? ctx.type(0).elementType : ctx.type(0).elementType)
        guard let x = ctx.dims(0), x.count >= 3 else { return [facts(element, nil)] }
        let isConv = op.contains("Conv")
        let w = isConv ? ctx.dims(weightIndex) : nil
        // Channels the weights do not fit can only fail at run time: refuse them here, with the node.
        if isConv, let w, w.count == x.count, let c = x[1].value, let wc = w[1].value {
            let group = try ctx.attributes.int("group", 1)
            guard group >= 1, c == wc * group else {
                throw ctx.fail("the input has \(c) channels, the weights [\(w.map(\.description).joined(separator: ", "))] with group \(group) take \(wc * max(group, 1))")
            }
            if let m = w[0].value, m % group != 0 { throw ctx.fail("\(m) output channels do not divide into \(group) groups") }
        }
        let kernel = try ctx.attributes.ints("kernel_shape") ?? w.flatMap { w in w.count == x.count ? w.dropFirst(2).compactMap(\.value) : nil }
        let channels: Dim = isConv ? (w?.first ?? .unknown) : x[1]
        var spatial: [Dim] = Array(repeating: .unknown, count: x.count - 2)
        if let kernel, kernel.count == x.count - 2 {
            let pad = try ctx.attributes.string("auto_pad", "NOTSET")
            let inputs = x.dropFirst(2).map { $0.value }
            if inputs.allSatisfy({ $0 != nil }), let autoPad = AutoPad(rawValue: pad) {
                let g = try WindowGeometry(input: inputs.map { $0! }, kernel: kernel, strides: ctx.attributes.ints("strides"),
                                           dilations: ctx.attributes.ints("dilations"), pads: ctx.attributes.ints("pads"),
                                           autoPad: autoPad, ceilMode: ctx.attributes.int("ceil_mode", 0) != 0)
                spatial = g.output.map { .known($0) }
            } else if let autoPad = AutoPad(rawValue: pad), try ctx.attributes.ints("strides").map({ $0.count == kernel.count }) ?? true,
                      try ctx.attributes.ints("dilations").map({ $0.count == kernel.count }) ?? true,
                      try ctx.attributes.ints("pads").map({ $0.count == 2 * kernel.count }) ?? true {
                // Symbolic sizes: an axis the window maps to itself (stride 1, "same" padding) keeps
                // its symbol, another gets a symbol of its own (a size the input's decides).
                let nd = kernel.count
                let strides = try ctx.attributes.ints("strides"), dilations = try ctx.attributes.ints("dilations"), pads = try ctx.attributes.ints("pads")
                let ceil = try ctx.attributes.int("ceil_mode", 0) != 0
                func size(_ axis: Int, _ n: Int) throws -> Int {
                    try WindowGeometry(input: [n], kernel: [kernel[axis]], strides: strides.map { [$0[axis]] }, dilations: dilations.map { [$0[axis]] },
                                       pads: pads.map { [$0[axis], $0[axis + nd]] }, autoPad: autoPad, ceilMode: ceil).output[0]
                }
                for axis in 0..<nd {
                    let d = x[axis + 2]
                    if let n = d.value {
                        spatial[axis] = .known(try size(axis, n))
                    } else if case .symbol = d {
                        let identity = (try? [61, 64, 97].allSatisfy { try size(axis, $0) == $0 }) ?? false
                        spatial[axis] = identity ? d : ctx.freshSymbol()
                    }
                }
            }
        }
        let out = [x[0], channels] + spatial
        return op == "MaxPool" ? [facts(element, out), facts(.int64, out)] : [facts(element, out)]
    }
    b.infer(["ConvTranspose"]) { ctx in
        guard let x = ctx.dims(0), let w = ctx.dims(1), x.count >= 3, w.count == x.count else { return [facts(ctx.type(0).elementType, nil)] }
        let group = try ctx.attributes.int("group", 1)
        let channels: Dim = w[1].value.map { .known($0 * group) } ?? .unknown
        let nd = x.count - 2
        var spatial = [Dim](repeating: .unknown, count: nd)
        if let shape = try ctx.attributes.ints("output_shape") {
            spatial = shape.suffix(nd).map { .known($0) }
        } else if let kernel = try ctx.attributes.ints("kernel_shape") ?? (w.dropFirst(2).allSatisfy({ $0.value != nil }) ? w.dropFirst(2).map { $0.value! } : nil) {
            let strides = try ctx.attributes.ints("strides") ?? Array(repeating: 1, count: nd)
            let dilations = try ctx.attributes.ints("dilations") ?? Array(repeating: 1, count: nd)
            let outputPadding = try ctx.attributes.ints("output_padding") ?? Array(repeating: 0, count: nd)
            let pads = try ctx.attributes.ints("pads") ?? Array(repeating: 0, count: 2 * nd)
            let autoPad = try ctx.attributes.string("auto_pad", "NOTSET")
            for i in 0..<nd {
                guard let n = x[i + 2].value, strides.count == nd, pads.count == 2 * nd, dilations.count == nd, outputPadding.count == nd else { continue }
                if autoPad == "SAME_UPPER" || autoPad == "SAME_LOWER" {
                    spatial[i] = .known(n * strides[i])
                } else {
                    let full = strides[i] * (n - 1) + outputPadding[i] + (kernel[i] - 1) * dilations[i] + 1
                    spatial[i] = .known(autoPad == "VALID" ? full : full - pads[i] - pads[i + nd])
                }
            }
        }
        return [facts(ctx.type(0).elementType, [x[0], channels] + spatial)]
    }
    b.infer(["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]) { ctx in
        guard let x = ctx.dims(0), x.count >= 2 else { return [facts(ctx.type(0).elementType, nil)] }
        return [facts(ctx.type(0).elementType, Array(x[0..<2]) + Array(repeating: .known(1), count: x.count - 2))]
    }
    b.infer(["Flatten"]) { ctx in
        guard let x = ctx.dims(0) else { return [facts(ctx.type(0).elementType, [.unknown, .unknown])] }
        let a = try ctx.attributes.int("axis", 1)
        let axis = a < 0 ? a + x.count : a
        guard axis >= 0, axis <= x.count else { throw ctx.fail("axis \(a) is out of range for rank \(x.count)") }
        return [facts(ctx.type(0).elementType, [product(Array(x[..<axis])), product(Array(x[axis...]))])]
    }
    b.infer(["Reshape"]) { ctx in
        let element = ctx.type(0).elementType
        let requested: [Dim]? = ctx.opset < 5 ? try ctx.attributes.ints("shape").map { $0.map { .known($0) } } : ctx.input(1).dims
        guard let requested else {
            if let n = ctx.dims(1)?.first?.value ?? ctx.type(1).concreteShape?.first { return [facts(element, Array(repeating: .unknown, count: n))] }
            return [facts(element, nil)]
        }
        let allowZero = try ctx.attributes.int("allowzero", 0) != 0
        let input = ctx.dims(0)
        var out = requested
        var inferAt: Int?
        for (i, d) in requested.enumerated() {
            if d == .known(0) && !allowZero { out[i] = input.flatMap { i < $0.count ? $0[i] : nil } ?? .unknown }
            if d == .known(-1) { inferAt = i; out[i] = .unknown }
        }
        if let at = inferAt, let input {
            out[at] = inferredDimension(input: input, others: out.enumerated().filter { $0.offset != at }.map(\.element))
        }
        // The size -1 stands for is one size at run time even when it cannot be named from
        // the input's: a symbol of its own lets a Shape of the result carry it on (torch's
        // expand(-1, …) idiom compares it with -1).
        if let at = inferAt, out[at] == .unknown { out[at] = ctx.freshSymbol() }
        if let input, let n = ShapeMath.elementCount(input.compactMap(\.value)), input.allSatisfy({ $0.value != nil }),
           out.allSatisfy({ $0.value != nil }), let m = ShapeMath.elementCount(out.compactMap(\.value)), n != m {
            throw ctx.fail("cannot reshape [\(input.map(\.description).joined(separator: ", "))] (\(n) elements) to [\(out.map(\.description).joined(separator: ", "))] (\(m) elements)")
        }
        var result = facts(element, out)
        // A shape value reshaped to a scalar or vector keeps its elements.
        if out.count <= 1, let values = ctx.input(0).dims, out.first.map({ $0 == .known(values.count) }) ?? (values.count == 1) {
            result.dims = values
        }
        return [result]
    }
    b.infer(["Transpose"]) { ctx in
        guard let x = ctx.dims(0) else { return [facts(ctx.type(0).elementType, nil)] }
        let perm = try ctx.attributes.ints("perm") ?? Array((0..<x.count).reversed())
        guard perm.count == x.count, Set(perm) == Set(0..<x.count) else { throw ctx.fail("perm \(perm) is not a permutation of \(x.count) axes") }
        return [facts(ctx.type(0).elementType, perm.map { x[$0] })]
    }
    b.infer(["Squeeze"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0) else { return [facts(element, nil)] }
        let raw = ctx.opset < 13 ? try ctx.attributes.ints("axes") : (ctx.has(1) ? ctx.ints(1) : nil)
        if ctx.opset >= 13 && ctx.has(1) && raw == nil { return [facts(element, nil)] }
        if let raw {
            let axes = try Set(raw.map { try ctx.axis($0, rank: x.count) })
            for a in axes { if let v = x[a].value, v != 1 { throw ctx.fail("cannot squeeze axis \(a) of size \(v)") } }
            var out = ValueFacts(type: TensorType(element, x.indices.filter { !axes.contains($0) }.map { x[$0] }))
            if x.count == 1, let d = ctx.input(0).dims { out.dims = d }
            return [out]
        }
        guard x.allSatisfy({ $0.value != nil }) else { return [facts(element, nil)] }
        var out = facts(element, x.filter { $0 != .known(1) })
        // A one-element shape vector squeezed to a scalar keeps its size (torch's sym_size).
        if x == [.known(1)], let d = ctx.input(0).dims { out.dims = d }
        return [out]
    }
    b.infer(["Unsqueeze"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0), let raw = ctx.opset < 13 ? try ctx.attributes.ints("axes") : ctx.ints(1) else { return [facts(element, nil)] }
        let rank = x.count + raw.count
        let axes = try Set(raw.map { try ctx.axis($0, rank: rank) })
        var it = x.makeIterator()
        let dims = (0..<rank).map { axes.contains($0) ? .known(1) : (it.next() ?? .unknown) }
        var out = ValueFacts(type: TensorType(element, dims))
        if rank <= 1 { out.dims = ctx.input(0).dims }
        return [out]
    }
    b.infer(["Concat"]) { ctx in
        let present = ctx.inputs.compactMap { $0 }
        let element = present.first?.type.elementType
        guard let rank = present.compactMap({ $0.type.dims?.count }).first else { return [facts(element, nil)] }
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: rank)
        var out = [Dim](repeating: .unknown, count: rank)
        for d in 0..<rank where d != axis {
            out[d] = present.compactMap { $0.type.dims?[d] }.first { $0.value != nil } ?? present.compactMap { $0.type.dims?[d] }.first ?? .unknown
        }
        let sizes = present.map { $0.type.dims?[axis] }
        out[axis] = sizes.allSatisfy({ $0?.value != nil }) ? .known(sizes.reduce(0) { $0 + $1!.value! }) : .unknown
        var result = ValueFacts(type: TensorType(element, out))
        if rank == 1, present.allSatisfy({ $0.dims != nil }) { result.dims = present.flatMap { $0.dims! } }
        return [result]
    }
    b.infer(["Split"]) { ctx in
        let element = ctx.type(0).elementType
        let count = ctx.node.outputs.count
        guard let x = ctx.dims(0) else { return Array(repeating: facts(element, nil), count: count) }
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.count)
        var sizes = ctx.opset < 13 ? try ctx.attributes.ints("split") : (ctx.has(1) ? ctx.ints(1) : nil)
        let sizesGivenAtRunTime = ctx.opset >= 13 && ctx.has(1) && sizes == nil
        if sizes == nil, !sizesGivenAtRunTime, let n = x[axis].value {
            let chunk = (n + count - 1) / max(count, 1)
            sizes = (0..<count).map { max(0, min(chunk, n - $0 * chunk)) }
        }
        return (0..<count).map { i in
            var d = x
            d[axis] = sizes.map { i < $0.count ? .known($0[i]) : .unknown } ?? .unknown
            return facts(element, d)
        }
    }
    b.infer(["Slice"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0) else { return [facts(element, nil)] }
        let starts: [Int]?, axesRaw: [Int]?, steps: [Int]?
        var ends: [Dim]?
        if ctx.opset < 10 {
            starts = try ctx.attributes.ints("starts"); ends = try ctx.attributes.ints("ends")?.map { .known($0) }; axesRaw = try ctx.attributes.ints("axes"); steps = nil
        } else {
            starts = ctx.ints(1)
            // Ends computed from another tensor's shape stay symbolic ([:, 0:sequence] of a position table).
            ends = ctx.ints(2)?.map { .known($0) } ?? (ctx.has(2) ? ctx.input(2).dims : nil)
            axesRaw = ctx.has(3) ? ctx.ints(3) : nil
            steps = ctx.has(4) ? ctx.ints(4) : nil
            if (ctx.has(3) && axesRaw == nil) || (ctx.has(4) && steps == nil) { return [facts(element, Array(repeating: .unknown, count: x.count))] }
        }
        guard let starts, let ends, starts.count == ends.count else { return [facts(element, Array(repeating: .unknown, count: x.count))] }
        let axes = try (axesRaw ?? Array(0..<starts.count)).map { try ctx.axis($0, rank: x.count) }
        var out = x
        for (k, a) in axes.enumerated() {
            let step = steps.map { k < $0.count ? $0[k] : 1 } ?? 1
            guard step != 0 else { throw ctx.fail("slice step is 0") }
            guard let end = ends[k].value else {
                // A symbolic end from the start: its length is the end (a slice is taken to the
                // length of another tensor, which does not exceed the dimension in a valid model).
                out[a] = starts[k] == 0 && step == 1 && ends[k] != .unknown ? ends[k] : .unknown
                continue
            }
            guard let n = x[a].value else {
                // A slice whose length follows the axis (counted from the end: wav2vec2's
                // x[:, :, :-1], or x[:, 1:]) is a size of its own. One between two non-negative
                // constants (x[:, 0:1]) may be shorter than its bounds say and, being possibly 1,
                // must not get a symbol a broadcast would merge with another: unknown.
                let followsAxis = step == 1 && (starts[k] < 0 || end < 0 || (starts[k] > 0 && end >= Int(Int32.max)))
                out[a] = (starts[k] == 0 && end >= Int(Int32.max) && step == 1) ? x[a] : (x[a] != .unknown && followsAxis ? ctx.freshSymbol() : .unknown)
                continue
            }
            var s = starts[k] < 0 ? starts[k] + n : starts[k], e = end < 0 ? end + n : end
            if step > 0 { s = min(max(s, 0), n); e = min(max(e, 0), n); out[a] = .known(max(0, (e - s + step - 1) / step)) }
            else { s = min(max(s, -1), n - 1); e = min(max(e, -1), n - 1); out[a] = .known(max(0, (s - e - step - 1) / -step)) }
        }
        var result = ValueFacts(type: TensorType(element, out))
        if x.count == 1, let values = ctx.input(0).dims, axes == [0], let step = steps?.first ?? 1 as Int?, step == 1, let n = x[0].value,
           let end = ends[0].value {
            let s = min(max(starts[0] < 0 ? starts[0] + n : starts[0], 0), n), e = min(max(end < 0 ? end + n : end, 0), n)
            if s <= e, e <= values.count { result.dims = Array(values[s..<e]) }
        }
        return [result]
    }
    b.infer(["Gather"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0), let idx = ctx.dims(1) else { return [facts(element, nil)] }
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.count)
        var out = ValueFacts(type: TensorType(element, Array(x[..<axis]) + idx + Array(x[(axis + 1)...])))
        if x.count == 1, let values = ctx.input(0).dims, let picks = ctx.ints(1) {
            let chosen = picks.map { $0 < 0 ? $0 + values.count : $0 }
            if chosen.allSatisfy({ $0 >= 0 && $0 < values.count }) { out.dims = chosen.map { values[$0] } }
        }
        return [out]
    }
    b.infer(["GatherElements"]) { ctx in [facts(ctx.type(0).elementType, ctx.dims(1))] }
    b.infer(["ScatterElements", "Scatter", "ScatterND"]) { ctx in [ValueFacts(type: ctx.type(0))] }
    b.infer(["GatherND"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0), let idx = ctx.dims(1), let k = idx.last?.value else { return [facts(element, nil)] }
        let batch = try ctx.attributes.int("batch_dims", 0)
        guard batch + k <= x.count else { throw ctx.fail("index depth \(k) with \(batch) batch dims exceeds data rank \(x.count)") }
        return [facts(element, Array(idx.dropLast()) + Array(x[(batch + k)...]))]
    }
    b.infer(["Shape"]) { ctx in
        guard let x = ctx.dims(0) else { return [facts(.int64, [.unknown])] }
        let r = x.count
        func clampAxis(_ a: Int) -> Int { min(max(a < 0 ? a + r : a, 0), r) }
        let start = clampAxis(try ctx.attributes.int("start", 0)), end = clampAxis(try ctx.attributes.int("end", r))
        let dims = start < end ? Array(x[start..<end]) : []
        var out = ValueFacts(type: TensorType(.int64, shape: [dims.count]))
        out.dims = dims
        if dims.allSatisfy({ $0.value != nil }) { out.constant = try? Tensor(int64s: dims.map { Int64($0.value!) }, shape: [dims.count]) }
        return [out]
    }
    b.infer(["Size"]) { ctx in
        var out = facts(.int64, [])
        if let x = ctx.dims(0) { out.dims = [product(x)] }
        return [out]
    }
    b.infer(["ConstantOfShape"]) { ctx in
        let element = try ctx.attributes.tensor("value")?.dataType ?? .float
        if let d = ctx.input(0).dims { return [facts(element, d)] }
        if let n = ctx.type(0).concreteShape?.first { return [facts(element, Array(repeating: .unknown, count: n))] }
        return [facts(element, nil)]
    }
    b.infer(["Expand"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0), let target = ctx.input(1).dims else { return [facts(element, nil)] }
        return [facts(element, try broadcastDims([x, target], ctx))]
    }
    b.infer(["Tile"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0) else { return [facts(element, nil)] }
        guard let repeats = ctx.ints(1), repeats.count == x.count else { return [facts(element, Array(repeating: .unknown, count: x.count))] }
        return [facts(element, try zip(x, repeats).map { d, r in
            guard r != 1, let v = d.value else { return r == 1 ? d : .unknown }
            let (n, overflow) = v.multipliedReportingOverflow(by: r)
            guard !overflow, r >= 0 else { throw ctx.fail("repeats \(repeats) of \(x) give a size that does not fit 64 bits or is negative") }
            return .known(n)
        })]
    }
    b.infer(["Pad"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0) else { return [facts(element, nil)] }
        var pads = ctx.opset < 11 ? try ctx.attributes.ints("pads") ?? ctx.attributes.ints("paddings") : ctx.ints(1)
        if ctx.opset >= 18, ctx.has(3), let p = pads {
            guard let axes = ctx.ints(3) else { return [facts(element, Array(repeating: .unknown, count: x.count))] }
            var full = [Int](repeating: 0, count: 2 * x.count)
            for (k, a) in axes.enumerated() { let n = try ctx.axis(a, rank: x.count); full[n] = p[k]; full[n + x.count] = p[k + axes.count] }
            pads = full
        }
        guard let pads, pads.count == 2 * x.count else { return [facts(element, Array(repeating: .unknown, count: x.count))] }
        return [facts(element, try x.indices.map { i in
            let (extra, o1) = pads[i].addingReportingOverflow(pads[i + x.count])
            guard !o1 else { throw ctx.fail("pads \(pads) do not fit 64 bits") }
            guard extra != 0, let v = x[i].value else { return extra == 0 ? x[i] : .unknown }
            let (n, o2) = v.addingReportingOverflow(extra)
            guard !o2 else { throw ctx.fail("pads \(pads) do not fit 64 bits") }
            return .known(n)
        })]
    }
    let reductions: [(String, Int)] = [("ReduceSum", 13), ("ReduceMean", 18), ("ReduceMax", 18), ("ReduceMin", 18), ("ReduceProd", 18),
                                       ("ReduceL1", 18), ("ReduceL2", 18), ("ReduceLogSum", 18), ("ReduceLogSumExp", 18), ("ReduceSumSquare", 18)]
    for (name, inputSince) in reductions {
        b.infer([name]) { ctx in
            let element = ctx.type(0).elementType
            guard let x = ctx.dims(0) else { return [facts(element, nil)] }
            let keep = try ctx.attributes.int("keepdims", 1) != 0
            let raw: [Int]?
            if ctx.opset < inputSince { raw = try ctx.attributes.ints("axes") ?? [] } else { raw = ctx.has(1) ? ctx.ints(1) : [] }
            guard let raw else { return [facts(element, keep ? Array(repeating: .unknown, count: x.count) : nil)] }
            let noop = try ctx.attributes.int("noop_with_empty_axes", 0) != 0
            if raw.isEmpty && noop { return [facts(element, x)] }
            let axes = raw.isEmpty ? Set(0..<x.count) : try Set(raw.map { try ctx.axis($0, rank: x.count) })
            return [facts(element, x.indices.compactMap { axes.contains($0) ? (keep ? .known(1) : nil) : x[$0] })]
        }
    }
    b.infer(["ArgMax", "ArgMin"]) { ctx in
        guard let x = ctx.dims(0) else { return [facts(.int64, nil)] }
        let axis = try ctx.axis(ctx.attributes.int("axis", 0), rank: x.count)
        var out = x
        if try ctx.attributes.int("keepdims", 1) != 0 { out[axis] = .known(1) } else { out.remove(at: axis) }
        return [facts(.int64, out)]
    }
    b.infer(["TopK"]) { ctx in
        guard let x = ctx.dims(0) else { return [facts(ctx.type(0).elementType, nil), facts(.int64, nil)] }
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: x.count)
        var out = x
        out[axis] = ctx.opset < 10 ? (try ctx.attributes.int("k")).map { .known($0) } ?? .unknown : (ctx.ints(1)?.first).map { .known($0) } ?? .unknown
        return [facts(ctx.type(0).elementType, out), facts(.int64, out)]
    }
    b.infer(["DepthToSpace", "SpaceToDepth"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0), x.count == 4, let bs = try ctx.attributes.int("blocksize") else { return [facts(element, nil)] }
        func scaled(_ d: Dim, _ f: (Int) -> Int) -> Dim { d.value.map { .known(f($0)) } ?? .unknown }
        if ctx.node.opType == "DepthToSpace" {
            return [facts(element, [x[0], scaled(x[1]) { $0 / (bs * bs) }, scaled(x[2]) { $0 * bs }, scaled(x[3]) { $0 * bs }])]
        }
        return [facts(element, [x[0], scaled(x[1]) { $0 * bs * bs }, scaled(x[2]) { $0 / bs }, scaled(x[3]) { $0 / bs }])]
    }
    b.infer(["Range"]) { ctx in
        // Range(0, n, 1) has n elements: a symbolic n (a length read from a shape) stays that symbol.
        let element = ctx.type(0).elementType
        let start = ctx.input(0).constant.map { $0.double(at: 0) }, delta = ctx.input(2).constant.map { $0.double(at: 0) }
        if let limit = ctx.input(1).constant.map({ $0.double(at: 0) }), let start, let delta, delta != 0 {
            guard let count = Int(exactly: max(0, ((limit - start) / delta).rounded(.up))) else {
                throw ctx.fail("range from \(start) to \(limit) by \(delta) has no finite length")
            }
            return [facts(element, [.known(count)])]
        }
        if start == 0, delta == 1, let n = ctx.input(1).dims?.first, ctx.input(1).dims?.count == 1, n != .unknown {
            return [facts(element, [n])]
        }
        return [facts(element, [ctx.freshSymbol()])]
    }
    b.infer(["NonZero"]) { ctx in [facts(.int64, [ctx.dims(0).map { .known($0.count) } ?? .unknown, ctx.freshSymbol()])] }
    b.infer(["Compress"]) { ctx in
        guard let x = ctx.dims(0) else { return [facts(ctx.type(0).elementType, nil)] }
        guard let a = try ctx.attributes.int("axis") else { return [facts(ctx.type(0).elementType, [ctx.freshSymbol()])] }
        var out = x
        out[try ctx.axis(a, rank: x.count)] = ctx.freshSymbol()
        return [facts(ctx.type(0).elementType, out)]
    }
    b.infer(["OneHot"]) { ctx in
        let element = ctx.type(2).elementType
        guard let idx = ctx.dims(0) else { return [facts(element, nil)] }
        let axis = try ctx.axis(ctx.attributes.int("axis", -1), rank: idx.count + 1)
        var out = idx
        out.insert((ctx.input(1).constant.map { .known(Int(Tensor.int64(fromDouble: $0.double(at: 0)))) }) ?? .unknown, at: axis)
        return [facts(element, out)]
    }
    b.infer(["EyeLike"]) { ctx in
        let element = try ctx.attributes.int("dtype").flatMap { DataType(rawValue: Int32($0)) } ?? ctx.type(0).elementType
        return [facts(element, ctx.dims(0))]
    }
    b.infer(["QuantizeLinear"]) { ctx in
        let requested = try ctx.attributes.int("output_dtype").flatMap { DataType(rawValue: Int32(clamping: $0)) }
        let element = ctx.type(2).elementType ?? requested ?? .uint8
        return [facts(element, ctx.dims(0))]
    }
    b.infer(["DequantizeLinear"]) { ctx in [facts(ctx.type(1).elementType, ctx.dims(0))] }
    b.infer(["DynamicQuantizeLinear"]) { ctx in [facts(.uint8, ctx.dims(0)), facts(.float, []), facts(.uint8, [])] }
    b.infer(["Resize", "Upsample"]) { ctx in
        let element = ctx.type(0).elementType
        guard let x = ctx.dims(0) else { return [facts(element, nil)] }
        let scalesIndex = ctx.node.opType == "Upsample" || ctx.opset < 11 ? 1 : 2
        let axes = try (ctx.attributes.ints("axes") ?? Array(0..<x.count)).map { try ctx.axis($0, rank: x.count) }
        var out = x
        if ctx.node.opType == "Resize", ctx.opset >= 11, let sizes = ctx.ints(3), sizes.count == axes.count {
            if try ctx.attributes.string("keep_aspect_ratio_policy", "stretch") != "stretch" { return [facts(element, Array(repeating: .unknown, count: x.count))] }
            for (k, a) in axes.enumerated() { out[a] = .known(sizes[k]) }
            return [facts(element, out)]
        }
        let scales = ctx.node.opType == "Upsample" && ctx.opset < 9 ? try ctx.attributes.floats("scales")?.map { Double($0) }
            : ctx.input(scalesIndex).constant?.doubles
        guard let scales, !scales.isEmpty, scales.count == axes.count else { return [facts(element, Array(repeating: .unknown, count: x.count))] }
        for (k, a) in axes.enumerated() { out[a] = scales[k] == 1 ? x[a] : (x[a].value.map { .known(Int((Double($0) * scales[k]).rounded(.down))) } ?? .unknown) }
        return [facts(element, out)]
    }
    b.infer(["Einsum"]) { ctx in [facts(ctx.type(0).elementType, nil)] }
    b.infer(["Attention"]) { ctx in
        let element = ctx.type(0).elementType
        guard let q = ctx.dims(0), let k = ctx.dims(1), let v = ctx.dims(2), q.count == k.count, k.count == v.count, q.count == 3 || q.count == 4 else {
            return Array(repeating: facts(element, nil), count: 4)
        }
        let past = ctx.dims(4)
        func total(_ s: Dim) -> Dim {
            guard let past, past.count == 4 else { return s }
            if let a = past[2].value, let b = s.value { return .known(a + b) }
            return past[2] == .known(0) ? s : .unknown
        }
        if q.count == 4 {
            let skv = total(k[2])
            return [facts(element, [q[0], q[1], q[2], v[3]]), facts(element, [k[0], k[1], skv, k[3]]),
                    facts(element, [v[0], v[1], skv, v[3]]), facts(element, [q[0], q[1], q[2], skv])]
        }
        let qHeads = try ctx.attributes.int("q_num_heads"), kvHeads = try ctx.attributes.int("kv_num_heads")
        let hidden: Dim = (v[2].value).flatMap { hv in kvHeads.flatMap { kv in qHeads.map { .known(hv / kv * $0) } } } ?? .unknown
        let skv = total(k[1])
        let kvh: Dim = kvHeads.map { .known($0) } ?? .unknown
        func size(_ d: Dim) -> Dim { d.value.flatMap { x in kvHeads.map { .known(x / $0) } } ?? .unknown }
        return [facts(element, [q[0], q[1], hidden]), facts(element, [k[0], kvh, skv, size(k[2])]),
                facts(element, [v[0], kvh, skv, size(v[2])]), facts(element, [q[0], qHeads.map { .known($0) } ?? .unknown, q[1], skv])]
    }
}
