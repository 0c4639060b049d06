import AnvilCore

/// Index arithmetic on Swift kernels over arena memory: GatherND, GatherElements, CumSum
/// (the position ids, token lookups and index bookkeeping of transformer exports) and TopK
/// (detectors' proposal selection).
/// Indices are read and checked when the layer runs; elements of any fixed size are copied.
enum IndexingLowering {
    static let entries = [
        LoweringEntry(kind: .gatherND, ops: ["GatherND"], output: .plain, lower: gatherND),
        LoweringEntry(kind: .gatherElements, ops: ["GatherElements"], output: .plain, lower: gatherElements),
        LoweringEntry(kind: .cumulativeSum, ops: ["CumSum"], output: .plain, lower: cumulativeSum),
        LoweringEntry(kind: .topK, ops: ["TopK"], output: .plain, multipleOutputs: true, lower: topK),
    ]

    /// TopK of floats along an axis: each slice's elements sorted by one integer key per
    /// element (the value's order in its high half, largest first when asked, the index in
    /// the low half: ties go to the lower index, as in the reference; NaN ranks above every number). k comes
    /// from the attribute or a constant, or from a computed input that must equal the
    /// planned k when the layer runs.
    static func topK(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), v.dataType == .float, !v.shape.isEmpty, l.layer.outputs.count == 2, !l.layer.outputs.contains(""),
              let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", -1), rank: v.shape.count),
              let (vt, shape) = try? l.outputType(0), vt == .float, let (it, indexShape) = try? l.outputType(1), it == .int64, indexShape == shape,
              shape.count == v.shape.count else { return nil }
        let k = shape[axis], n = v.shape[axis]
        guard k <= n, n < 1 << 31, (0..<shape.count).allSatisfy({ $0 == axis || shape[$0] == v.shape[$0] }) else { return nil }
        var kValue: PlanValue?
        if l.layer.opset >= 10 {
            if let c = l.constant(1) {
                guard c.count == 1, Int(c.int64s[0]) == k else { return nil }
            } else {
                guard let kv = l.value(1), kv.dataType == .int64, kv.count == 1 else { return nil }
                kValue = try l.plan.plain(kv)
            }
        } else {
            guard try l.attributes.int("k") == k else { return nil }
        }
        let largest = try l.attributes.int("largest", 1) != 0, name = l.layer.name, kName = l.layer.inputs.count > 1 ? l.layer.inputs[1] : ""
        let outer = v.shape[..<axis].reduce(1, *), inner = v.shape[(axis + 1)...].reduce(1, *)
        let x = try l.plan.plain(v)
        let values = l.plan.newValue(l.layer.outputs[0], .float, shape), indices = l.plan.newValue(l.layer.outputs[1], .int64, shape)
        let keys = UnsafeMutableBufferPointer(start: l.plan.ownedInts(n), count: n)
        l.plan.steps.append(SwiftStep(layer: name, reads: [x] + [kValue].compactMap { $0 }, writes: [values, indices]) { p in
            if let kValue {
                let runtime = Int(p.address(kValue).load(as: Int64.self))
                guard runtime == k else { throw PlanMismatch(layer: name, value: kName, planned: [k], actual: [runtime]) }
            }
            var keys = keys
            let source = p.address(x).assumingMemoryBound(to: Float.self)
            let outValues = p.address(values).assumingMemoryBound(to: Float.self), outIndices = p.address(indices).assumingMemoryBound(to: Int64.self)
            for o in 0..<outer {
                for i in 0..<inner {
                    for j in 0..<n {
                        let value = source[(o * n + j) * inner + i]
                        let bits = (value == 0 ? 0 : value).bitPattern
                        var order = bits >> 31 == 1 ? ~bits : bits | 1 << 31
                        if largest { order = ~order }
                        if value.isNaN { order = largest ? 0 : .max }
                        // Unsigned (order, index) as a signed integer that sorts the same way.
                        keys[j] = Int(bitPattern: UInt(order) << 32 | UInt(j)) ^ Int.min
                    }
                    keys.sort()
                    for j in 0..<k {
                        let index = Int(UInt(bitPattern: keys[j] ^ Int.min) & 0xFFFF_FFFF)
                        outValues[(o * k + j) * inner + i] = source[(o * n + index) * inner + i]
                        outIndices[(o * k + j) * inner + i] = Int64(index)
                    }
                }
            }
        })
        return l.decided(.topK)
    }

    /// Index `k` of an int64 or int32 index tensor, made non-negative against `bound`; throws
    /// naming the layer when it lies outside [-bound, bound).
    @inline(__always)
    static func index(_ p: UnsafeRawPointer, _ k: Int, wide: Bool, bound: Int, layer: String, op: String) throws -> Int {
        let raw = wide ? Int(p.load(fromByteOffset: 8 * k, as: Int64.self)) : Int(p.load(fromByteOffset: 4 * k, as: Int32.self))
        let i = raw < 0 ? raw + bound : raw
        guard i >= 0, i < bound else { throw AnvilError.invalidNode(node: layer, op: op, reason: "index \(raw) is outside [-\(bound), \(bound - 1)]") }
        return i
    }

    /// The data's and indices' plan values, the indices' width and the output type, when
    /// both are present, the indices integers and the output of the data's type.
    static func operands(_ l: LayerLowering) throws -> (data: PlanValue, indices: PlanValue, wide: Bool, shape: [Int])? {
        guard l.present(0), l.present(1), let d = try l.operand(0), let i = try l.operand(1), i.dataType == .int64 || i.dataType == .int32,
              let (t, shape) = try? l.outputType(), t == d.dataType, t != .string else { return nil }
        return (try l.plan.plain(d), try l.plan.plain(i), i.dataType == .int64, shape)
    }

    /// GatherND with batch_dims: for every index tuple, a block of the data copied.
    static func gatherND(_ l: LayerLowering) throws -> LayerDecision? {
        guard let (data, indices, wide, shape) = try operands(l), let k = indices.shape.last else { return nil }
        let b = try l.attributes.int("batch_dims", 0), q = indices.shape.count, r = data.shape.count
        guard b >= 0, b < q, b + k <= r, Array(data.shape[..<b]) == Array(indices.shape[..<b]),
              shape == Array(indices.shape.dropLast()) + Array(data.shape[(b + k)...]) else { return nil }
        let size = data.dataType.byteSize, block = data.shape[(b + k)...].reduce(1, *)
        let batches = indices.shape[..<b].reduce(1, *), perBatch = indices.shape[b..<(q - 1)].reduce(1, *)
        let strides = ShapeMath.strides(data.shape), batchStride = b > 0 ? strides[b - 1] : 0
        let bounds = Array(data.shape[b..<(b + k)]), dimStrides = Array(strides[b..<(b + k)]), name = l.layer.name
        let out = l.plan.newValue(l.layer.outputs[0], data.dataType, shape)
        l.plan.steps.append(SwiftStep(layer: name, reads: [data, indices], writes: [out]) { p in
            let source = p.address(data), positions = UnsafeRawPointer(p.address(indices)), target = p.address(out)
            for batch in 0..<batches {
                for j in 0..<perBatch {
                    let tuple = (batch * perBatch + j) * k
                    var offset = batch * batchStride
                    for d in 0..<k { offset += try index(positions, tuple + d, wide: wide, bound: bounds[d], layer: name, op: "GatherND") * dimStrides[d] }
                    (target + (batch * perBatch + j) * block * size).copyMemory(from: source + offset * size, byteCount: block * size)
                }
            }
        })
        return l.decided(.gatherND)
    }

    /// GatherElements: every output element read from the data at its own coordinates, with
    /// the one along `axis` taken from the indices.
    static func gatherElements(_ l: LayerLowering) throws -> LayerDecision? {
        guard let (data, indices, wide, shape) = try operands(l), shape == indices.shape, !shape.isEmpty, shape.count == data.shape.count,
              let axis = ShapeMath.normalizeAxis(try l.attributes.int("axis", 0), rank: shape.count),
              zip(shape, data.shape).enumerated().allSatisfy({ $0.offset == axis || $0.element.0 <= $0.element.1 }) else { return nil }
        let size = data.dataType.byteSize, name = l.layer.name
        var strides = ShapeMath.strides(data.shape)
        let axisStride = strides[axis], bound = data.shape[axis]
        strides[axis] = 0
        let last = shape[shape.count - 1], lastStride = strides[shape.count - 1]
        let out = l.plan.newValue(l.layer.outputs[0], data.dataType, shape)
        l.plan.steps.append(SwiftStep(layer: name, reads: [data, indices], writes: [out]) { p in
            let source = p.address(data), positions = UnsafeRawPointer(p.address(indices)), target = p.address(out)
            var k = 0, failure: Error?
            ShapeMath.forEachRow(shape, strides: strides) { start in
                guard failure == nil else { return }
                for j in 0..<last {
                    do {
                        let i = try index(positions, k, wide: wide, bound: bound, layer: name, op: "GatherElements")
                        (target + k * size).copyMemory(from: source + (start + j * lastStride + i * axisStride) * size, byteCount: size)
                    } catch {
                        failure = error
                        return
                    }
                    k += 1
                }
            }
            if let failure { throw failure }
        })
        return l.decided(.gatherElements)
    }

    /// CumSum along a constant axis, exclusive or reversed, of floats (summed in Double,
    /// as the reference does) or 32/64-bit integers (wrapping).
    static func cumulativeSum(_ l: LayerLowering) throws -> LayerDecision? {
        guard let v = l.value(0), [.float, .int32, .int64].contains(v.dataType), !v.shape.isEmpty, let axisTensor = l.constant(1), axisTensor.count == 1,
              let axis = ShapeMath.normalizeAxis(Int(axisTensor.int64s[0]), rank: v.shape.count),
              try l.outputType() == (v.dataType, v.shape) else { return nil }
        let exclusive = try l.attributes.int("exclusive", 0) != 0, reverse = try l.attributes.int("reverse", 0) != 0
        let outer = v.shape[..<axis].reduce(1, *), n = v.shape[axis], inner = v.shape[(axis + 1)...].reduce(1, *), type = v.dataType
        let x = try l.plan.plain(v)
        let out = l.plan.newValue(l.layer.outputs[0], type, v.shape)
        l.plan.steps.append(SwiftStep(layer: l.layer.name, reads: [x], writes: [out]) { p in
            let source = UnsafeRawPointer(p.address(x)), target = p.address(out)
            /// The running sums of elements T in an accumulator A (Double for floats, as the reference).
            func run<T, A>(_ zero: A, _ add: (A, T) -> A, _ store: (A) -> T) {
                let s = source.assumingMemoryBound(to: T.self), t = target.assumingMemoryBound(to: T.self)
                for o in 0..<outer {
                    for i in 0..<inner {
                        var sum = zero
                        for step in 0..<n {
                            let at = (o * n + (reverse ? n - 1 - step : step)) * inner + i
                            let value = s[at]
                            if exclusive { t[at] = store(sum) }
                            sum = add(sum, value)
                            if !exclusive { t[at] = store(sum) }
                        }
                    }
                }
            }
            switch type {
            case .float: run(0.0, { $0 + Double($1) }, { Float($0) })
            case .int32: run(Int32(0), { $0 &+ $1 }, { $0 })
            default: run(Int64(0), { $0 &+ $1 }, { $0 })
            }
        })
        return l.decided(.cumulativeSum)
    }
}
